//! A simulated AWS data plane for benchmarks and tests: an HTTP server on
//! loopback that speaks the wire protocols the adapters use, so the real
//! adapters and SDK clients (their connection pools, retries and timeouts)
//! are what is measured. It serves:
//!
//! - the EBS direct APIs' reads: ListSnapshotBlocks and GetSnapshotBlock (with
//!   its `x-amz-Checksum` headers), on snapshots whose blocks are generated
//!   from their index (a mix of holes, compressible and random data), so no
//!   large files are needed;
//! - StartSnapshot, PutSnapshotBlock (whose data must be 512 KiB and match
//!   its Base64 SHA-256 `x-amz-Checksum`: a mismatch is EBS's
//!   `ValidationException`; what is written is counted, not kept) and
//!   CompleteSnapshot (`error` unless its changed-block count is the number
//!   of blocks written);
//! - EC2's DescribeSnapshots for those snapshots (the adapter asks for a
//!   snapshot's size and state);
//! - the S3 calls of a store and a restore ([`s3`]): multipart upload,
//!   PutObject, HeadObject and ranged GetObject, on objects kept in memory,
//!   each request after a first-byte latency and each body at one
//!   connection's bandwidth.
//!
//! Every request waits a latency drawn from a log-normal distribution (by
//! default median 60 ms, 99th percentile 250 ms). GetSnapshotBlock and,
//! apart, PutSnapshotBlock are limited per snapshot and per account (by
//! default 1,000 requests a second each, as EBS's quotas),
//! ListSnapshotBlocks to 50 a second per account, with token buckets; a
//! request over a limit is answered as EBS answers it, 400
//! `RequestThrottledException`, which the SDK retries. Counters record what
//! was served and throttled.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amistore_core::blocks::BLOCK_SIZE;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

mod s3;

/// The name of the simulation's threads.
pub const THREAD_NAME: &str = "amistore-sim";

/// The simulation's knobs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Median request latency.
    pub median_latency: Duration,
    /// 99th-percentile request latency.
    pub p99_latency: Duration,
    /// GetSnapshotBlock requests a second, per snapshot, and apart from them
    /// PutSnapshotBlock requests.
    pub per_snapshot_rps: f64,
    /// GetSnapshotBlock requests a second, per account, and apart from them
    /// PutSnapshotBlock requests (EBS has a quota for each).
    pub per_account_rps: f64,
    /// ListSnapshotBlocks requests a second, per account.
    pub list_rps: f64,
    /// Snapshots served: (id, volume size in GiB).
    pub snapshots: Vec<(String, u64)>,
    /// Seed of the latency draws.
    pub seed: u64,
    /// S3's time to first byte, every request.
    pub s3_first_byte: Duration,
    /// Bytes a second one S3 connection moves, each way (a part upload of
    /// 32 MiB at 80 MiB/s takes 0.4 s).
    pub s3_bytes_per_second: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            median_latency: Duration::from_millis(60),
            p99_latency: Duration::from_millis(250),
            per_snapshot_rps: 1000.0,
            per_account_rps: 1000.0,
            list_rps: 50.0,
            snapshots: Vec::new(),
            seed: 0x5eed,
            s3_first_byte: Duration::from_millis(30),
            s3_bytes_per_second: 80.0 * 1024.0 * 1024.0,
        }
    }
}

/// What the simulation served.
#[derive(Debug, Default)]
pub struct SimStats {
    /// GetSnapshotBlock answers with data.
    pub blocks_served: AtomicU64,
    /// Requests answered `RequestThrottledException`.
    pub throttled: AtomicU64,
    /// ListSnapshotBlocks answers.
    pub lists: AtomicU64,
    /// PutSnapshotBlock answers that accepted a block.
    pub blocks_written: AtomicU64,
    /// PutSnapshotBlock requests refused for a bad length or checksum.
    pub bad_writes: AtomicU64,
    /// Other requests.
    pub other: AtomicU64,
    /// S3 requests.
    pub s3_requests: AtomicU64,
    /// Bytes S3 received (request bodies).
    pub s3_bytes_in: AtomicU64,
    /// Bytes S3 sent (object data).
    pub s3_bytes_out: AtomicU64,
    /// Parts S3 accepted.
    pub parts_uploaded: AtomicU64,
}

/// What a block holds: its content is a function of its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Never written (not listed).
    Hole,
    /// Text-like, compresses well.
    Compressible,
    /// Random-looking.
    Random,
}

/// The kind of block `index`: a quarter holes, a quarter random, half
/// compressible, in runs of 64 blocks (32 MiB) so units see runs, not noise.
pub fn block_kind(index: u64) -> BlockKind {
    match (index / 64) % 4 {
        0 => BlockKind::Hole,
        1 => BlockKind::Random,
        _ => BlockKind::Compressible,
    }
}

/// Distinct compressible blocks; block `i` of that kind is the one at
/// `i % TEXT_BLOCKS` (a prime, so a block misplaced within a run of 64 is
/// told apart).
const TEXT_BLOCKS: usize = 61;

/// The compressible blocks, made once: words drawn at random from a small
/// vocabulary, text-like data that zstd compresses about threefold at the
/// speed it compresses real file-system contents (a repeated phrase would
/// compress far faster than any disk does). Made once because drawing them
/// costs the CPU the measured unit needs.
fn text_blocks() -> &'static [Vec<u8>] {
    static BLOCKS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    BLOCKS.get_or_init(|| {
        const WORDS: [&str; 32] = [
            "the", "snapshot", "block", "of", "an", "image", "archive", "data", "is", "stored",
            "and", "restored", "in", "units", "frame", "zstd", "tar", "disk", "volume", "bucket",
            "object", "part", "upload", "task", "state", "to", "from", "with", "each", "one",
            "amistore", "EBS",
        ];
        (0..TEXT_BLOCKS as u64)
            .map(|seed| {
                let mut data = Vec::with_capacity(BLOCK_SIZE as usize + 16);
                let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
                while data.len() < BLOCK_SIZE as usize {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    data.extend_from_slice(WORDS[(x % 32) as usize].as_bytes());
                    data.extend_from_slice(if x.is_multiple_of(11) { b".\n" } else { b" " });
                }
                data.truncate(BLOCK_SIZE as usize);
                data
            })
            .collect()
    })
}

/// The bytes of block `index` (zeros for a hole).
pub fn block_data(index: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK_SIZE as usize];
    match block_kind(index) {
        BlockKind::Hole => {}
        BlockKind::Random => {
            let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for chunk in data.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
        }
        BlockKind::Compressible => {
            data.copy_from_slice(&text_blocks()[(index % TEXT_BLOCKS as u64) as usize]);
        }
    }
    data
}

/// A token bucket: `rate` a second, bursts of a tenth of a second.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate / 10.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let burst = (self.rate / 10.0).max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The block requests EBS limits apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BlockOp {
    Get = 0,
    Put = 1,
}

struct State {
    config: SimConfig,
    stats: Arc<SimStats>,
    /// The account's GetSnapshotBlock and PutSnapshotBlock limits.
    account: [Mutex<Bucket>; 2],
    list: Mutex<Bucket>,
    per_snapshot: Mutex<HashMap<(String, BlockOp), Bucket>>,
    rng: Mutex<u64>,
    buckets: tokio::sync::Mutex<s3::Buckets>,
    /// Snapshots started with StartSnapshot.
    started: Mutex<HashMap<String, Started>>,
}

/// A snapshot StartSnapshot made: its size and the blocks written to it.
#[derive(Debug)]
struct Started {
    gib: u64,
    written: std::collections::BTreeSet<u64>,
}

impl State {
    /// A latency drawn from the log-normal distribution whose median and
    /// 99th percentile are the configured ones.
    fn latency(&self) -> Duration {
        let median = self.config.median_latency.as_secs_f64().max(1e-6);
        let p99 = self.config.p99_latency.as_secs_f64().max(median);
        // z(0.99) = 2.326.
        let sigma = (p99 / median).ln() / 2.326;
        let (u1, u2) = {
            let mut x = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let mut draw = || {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                ((*x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            (draw(), draw())
        };
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        Duration::from_secs_f64(median * (sigma * normal).exp())
    }

    fn volume_gib(&self, snapshot: &str) -> Option<u64> {
        self.config
            .snapshots
            .iter()
            .find(|(id, _)| id == snapshot)
            .map(|(_, gib)| *gib)
            .or_else(|| {
                self.started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(snapshot)
                    .map(|s| s.gib)
            })
    }

    fn admit_block(&self, snapshot: &str, op: BlockOp) -> bool {
        let mut per = self.per_snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = per
            .entry((snapshot.to_owned(), op))
            .or_insert_with(|| Bucket::new(self.config.per_snapshot_rps));
        // Both limits must have room; the account's is charged only then.
        if !bucket.take() {
            return false;
        }
        self.account[op as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// A running simulation; stopped when dropped.
pub struct Simulation {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// What it served.
    pub stats: Arc<SimStats>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Simulation {
    /// Starts a simulation on a loopback port, on a runtime of its own.
    pub fn start(config: SimConfig) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Named, so a benchmark can tell the simulation's CPU from its own.
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        let stats = Arc::new(SimStats::default());
        let state = Arc::new(State {
            account: [
                Mutex::new(Bucket::new(config.per_account_rps)),
                Mutex::new(Bucket::new(config.per_account_rps)),
            ],
            list: Mutex::new(Bucket::new(config.list_rps)),
            per_snapshot: Mutex::new(HashMap::new()),
            rng: Mutex::new(config.seed | 1),
            buckets: Default::default(),
            started: Mutex::default(),
            stats: stats.clone(),
            config,
        });
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr: SocketAddr = listener.local_addr()?;
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // A response's head and body go out as separate writes; with
                // Nagle's algorithm on, the body waits for the client's
                // delayed ACK of the head (up to 200 ms a request).
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            endpoint: format!("http://{addr}"),
            stats,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn respond(
    status: u16,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type);
    for (k, v) in headers {
        builder = builder.header(*k, v);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn ebs_error(status: u16, code: &str, reason: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        &[("x-amzn-ErrorType", code.to_owned())],
        serde_json::json!({ "message": message, "Reason": reason })
            .to_string()
            .into_bytes(),
    )
}

fn no_such_snapshot() -> Response<Full<Bytes>> {
    ebs_error(
        404,
        "ResourceNotFoundException",
        "SNAPSHOT_NOT_FOUND",
        "no such snapshot",
    )
}

fn bad_block_index() -> Response<Full<Bytes>> {
    ebs_error(
        400,
        "ValidationException",
        "INVALID_BLOCK",
        "bad block index",
    )
}

fn throttled(state: &State) -> Response<Full<Bytes>> {
    state.stats.throttled.fetch_add(1, Ordering::Relaxed);
    ebs_error(
        400,
        "RequestThrottledException",
        "ACCOUNT_THROTTLED",
        "The request was throttled",
    )
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            v.replace("%2F", "/")
                .replace("%2B", "+")
                .replace("%3D", "=")
        })
    })
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ebs = matches!(segments.as_slice(), ["snapshots", ..] | [""]);
    if !ebs {
        return s3::answer(state, &method, &path, &query, &headers, body).await;
    }
    tokio::time::sleep(state.latency()).await;
    let checksum = headers.get("x-amz-checksum").and_then(|v| v.to_str().ok());
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["snapshots", id, "blocks"]) => list_blocks(state, id, &query),
        ("GET", ["snapshots", id, "blocks", index]) => get_block(state, id, index, &query),
        ("PUT", ["snapshots", id, "blocks", index]) => put_block(state, id, index, checksum, &body),
        ("POST", ["snapshots"]) => start_snapshot(state, &body),
        ("POST", ["snapshots", "completion", id]) => {
            let changed = headers
                .get("x-amz-ChangedBlocksCount")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            complete_snapshot(state, id, changed)
        }
        ("POST", [""]) => ec2(state, &body),
        _ => {
            state.stats.other.fetch_add(1, Ordering::Relaxed);
            ebs_error(
                404,
                "UnknownOperationException",
                "",
                &format!("{method} {path} is not simulated"),
            )
        }
    }
}

fn list_blocks(state: &State, id: &str, query: &str) -> Response<Full<Bytes>> {
    let Some(gib) = state.volume_gib(id) else {
        return no_such_snapshot();
    };
    if !state.list.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return throttled(state);
    }
    state.stats.lists.fetch_add(1, Ordering::Relaxed);
    let total = gib * (1 << 30) / BLOCK_SIZE;
    let max = query_value(query, "maxResults")
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(10_000)
        .clamp(100, 10_000);
    let mut start = query_value(query, "startingBlockIndex")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    if let Some(token) = query_value(query, "pageToken") {
        start = start.max(token.parse().unwrap_or(0));
    }
    let mut blocks = Vec::new();
    let mut index = start;
    while index < total && (blocks.len() as u64) < max {
        if block_kind(index) != BlockKind::Hole {
            blocks
                .push(serde_json::json!({"BlockIndex": index, "BlockToken": format!("t{index}")}));
        }
        index += 1;
    }
    let mut body = serde_json::json!({
        "Blocks": blocks,
        "VolumeSize": gib,
        "BlockSize": BLOCK_SIZE,
        "ExpiryTime": 4_102_444_800u64,
    });
    if index < total {
        body["NextToken"] = index.to_string().into();
    }
    respond(200, "application/json", &[], body.to_string().into_bytes())
}

fn get_block(state: &State, id: &str, index: &str, query: &str) -> Response<Full<Bytes>> {
    if state.volume_gib(id).is_none() {
        return no_such_snapshot();
    }
    let Ok(index) = index.parse::<u64>() else {
        return bad_block_index();
    };
    if query_value(query, "blockToken").as_deref() != Some(&format!("t{index}")) {
        return ebs_error(
            400,
            "ValidationException",
            "INVALID_BLOCK_TOKEN",
            "bad block token",
        );
    }
    if !state.admit_block(id, BlockOp::Get) {
        return throttled(state);
    }
    state.stats.blocks_served.fetch_add(1, Ordering::Relaxed);
    let data = block_data(index);
    let sum = BASE64.encode(Sha256::digest(&data));
    respond(
        200,
        "application/octet-stream",
        &[
            ("x-amz-Data-Length", BLOCK_SIZE.to_string()),
            ("x-amz-Checksum", sum),
            ("x-amz-Checksum-Algorithm", "SHA256".to_owned()),
        ],
        data,
    )
}

fn put_block(
    state: &State,
    id: &str,
    index: &str,
    checksum: Option<&str>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let Some(gib) = state.volume_gib(id) else {
        return no_such_snapshot();
    };
    let Some(index) = index
        .parse::<u64>()
        .ok()
        .filter(|&i| i < gib * (1 << 30) / BLOCK_SIZE)
    else {
        return bad_block_index();
    };
    let sum = BASE64.encode(Sha256::digest(body));
    if body.len() as u64 != BLOCK_SIZE || checksum != Some(sum.as_str()) {
        state.stats.bad_writes.fetch_add(1, Ordering::Relaxed);
        return ebs_error(
            400,
            "ValidationException",
            "INVALID_PARAMETER_VALUE",
            "the block's length or checksum is wrong",
        );
    }
    if !state.admit_block(id, BlockOp::Put) {
        return throttled(state);
    }
    state.stats.blocks_written.fetch_add(1, Ordering::Relaxed);
    if let Some(started) = state
        .started
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(id)
    {
        started.written.insert(index);
    }
    respond(
        201,
        "application/json",
        &[
            ("x-amz-Checksum", sum),
            ("x-amz-Checksum-Algorithm", "SHA256".to_owned()),
        ],
        Vec::new(),
    )
}

/// EC2's DescribeSnapshots for the simulated snapshots (all completed).
/// StartSnapshot: a new, empty snapshot of the requested size (GiB).
fn start_snapshot(state: &State, body: &[u8]) -> Response<Full<Bytes>> {
    state.stats.other.fetch_add(1, Ordering::Relaxed);
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(gib) = request["VolumeSize"]
        .as_u64()
        .filter(|&g| (1..=65536).contains(&g))
    else {
        return ebs_error(
            400,
            "ValidationException",
            "INVALID_PARAMETER_VALUE",
            "VolumeSize must be 1 to 65536",
        );
    };
    let mut started = state.started.lock().unwrap_or_else(|p| p.into_inner());
    let id = format!("snap-{:017x}", 0xf_0000_0000_0000u64 + started.len() as u64);
    started.insert(
        id.clone(),
        Started {
            gib,
            written: Default::default(),
        },
    );
    respond(
        201,
        "application/json",
        &[],
        serde_json::json!({
            "SnapshotId": id,
            "OwnerId": "123456789012",
            "Status": "pending",
            "StartTime": 1_796_000_000.0,
            "VolumeSize": gib,
            "BlockSize": BLOCK_SIZE,
            "Tags": request["Tags"].clone(),
            "Description": request["Description"].clone(),
        })
        .to_string()
        .into_bytes(),
    )
}

/// CompleteSnapshot: `completed` when the changed-block count is the number
/// of blocks written, `error` otherwise (as EBS checks it).
fn complete_snapshot(state: &State, id: &str, changed: Option<u64>) -> Response<Full<Bytes>> {
    state.stats.other.fetch_add(1, Ordering::Relaxed);
    let started = state.started.lock().unwrap_or_else(|p| p.into_inner());
    let Some(snapshot) = started.get(id) else {
        return no_such_snapshot();
    };
    let status = match changed == Some(snapshot.written.len() as u64) {
        true => "completed",
        false => "error",
    };
    respond(
        202,
        "application/json",
        &[],
        serde_json::json!({ "Status": status })
            .to_string()
            .into_bytes(),
    )
}

fn ec2(state: &State, body: &[u8]) -> Response<Full<Bytes>> {
    state.stats.other.fetch_add(1, Ordering::Relaxed);
    let form = String::from_utf8_lossy(body);
    let ids: Vec<String> = form
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.starts_with("SnapshotId."))
        .map(|(_, v)| v.to_owned())
        .collect();
    let mut items = String::new();
    for id in &ids {
        if let Some(gib) = state.volume_gib(id) {
            items.push_str(&format!(
                "<item><snapshotId>{id}</snapshotId><volumeId>vol-ffffffff</volumeId><status>completed</status>\
                 <startTime>2026-11-30T00:00:00.000Z</startTime><progress>100%</progress><ownerId>123456789012</ownerId>\
                 <volumeSize>{gib}</volumeSize><encrypted>false</encrypted></item>"
            ));
        }
    }
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSnapshotsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>sim</requestId><snapshotSet>{items}</snapshotSet></DescribeSnapshotsResponse>"
    );
    respond(200, "text/xml;charset=UTF-8", &[], xml.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_draws_have_the_configured_median_and_tail() {
        let state = State {
            config: SimConfig::default(),
            stats: Arc::default(),
            account: [Mutex::new(Bucket::new(1.0)), Mutex::new(Bucket::new(1.0))],
            list: Mutex::new(Bucket::new(1.0)),
            per_snapshot: Mutex::default(),
            rng: Mutex::new(7),
            buckets: Default::default(),
            started: Mutex::default(),
        };
        let mut draws: Vec<f64> = (0..20_000).map(|_| state.latency().as_secs_f64()).collect();
        draws.sort_by(f64::total_cmp);
        let (median, p99) = (draws[10_000], draws[19_800]);
        assert!((0.055..0.065).contains(&median), "median {median}");
        assert!((0.22..0.28).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn buckets_admit_their_rate_and_no_more() {
        let mut b = Bucket::new(1000.0);
        let started = Instant::now();
        let mut admitted = 0;
        while started.elapsed() < Duration::from_millis(500) {
            admitted += u32::from(b.take());
        }
        // 100 of burst plus 1,000 a second for half a second.
        assert!((500..=700).contains(&admitted), "{admitted}");
    }

    #[test]
    fn blocks_are_a_function_of_their_index() {
        assert_eq!(block_data(70), block_data(70));
        assert_ne!(block_data(70), block_data(71));
        assert_eq!(block_kind(0), BlockKind::Hole);
        assert!(block_data(1).iter().all(|&b| b == 0));
        assert_eq!(block_kind(64), BlockKind::Random);
        assert_eq!(block_kind(128), BlockKind::Compressible);
    }
}
