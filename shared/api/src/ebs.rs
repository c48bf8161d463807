//! The EBS direct APIs (rest-json, signed for the `ebs` service) over the
//! engine's snapshot store: StartSnapshot, PutSnapshotBlock, CompleteSnapshot,
//! ListSnapshotBlocks, GetSnapshotBlock and ListChangedBlocks, so that
//! `aws ebs …` and tools built on these APIs (coldsnap, say) write and read
//! the snapshots of `amistore serve`'s image library as they would on AWS.
//!
//! EBS's rules are kept: blocks are 512 KiB; PutSnapshotBlock's data must match
//! its Base64 SHA-256 `x-amz-Checksum` (which is why its body may be sent
//! unsigned, as on AWS); CompleteSnapshot's `x-amz-ChangedBlocksCount` must be
//! the number of blocks written, and its optional aggregated checksum (the
//! SHA-256 of the written blocks' SHA-256 digests in block order, the LINEAR
//! method) must match them; GetSnapshotBlock answers with the block's checksum;
//! block and page tokens are opaque and checked. Errors are EBS's:
//! `ValidationException` (with its `Reason`), `ResourceNotFoundException`,
//! `AccessDeniedException`, `InternalServerException`.
//!
//! What a local library cannot do is refused, not ignored: incremental
//! snapshots (`ParentSnapshotId`) and encryption (`Encrypted`, `KmsKeyArn`; the
//! library's volumes are files on the server's disk). A snapshot whose
//! aggregated checksum does not match is deleted (it cannot be trusted, and
//! EBS leaves such a snapshot in `error`). `Timeout` is accepted and has no
//! effect: a pending local snapshot never expires.

use amistore_core::Error as CoreError;
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::engine::Engine;
use amistore_core::ids::{AccountId, ResourceState, SnapshotId, unique_token};
use amistore_core::image::{GIB, MAX_VOLUME_GIB, Tag, check_description};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::ApiError;
use crate::query::Params;
use crate::service::HttpResponse;

/// The service name EBS requests are signed for.
pub const SERVICE: &str = "ebs";

const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";
const SHA256: &str = "SHA256";
/// How long listed block tokens stay valid, as EBS says (7 days).
const TOKEN_LIFETIME_S: i64 = 7 * 24 * 3600;
/// ListSnapshotBlocks' and ListChangedBlocks' page bounds (the model's).
const PAGE_MIN: u64 = 100;
const PAGE_MAX: u64 = 10_000;

/// Whether `path` is one of the EBS direct APIs' routes.
pub fn is_ebs_path(path: &str) -> bool {
    path == "/snapshots" || path.starts_with("/snapshots/")
}

/// An EBS error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbsError {
    /// The error type (`ValidationException`, …).
    pub code: std::borrow::Cow<'static, str>,
    /// HTTP status.
    pub status: u16,
    /// The `Reason` member, for the types that have one.
    pub reason: Option<&'static str>,
    /// Readable message.
    pub message: String,
}

impl EbsError {
    fn validation(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: "ValidationException".into(),
            status: 400,
            reason: Some(reason),
            message: message.into(),
        }
    }

    fn not_found(snapshot: &str) -> Self {
        Self {
            code: "ResourceNotFoundException".into(),
            status: 404,
            reason: Some("SNAPSHOT_NOT_FOUND"),
            message: format!("The snapshot {snapshot} does not exist."),
        }
    }

    /// The answer: a JSON body and the `x-amzn-ErrorType` header botocore
    /// reads the type from.
    pub fn response(&self) -> HttpResponse {
        let mut body = json!({ "message": self.message });
        if let Some(reason) = self.reason {
            body["Reason"] = reason.into();
        }
        HttpResponse {
            status: self.status,
            content_type: JSON,
            headers: vec![("x-amzn-ErrorType".into(), self.code.to_string())],
            body: body.to_string().into_bytes(),
        }
    }
}

/// Authentication errors keep their code (botocore shows it); parameter
/// errors become EBS's `ValidationException`.
impl From<ApiError> for EbsError {
    fn from(e: ApiError) -> Self {
        let (code, status, reason) = match e.code.as_ref() {
            "UnauthorizedOperation" => (
                "AccessDeniedException".into(),
                403,
                Some("UNAUTHORIZED_ACCOUNT"),
            ),
            "InvalidNextToken" => (
                "ValidationException".into(),
                400,
                Some("INVALID_PAGE_TOKEN"),
            ),
            _ if e.status == 400 => (
                "ValidationException".into(),
                400,
                Some("INVALID_PARAMETER_VALUE"),
            ),
            _ => (e.code, e.status, None),
        };
        Self {
            code,
            status,
            reason,
            message: e.message,
        }
    }
}

impl From<CoreError> for EbsError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(message) => Self {
                code: "ResourceNotFoundException".into(),
                status: 404,
                reason: Some("SNAPSHOT_NOT_FOUND"),
                message: message.into(),
            },
            CoreError::InvalidInput(m) | CoreError::InvalidCombination(m) => {
                Self::validation("INVALID_PARAMETER_VALUE", m)
            }
            CoreError::IncorrectState(m) => Self::validation("INVALID_SNAPSHOT_ID", m),
            // A 5xx: clients retry it, as EBS asks them to.
            other => Self {
                code: "InternalServerException".into(),
                status: 500,
                reason: None,
                message: other.to_string(),
            },
        }
    }
}

/// One of the six actions, with what its path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /snapshots`
    StartSnapshot,
    /// `PUT /snapshots/{id}/blocks/{index}`
    PutSnapshotBlock(String, String),
    /// `GET /snapshots/{id}/blocks/{index}`
    GetSnapshotBlock(String, String),
    /// `GET /snapshots/{id}/blocks`
    ListSnapshotBlocks(String),
    /// `GET /snapshots/{second}/changedblocks`
    ListChangedBlocks(String),
    /// `POST /snapshots/completion/{id}`
    CompleteSnapshot(String),
}

impl Route {
    /// The route of `method` `path`, or `UnknownOperationException`.
    pub fn parse(method: &str, path: &str) -> Result<Self, EbsError> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let owned = |s: &str| s.to_owned();
        let route = match (method, segments.as_slice()) {
            ("POST", ["snapshots"]) => Some(Route::StartSnapshot),
            ("POST", ["snapshots", "completion", id]) => Some(Route::CompleteSnapshot(owned(id))),
            ("PUT", ["snapshots", id, "blocks", index]) => {
                Some(Route::PutSnapshotBlock(owned(id), owned(index)))
            }
            ("GET", ["snapshots", id, "blocks", index]) => {
                Some(Route::GetSnapshotBlock(owned(id), owned(index)))
            }
            ("GET", ["snapshots", id, "blocks"]) => Some(Route::ListSnapshotBlocks(owned(id))),
            ("GET", ["snapshots", id, "changedblocks"]) => {
                Some(Route::ListChangedBlocks(owned(id)))
            }
            _ => None,
        };
        route.ok_or_else(|| EbsError {
            code: "UnknownOperationException".into(),
            status: 404,
            reason: None,
            message: format!("{method} {path} is not an EBS direct API"),
        })
    }

    /// The action's name.
    pub fn action(&self) -> &'static str {
        match self {
            Route::StartSnapshot => "StartSnapshot",
            Route::PutSnapshotBlock(..) => "PutSnapshotBlock",
            Route::GetSnapshotBlock(..) => "GetSnapshotBlock",
            Route::ListSnapshotBlocks(_) => "ListSnapshotBlocks",
            Route::ListChangedBlocks(_) => "ListChangedBlocks",
            Route::CompleteSnapshot(_) => "CompleteSnapshot",
        }
    }

    /// Whether the body is covered by a checksum the action checks, and so
    /// may be sent unsigned (`UNSIGNED-PAYLOAD`), as EBS allows.
    pub fn body_checksummed(&self) -> bool {
        matches!(self, Route::PutSnapshotBlock(..))
    }
}

/// What [`answer`] needs of the HTTP request.
pub struct Request<'a> {
    /// The query string, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn query(&self) -> Result<Params, EbsError> {
        Ok(Params::parse(self.query.as_bytes())?)
    }
}

/// Answers `route` for `account`.
pub fn answer(
    engine: &Engine,
    account: &AccountId,
    route: &Route,
    req: &Request<'_>,
    now: OffsetDateTime,
) -> Result<HttpResponse, EbsError> {
    match route {
        Route::StartSnapshot => start_snapshot(engine, account, req, now),
        Route::PutSnapshotBlock(id, index) => put_block(engine, account, id, index, req),
        Route::GetSnapshotBlock(id, index) => get_block(engine, account, id, index, req),
        Route::ListSnapshotBlocks(id) => list_blocks(engine, account, id, req, now),
        Route::ListChangedBlocks(id) => list_changed(engine, account, id, req, now),
        Route::CompleteSnapshot(id) => complete(engine, account, id, req),
    }
}

fn json_response(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::text(status, JSON, body.to_string())
}

fn epoch(t: OffsetDateTime) -> Value {
    json!(t.unix_timestamp())
}

fn snapshot_id(raw: &str) -> Result<SnapshotId, EbsError> {
    raw.parse().map_err(|_| {
        EbsError::validation(
            "INVALID_SNAPSHOT_ID",
            format!("{raw:?} is not a snapshot id (snap-…)"),
        )
    })
}

/// The snapshot, if `account` owns it.
fn owned(
    engine: &Engine,
    account: &AccountId,
    id: &SnapshotId,
) -> Result<amistore_core::ports::SnapshotInfo, EbsError> {
    engine
        .snapshots
        .describe_snapshot(account, id)
        .map_err(|e| match e {
            CoreError::NotFound(_) => EbsError::not_found(id.as_str()),
            other => other.into(),
        })
}

fn block_index(raw: &str, volume_size: u64) -> Result<u64, EbsError> {
    let blocks = volume_size.div_ceil(BLOCK_SIZE);
    raw.parse::<u64>()
        .ok()
        .filter(|i| *i < blocks)
        .ok_or_else(|| {
            EbsError::validation(
                "INVALID_BLOCK",
                format!(
                    "block index {raw:?} is not 0 to {}",
                    blocks.saturating_sub(1)
                ),
            )
        })
}

fn checksum(data: &[u8]) -> String {
    B64.encode(Sha256::digest(data))
}

fn require_sha256(req: &Request<'_>) -> Result<(), EbsError> {
    match req.header("x-amz-Checksum-Algorithm") {
        Some(SHA256) => Ok(()),
        other => Err(EbsError::validation(
            "INVALID_PARAMETER_VALUE",
            format!("x-amz-Checksum-Algorithm {other:?} is not SHA256"),
        )),
    }
}

fn block_token(id: &SnapshotId, index: u64) -> String {
    B64.encode(format!("{id}/{index}"))
}

fn check_block_token(id: &SnapshotId, index: u64, token: &str) -> Result<(), EbsError> {
    if token == block_token(id, index) {
        return Ok(());
    }
    Err(EbsError::validation(
        "INVALID_BLOCK_TOKEN",
        format!(
            "the block token is not one ListSnapshotBlocks or ListChangedBlocks gave for block {index} of {id}"
        ),
    ))
}

fn page_token(next: u64) -> String {
    B64.encode(format!("next/{next}"))
}

/// `maxResults`, `pageToken` and `startingBlockIndex`: where a page starts and
/// how many entries it holds at most.
fn page(p: &mut Params) -> Result<(u64, u64), EbsError> {
    let max = match p.opt("maxResults") {
        None => PAGE_MAX,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|m| (PAGE_MIN..=PAGE_MAX).contains(m))
            .ok_or_else(|| {
                EbsError::validation(
                    "INVALID_PARAMETER_VALUE",
                    format!("maxResults {raw:?} is not {PAGE_MIN} to {PAGE_MAX}"),
                )
            })?,
    };
    let start = match p.opt("startingBlockIndex") {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            EbsError::validation(
                "INVALID_PARAMETER_VALUE",
                format!("startingBlockIndex {raw:?} is not a block index"),
            )
        })?,
    };
    let start = match p.opt("pageToken") {
        None => start,
        Some(token) => B64
            .decode(&token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("next/")?.parse::<u64>().ok())
            .map(|next| next.max(start))
            .ok_or_else(|| {
                EbsError::validation("INVALID_PAGE_TOKEN", "the page token is not valid")
            })?,
    };
    Ok((start, max))
}

fn start_snapshot(
    engine: &Engine,
    account: &AccountId,
    req: &Request<'_>,
    now: OffsetDateTime,
) -> Result<HttpResponse, EbsError> {
    let bad = |why: String| EbsError::validation("INVALID_PARAMETER_VALUE", why);
    let body: Value = serde_json::from_slice(req.body)
        .map_err(|e| bad(format!("the request body is not JSON: {e}")))?;
    let Value::Object(fields) = body else {
        return Err(bad("the request body is not a JSON object".into()));
    };
    const KNOWN: [&str; 8] = [
        "VolumeSize",
        "ParentSnapshotId",
        "Tags",
        "Description",
        "ClientToken",
        "Encrypted",
        "KmsKeyArn",
        "Timeout",
    ];
    if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!("{unknown} is not a StartSnapshot parameter")));
    }
    let gib = fields
        .get("VolumeSize")
        .and_then(Value::as_u64)
        .filter(|g| (1..=MAX_VOLUME_GIB).contains(g))
        .ok_or_else(|| {
            EbsError::validation(
                "INVALID_VOLUME_SIZE",
                format!("VolumeSize must be 1 to {MAX_VOLUME_GIB} GiB"),
            )
        })?;
    if fields.contains_key("ParentSnapshotId") {
        return Err(bad(
            "incremental snapshots (ParentSnapshotId) are not supported by amistore serve; start a full snapshot".into(),
        ));
    }
    if fields.get("Encrypted").and_then(Value::as_bool) == Some(true)
        || fields.contains_key("KmsKeyArn")
    {
        return Err(EbsError::validation(
            "INVALID_CUSTOMER_KEY",
            "amistore serve keeps snapshots as files on its own disk and cannot encrypt them; omit Encrypted and KmsKeyArn",
        ));
    }
    if fields
        .get("Timeout")
        .is_some_and(|t| !t.as_u64().is_some_and(|t| (10..=4320).contains(&t)))
    {
        return Err(bad("Timeout must be 10 to 4320 minutes".into()));
    }
    let description = match fields.get("Description") {
        None => None,
        Some(Value::String(d)) => {
            check_description(d).map_err(|e| bad(e.to_string()))?;
            Some(d.clone())
        }
        Some(_) => return Err(bad("Description is not a string".into())),
    };
    let tags = match fields.get("Tags") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 50 => items
            .iter()
            .map(|t| {
                let text = |k: &str| t.get(k).and_then(Value::as_str);
                Tag::new(text("Key").unwrap_or(""), text("Value").unwrap_or(""))
                    .map_err(|e| EbsError::validation("INVALID_TAG", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(EbsError::validation(
                "INVALID_TAG",
                "Tags must be a list of at most 50 tags",
            ));
        }
    };
    amistore_core::image::check_unique_tag_keys(&tags)
        .map_err(|e| EbsError::validation("INVALID_TAG", e.to_string()))?;
    let client_token = match fields.get("ClientToken") {
        None => format!("ebs-{}", unique_token()),
        Some(Value::String(t)) if !t.is_empty() && t.len() <= 255 => format!("ebs-{t}"),
        Some(_) => return Err(bad("ClientToken must be 1 to 255 characters".into())),
    };
    let id = engine.snapshots.start_snapshot(
        account,
        gib * GIB,
        &tags,
        &amistore_core::image::Encryption::Unencrypted,
        &client_token,
    )?;
    let info = owned(engine, account, &id)?;
    let mut body = json!({
        "SnapshotId": id.as_str(),
        "OwnerId": account.as_str(),
        "Status": status(info.state),
        "StartTime": epoch(now),
        "VolumeSize": gib,
        "BlockSize": BLOCK_SIZE,
        "Tags": info.tags.iter().map(|t| json!({"Key": t.key(), "Value": t.value()})).collect::<Vec<_>>(),
    });
    if let Some(d) = description {
        body["Description"] = d.into();
    }
    Ok(json_response(201, &body))
}

/// EBS's snapshot status names.
fn status(state: ResourceState) -> &'static str {
    match state {
        ResourceState::Pending => "pending",
        ResourceState::Available => "completed",
        _ => "error",
    }
}

fn put_block(
    engine: &Engine,
    account: &AccountId,
    id: &str,
    index: &str,
    req: &Request<'_>,
) -> Result<HttpResponse, EbsError> {
    let id = snapshot_id(id)?;
    let info = owned(engine, account, &id)?;
    let index = block_index(index, info.volume_size)?;
    if info.state != ResourceState::Pending {
        return Err(EbsError::validation(
            "INVALID_SNAPSHOT_ID",
            format!(
                "snapshot {id} is {}; blocks can be written only while it is pending",
                status(info.state)
            ),
        ));
    }
    let length = req.header("x-amz-Data-Length");
    if length != Some("524288") || req.body.len() as u64 != BLOCK_SIZE {
        return Err(EbsError::validation(
            "INVALID_PARAMETER_VALUE",
            format!(
                "a block is 524288 bytes: x-amz-Data-Length is {length:?} and the body has {} bytes",
                req.body.len()
            ),
        ));
    }
    if let Some(p) = req
        .header("x-amz-Progress")
        .filter(|p| !p.parse::<u8>().is_ok_and(|p| p <= 100))
    {
        return Err(EbsError::validation(
            "INVALID_PARAMETER_VALUE",
            format!("x-amz-Progress {p:?} is not 0 to 100"),
        ));
    }
    require_sha256(req)?;
    let sum = checksum(req.body);
    if req.header("x-amz-Checksum") != Some(sum.as_str()) {
        return Err(EbsError::validation(
            "INVALID_PARAMETER_VALUE",
            format!("the block's data does not match its x-amz-Checksum (its SHA-256 is {sum})"),
        ));
    }
    engine.snapshots.write_blocks(&id, index, req.body)?;
    Ok(HttpResponse {
        status: 201,
        content_type: JSON,
        headers: vec![
            ("x-amz-Checksum".into(), sum),
            ("x-amz-Checksum-Algorithm".into(), SHA256.to_owned()),
        ],
        body: Vec::new(),
    })
}

fn complete(
    engine: &Engine,
    account: &AccountId,
    id: &str,
    req: &Request<'_>,
) -> Result<HttpResponse, EbsError> {
    let id = snapshot_id(id)?;
    let info = owned(engine, account, &id)?;
    let changed = req
        .header("x-amz-ChangedBlocksCount")
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| {
            EbsError::validation(
                "INVALID_PARAMETER_VALUE",
                "x-amz-ChangedBlocksCount (the number of blocks written) is required",
            )
        })?;
    let aggregate = req.header("x-amz-Checksum").map(str::to_owned);
    if aggregate.is_some() {
        require_sha256(req)?;
        match req.header("x-amz-Checksum-Aggregation-Method") {
            Some("LINEAR") => {}
            other => {
                return Err(EbsError::validation(
                    "INVALID_PARAMETER_VALUE",
                    format!("x-amz-Checksum-Aggregation-Method {other:?} is not LINEAR"),
                ));
            }
        }
    }
    if info.state == ResourceState::Failed {
        return Err(EbsError::validation(
            "INVALID_SNAPSHOT_ID",
            format!("snapshot {id} is in error"),
        ));
    }
    engine.snapshots.complete_snapshot(&id, changed)?;
    if let Some(claimed) = aggregate {
        let actual = aggregate_checksum(engine, account, &id)?;
        if claimed != actual {
            // Its blocks are not the ones the writer meant: nobody should
            // register it.
            let _ = engine.snapshots.delete_snapshot(&id);
            return Err(EbsError::validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "the aggregated checksum does not match the blocks written (theirs is {actual}); snapshot {id} is deleted, write it again"
                ),
            ));
        }
    }
    Ok(json_response(202, &json!({ "Status": "completed" })))
}

/// LINEAR aggregation: the SHA-256 of every written block's SHA-256 digest,
/// in block order.
fn aggregate_checksum(
    engine: &Engine,
    account: &AccountId,
    id: &SnapshotId,
) -> Result<String, EbsError> {
    let blocks = engine.snapshots.list_blocks(account, id)?;
    let mut all = Sha256::new();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for run in blocks.runs() {
        for index in run.clone() {
            engine.snapshots.read_blocks(id, index, &mut buf)?;
            all.update(Sha256::digest(&buf));
        }
    }
    Ok(B64.encode(all.finalize()))
}

fn readable(
    engine: &Engine,
    account: &AccountId,
    id: &SnapshotId,
) -> Result<amistore_core::ports::SnapshotInfo, EbsError> {
    let info = owned(engine, account, id)?;
    if info.state != ResourceState::Available {
        return Err(EbsError::validation(
            "INVALID_SNAPSHOT_ID",
            format!(
                "snapshot {id} is {}; only completed snapshots can be read",
                status(info.state)
            ),
        ));
    }
    Ok(info)
}

fn get_block(
    engine: &Engine,
    account: &AccountId,
    id: &str,
    index: &str,
    req: &Request<'_>,
) -> Result<HttpResponse, EbsError> {
    let id = snapshot_id(id)?;
    let mut p = req.query()?;
    let token = p.req("blockToken")?;
    p.finish()?;
    let info = readable(engine, account, &id)?;
    let index = block_index(index, info.volume_size)?;
    check_block_token(&id, index, &token)?;
    let mut data = vec![0u8; BLOCK_SIZE as usize];
    engine.snapshots.read_blocks(&id, index, &mut data)?;
    Ok(HttpResponse {
        status: 200,
        content_type: OCTETS,
        headers: vec![
            ("x-amz-Data-Length".into(), BLOCK_SIZE.to_string()),
            ("x-amz-Checksum".into(), checksum(&data)),
            ("x-amz-Checksum-Algorithm".into(), SHA256.to_owned()),
        ],
        body: data,
    })
}

fn list_blocks(
    engine: &Engine,
    account: &AccountId,
    id: &str,
    req: &Request<'_>,
    now: OffsetDateTime,
) -> Result<HttpResponse, EbsError> {
    let id = snapshot_id(id)?;
    let mut p = req.query()?;
    let (start, max) = page(&mut p)?;
    p.finish()?;
    let info = readable(engine, account, &id)?;
    let present = engine.snapshots.list_blocks(account, &id)?;
    let mut blocks = Vec::new();
    let mut next = None;
    'runs: for run in present.runs() {
        for index in run.start.max(start)..run.end {
            if blocks.len() as u64 == max {
                next = Some(index);
                break 'runs;
            }
            blocks.push(json!({"BlockIndex": index, "BlockToken": block_token(&id, index)}));
        }
    }
    Ok(block_page("Blocks", blocks, info.volume_size, next, now))
}

/// A page of ListSnapshotBlocks or ListChangedBlocks: the entries under
/// `name`, the tokens' expiry, the volume's size, and the next page's token.
fn block_page(
    name: &str,
    entries: Vec<Value>,
    volume_size: u64,
    next: Option<u64>,
    now: OffsetDateTime,
) -> HttpResponse {
    let mut body = json!({
        name: entries,
        "ExpiryTime": epoch(now + time::Duration::seconds(TOKEN_LIFETIME_S)),
        "VolumeSize": volume_size.div_ceil(GIB),
        "BlockSize": BLOCK_SIZE,
    });
    if let Some(next) = next {
        body["NextToken"] = page_token(next).into();
    }
    json_response(200, &body)
}

/// The blocks that differ between two snapshots (or, with no first snapshot,
/// every block of the second). A local library keeps no lineage, so blocks
/// are compared by content: a page examines at most `maxResults` block
/// indexes present in either snapshot and may hold fewer changes.
fn list_changed(
    engine: &Engine,
    account: &AccountId,
    second: &str,
    req: &Request<'_>,
    now: OffsetDateTime,
) -> Result<HttpResponse, EbsError> {
    let second = snapshot_id(second)?;
    let mut p = req.query()?;
    let first = p
        .opt("firstSnapshotId")
        .map(|f| snapshot_id(&f))
        .transpose()?;
    let (start, max) = page(&mut p)?;
    p.finish()?;
    let second_info = readable(engine, account, &second)?;
    let in_second = engine.snapshots.list_blocks(account, &second)?;
    let in_first = match &first {
        Some(first) => {
            let info = readable(engine, account, first)?;
            if info.volume_size != second_info.volume_size {
                return Err(EbsError::validation(
                    "UNRELATED_SNAPSHOTS",
                    format!("snapshots {first} and {second} are not of the same volume size"),
                ));
            }
            Some(engine.snapshots.list_blocks(account, first)?)
        }
        None => None,
    };
    // The first `max + 1` indexes of the union are among the first `max + 1`
    // of each snapshot: at most 2 × 10,001 indexes are held, whatever the
    // volume's size.
    let first_of = |ranges: &amistore_core::blocks::BlockRanges| -> Vec<u64> {
        ranges
            .runs()
            .iter()
            .flat_map(|r| r.start.max(start)..r.end)
            .take(max as usize + 1)
            .collect()
    };
    let mut candidates = first_of(&in_second);
    if let Some(f) = &in_first {
        candidates.extend(first_of(f));
    }
    candidates.sort_unstable();
    candidates.dedup();
    let next = candidates.get(max as usize).copied();
    candidates.truncate(max as usize);
    let (mut a, mut b) = (
        vec![0u8; BLOCK_SIZE as usize],
        vec![0u8; BLOCK_SIZE as usize],
    );
    let mut changed = Vec::new();
    for index in candidates {
        let in_b = in_second.contains(index);
        let entry = match (&first, &in_first) {
            (Some(first), Some(f)) => {
                let in_a = f.contains(index);
                if in_a && in_b {
                    engine.snapshots.read_blocks(first, index, &mut a)?;
                    engine.snapshots.read_blocks(&second, index, &mut b)?;
                    if a == b {
                        continue;
                    }
                }
                let mut e = json!({ "BlockIndex": index });
                if in_a {
                    e["FirstBlockToken"] = block_token(first, index).into();
                }
                if in_b {
                    e["SecondBlockToken"] = block_token(&second, index).into();
                }
                e
            }
            _ => json!({ "BlockIndex": index, "SecondBlockToken": block_token(&second, index) }),
        };
        changed.push(entry);
    }
    Ok(block_page(
        "ChangedBlocks",
        changed,
        second_info.volume_size,
        next,
        now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_the_models() {
        assert_eq!(
            Route::parse("POST", "/snapshots").unwrap(),
            Route::StartSnapshot
        );
        assert_eq!(
            Route::parse("PUT", "/snapshots/snap-1/blocks/7").unwrap(),
            Route::PutSnapshotBlock("snap-1".into(), "7".into())
        );
        assert_eq!(
            Route::parse("POST", "/snapshots/completion/snap-1").unwrap(),
            Route::CompleteSnapshot("snap-1".into())
        );
        assert_eq!(
            Route::parse("GET", "/snapshots/snap-1/changedblocks").unwrap(),
            Route::ListChangedBlocks("snap-1".into())
        );
        for (method, path) in [
            ("DELETE", "/snapshots"),
            ("GET", "/snapshots"),
            ("PUT", "/snapshots/snap-1/blocks"),
            ("GET", "/snapshots/snap-1/blocks/1/2"),
        ] {
            assert_eq!(
                Route::parse(method, path).unwrap_err().code,
                "UnknownOperationException",
                "{method} {path}"
            );
        }
        assert!(Route::PutSnapshotBlock("s".into(), "0".into()).body_checksummed());
        assert!(!Route::StartSnapshot.body_checksummed());
    }

    #[test]
    fn tokens_are_checked() {
        let id: SnapshotId = "snap-0123456789abcdef0".parse().unwrap();
        check_block_token(&id, 3, &block_token(&id, 3)).unwrap();
        assert!(check_block_token(&id, 4, &block_token(&id, 3)).is_err());
        let mut p = Params::parse(format!("pageToken={}", page_token(250)).as_bytes()).unwrap();
        assert_eq!(page(&mut p).unwrap(), (250, PAGE_MAX));
        for bad in [
            "pageToken=AAAA",
            "maxResults=99",
            "maxResults=10001",
            "startingBlockIndex=-1",
        ] {
            let mut p = Params::parse(bad.as_bytes()).unwrap();
            assert_eq!(
                page(&mut p).unwrap_err().code,
                "ValidationException",
                "{bad}"
            );
        }
    }
}
