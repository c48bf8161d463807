//! One store unit and one restore unit against the simulated EBS direct
//! APIs. Store: the real encoder (`encode_unit`, compression included) reads
//! a unit's blocks through the real EBS adapter (`Ec2Images`, the SDK client
//! with its retries and pool). Restore: the real decoder (`read_units`,
//! decompression and hash checks included) writes a unit of an archive of the
//! same blocks through the adapter. Both are paced at the rate one unit is
//! allotted. Prints the achieved block requests per second and its ratio to
//! the allotted rate: each unit's efficiency.
//!
//! ```text
//! cargo run --release -p amistore-aws --features simulation --example unit_throughput -- \
//!     [--median-ms 60] [--p99-ms 250] [--rate 60] [--concurrency 32] [--gib 1]
//! ```
//!
//! `scripts/bench-aws.sh` runs it at several latencies.

use std::time::{Duration, Instant};

use amistore_aws::ebs::EbsLimits;
use amistore_aws::setup::{AwsPorts, AwsSettings, Overrides};
use amistore_aws::simulation::block_data;
use amistore_aws::simulation::{SimConfig, Simulation};
use amistore_core::Result;
use amistore_core::archive::decode::{Decoded, read_units};
use amistore_core::archive::encode::{BlockSource, encode_unit, write_archive};
use amistore_core::archive::index::ArchiveIndex;
use amistore_core::archive::plan::{ArchivePlan, DiskSource};
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::ids::{AccountId, SnapshotId};
use amistore_core::image::{Architecture, ImageMetadata};
use amistore_core::ports::SnapshotStore;

/// The adapter as the engine's store step sees it: one snapshot per disk.
struct Blocks<'a> {
    store: &'a dyn SnapshotStore,
    snapshot: &'a SnapshotId,
}

impl BlockSource for Blocks<'_> {
    fn read_blocks(&self, _disk: usize, first_block: u64, buf: &mut [u8]) -> Result<()> {
        self.store.read_blocks(self.snapshot, first_block, buf)
    }
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (median, p99) = (arg("--median-ms", 60.0), arg("--p99-ms", 250.0));
    let rate = arg("--rate", 60.0) as u32;
    let concurrency = arg("--concurrency", 32.0) as usize;
    let gib = arg("--gib", 1.0) as u64;
    let snapshot: SnapshotId = "snap-0123456789abcdef0".parse()?;
    let sim = Simulation::start(SimConfig {
        median_latency: Duration::from_secs_f64(median / 1000.0),
        p99_latency: Duration::from_secs_f64(p99 / 1000.0),
        snapshots: vec![(snapshot.to_string(), gib)],
        ..SimConfig::default()
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let account: AccountId = "123456789012".parse()?;
    let mut settings = AwsSettings::new("unused", "unused-work".parse()?);
    settings.account = Some(account.clone());
    settings.ebs = EbsLimits {
        concurrency,
        requests_per_second: rate,
        ..EbsLimits::default()
    };
    settings.overrides = Overrides {
        endpoint_url: Some(sim.endpoint.clone()),
        region: Some("us-east-1".into()),
        credentials: Some(("sim".into(), "sim".into())),
        audit: None,
    };
    let ports = runtime.block_on(AwsPorts::connect(&settings, runtime.handle().clone()))?;
    let images = ports.images.clone();
    let present = std::thread::scope(|s| {
        s.spawn(|| images.list_blocks(&account, &snapshot))
            .join()
            .expect("listing thread")
    })?;
    let plan = ArchivePlan::new(
        ImageMetadata::minimal(
            "throughput".parse()?,
            Architecture::X86_64,
            "/dev/xvda".parse()?,
        ),
        vec![DiskSource {
            device_name: "/dev/xvda".parse()?,
            snapshot_id: Some(snapshot.to_string()),
            volume_size: gib << 30,
            present,
            tags: vec![],
        }],
        time::OffsetDateTime::now_utc(),
    )?;
    // As the store step does: announce the unit's blocks, then encode it.
    let unit = &plan.units[0];
    images.will_read(
        &snapshot,
        unit.first_block..unit.first_block + unit.block_count,
    );
    let before = sim
        .stats
        .blocks_served
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let source = Blocks {
        store: images.as_ref(),
        snapshot: &snapshot,
    };
    let (_, record) = std::thread::scope(|s| {
        s.spawn(|| encode_unit(&plan, 0, &source, 1, std::io::sink(), &mut |_| {}))
            .join()
            .expect("encoding thread")
    })?;
    let secs = started.elapsed().as_secs_f64();
    let served = sim
        .stats
        .blocks_served
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    let throttled = sim
        .stats
        .throttled
        .load(std::sync::atomic::Ordering::Relaxed);
    let achieved = served as f64 / secs;
    println!(
        "store unit: {served} blocks ({} MiB decompressed) in {secs:.2} s at median {median} ms / p99 {p99} ms: \
         {achieved:.1} requests/s of {rate} allotted, {throttled} throttled",
        record.decompressed_len >> 20
    );
    let store_efficiency = achieved / f64::from(rate);

    // Restore: an archive of the same blocks, made here, decoded unit 0 by
    // unit 0 into the simulated snapshot as the restore step does.
    struct Generated;
    impl BlockSource for Generated {
        fn read_blocks(&self, _disk: usize, first_block: u64, buf: &mut [u8]) -> Result<()> {
            for (n, block) in buf.chunks_mut(BLOCK_SIZE as usize).enumerate() {
                block.copy_from_slice(&block_data(first_block + n as u64));
            }
            Ok(())
        }
    }
    let (archive, _) = write_archive(&plan, &Generated, 2, Vec::new(), &mut |_| {})?;
    let index = ArchiveIndex::open(&archive)?;
    let before = sim
        .stats
        .blocks_written
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            read_units(&index, &archive, 0..1, 1, |decoded| {
                if let Decoded::Data {
                    first_block, bytes, ..
                } = decoded
                {
                    images.write_blocks(&snapshot, first_block, &bytes)?;
                }
                Ok(())
            })
            .and_then(|()| images.finish_writes(&snapshot))
        })
        .join()
        .expect("decoding thread")
    })?;
    let secs = started.elapsed().as_secs_f64();
    let written = sim
        .stats
        .blocks_written
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    let achieved = written as f64 / secs;
    println!(
        "restore unit: {written} blocks in {secs:.2} s at median {median} ms / p99 {p99} ms: \
         {achieved:.1} requests/s of {rate} allotted, {} throttled, {} bad writes",
        sim.stats
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed),
        sim.stats
            .bad_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("store unit efficiency: {store_efficiency:.2}");
    println!("restore unit efficiency: {:.2}", achieved / f64::from(rate));
    Ok(())
}
