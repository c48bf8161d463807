//! One store unit and one restore unit against the simulated EBS direct
//! APIs and S3. Store: the real encoder (`encode_unit`, compression
//! included) reads a unit's blocks through the real EBS adapter
//! (`Ec2Images`, the SDK client with its retries and pool), and its output is
//! uploaded through the real S3 adapter: as one part after the whole unit,
//! then cut into parts uploaded while it is read (`encode_in_parts`, as the
//! store step does). Restore: the real decoder (`read_units`, decompression
//! and hash checks included) reads a unit of an archive of the same blocks
//! from S3 in ranges and writes it into a started snapshot through the
//! adapter, then completes it. Both are paced at the rate one unit is
//! allotted. Prints the achieved block requests per second and its ratio to
//! the allotted rate: each unit's efficiency. Then (unless `--two-tasks 0`)
//! two store tasks of four units share a scaled-down account budget through
//! rate leases, as the deployment's units do ([`within_budget`]), and it
//! prints the share of the budget they used, the requests throttled and the
//! units that failed.
//!
//! ```text
//! cargo run --release -p amistore-aws --features simulation --example unit_throughput -- \
//!     [--median-ms 60] [--p99-ms 250] [--rate 60] [--concurrency 32] [--gib 1] [--two-tasks 1]
//! ```
//!
//! `scripts/bench-aws.sh` runs it at several latencies.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amistore_aws::EbsLimits;
use amistore_aws::setup::{AwsPorts, AwsSettings, Overrides};
use amistore_aws::simulation::block_data;
use amistore_aws::simulation::{SimConfig, Simulation};
use amistore_core::Result;
use amistore_core::archive::decode::{Decoded, read_units};
use amistore_core::archive::encode::{BlockSource, encode_unit, write_archive};
use amistore_core::archive::index::ArchiveIndex;
use amistore_core::archive::plan::{ArchivePlan, DiskSource};
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::engine::budget::{RequestBudget, UnitOf, within_budget};
use amistore_core::engine::parts::{Cut, PartTarget, encode_in_parts, parts_per_unit};
use amistore_core::ids::{AccountId, SnapshotId, TaskId};
use amistore_core::image::{Architecture, Encryption, ImageMetadata};
use amistore_core::ports::SnapshotStore;
use amistore_core::ports::{ObjectReader, ObjectStore};
use amistore_core::storage::{BucketName, ObjectKey};
use amistore_core::task::TaskKind;
use amistore_local::task_store::SqliteTaskStore;

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

/// CPU seconds this process has used, and those of the simulation's own
/// threads among them (Linux: /proc, in clock ticks of 1/100 s).
fn cpu_seconds() -> (f64, f64) {
    fn ticks(stat: &str) -> Option<(String, f64)> {
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((name.to_owned(), (utime + stime) / 100.0))
    }
    let total = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |(_, t)| t);
    let sim = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|s| ticks(&s))
        .filter(|(name, _)| amistore_aws::simulation::THREAD_NAME.starts_with(name.as_str()))
        .map(|(_, t)| t)
        .sum();
    (total, sim)
}

/// vCPUs the unit kept busy between two [`cpu_seconds`] readings `secs` apart,
/// the simulation's threads left out.
fn vcpus(before: (f64, f64), after: (f64, f64), secs: f64) -> f64 {
    ((after.0 - before.0) - (after.1 - before.1)) / secs
}

/// Units of the modelled AMI (40 GiB written, 256 MiB units): the parts a
/// unit owns follow from it.
const MODEL_UNITS: u64 = 160;

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
        s3_first_byte: Duration::from_secs_f64(arg("--s3-first-byte-ms", 30.0) / 1000.0),
        s3_bytes_per_second: arg("--s3-mib-per-second", 80.0) * 1024.0 * 1024.0,
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
    // As the store step does: announce the unit's blocks, encode it, and
    // upload its parts to S3; first as one part after the whole unit (as
    // units were stored before), then cut into the parts a unit of a 100 GiB
    // AMI owns, uploaded while it is read.
    let unit = plan.units[0];
    let objects = ports.objects.clone();
    let bucket: BucketName = "archive".parse()?;
    let key: ObjectKey = "throughput/ami-0123456789abcdef0.bin".parse()?;
    let spool = tempfile::tempdir()?;
    let source = Blocks {
        store: images.as_ref(),
        snapshot: &snapshot,
    };
    let store_unit =
        |parts: u32| -> std::result::Result<(f64, f64, String), Box<dyn std::error::Error>> {
            let upload = objects.create_multipart(&bucket, &key, &Default::default(), &[])?;
            let target = PartTarget {
                objects: objects.as_ref(),
                bucket: &bucket,
                key: &key,
                upload: &upload,
                first_part: 1,
                parts,
            };
            let cut = Cut::for_unit(&plan, 0, parts)?;
            images.will_read(
                &snapshot,
                unit.first_block..unit.first_block + unit.block_count,
            );
            let before = sim.stats.blocks_served.load(Ordering::Relaxed);
            let cpu = cpu_seconds();
            let started = Instant::now();
            let (record, uploaded) = std::thread::scope(|s| {
                s.spawn(|| {
                    encode_in_parts(&target, cut, spool.path(), "unit", |out| {
                        encode_unit(&plan, 0, &source, 1, out, &mut |_| {}).map(|(_, r)| r)
                    })
                })
                .join()
                .expect("encoding thread")
            })?;
            let secs = started.elapsed().as_secs_f64();
            let vcpu = vcpus(cpu, cpu_seconds(), secs);
            objects.abort_multipart(&bucket, &key, &upload)?;
            let served = sim.stats.blocks_served.load(Ordering::Relaxed) - before;
            let achieved = served as f64 / secs;
            let line = format!(
                "store unit, {} part(s): {served} blocks ({} MiB, compressed to {} MiB and uploaded) in {secs:.2} s \
             at median {median} ms / p99 {p99} ms: {achieved:.1} requests/s of {rate} allotted; CPU {vcpu:.2} vCPU",
                uploaded.len(),
                record.decompressed_len >> 20,
                record.compressed_len >> 20
            );
            Ok((achieved / f64::from(rate), vcpu, line))
        };
    let (one_part_efficiency, _, line) = store_unit(1)?;
    println!("{line}");
    let (store_efficiency, store_vcpus, line) = store_unit(parts_per_unit(MODEL_UNITS))?;
    println!("{line}");

    // Restore: an archive of the same blocks, made here and put in S3, its
    // unit 0 read back with ranged GETs and decoded into the simulated
    // snapshot as the restore step does.
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
    objects.put_object(&bucket, &key, &archive)?;
    drop(archive);
    let info = objects
        .head_object(&bucket, &key)?
        .ok_or("the archive is not in S3")?;
    let reader = ObjectReader::new(objects.as_ref(), &bucket, &key, &info);
    let index = ArchiveIndex::open(&reader)?;
    // Into a new snapshot, as a restore's are (StartSnapshot, then
    // CompleteSnapshot once its blocks are written).
    let restored = images.start_snapshot(
        &account,
        gib << 30,
        &[],
        &Encryption::Unencrypted,
        "throughput-restore",
    )?;
    let before = sim.stats.blocks_written.load(Ordering::Relaxed);
    let cpu = cpu_seconds();
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            read_units(&index, &reader, 0..1, 1, |decoded| {
                if let Decoded::Data {
                    first_block, bytes, ..
                } = decoded
                {
                    images.write_blocks(&restored, first_block, &bytes)?;
                }
                Ok(())
            })
            .and_then(|()| images.finish_writes(&restored))
        })
        .join()
        .expect("decoding thread")
    })?;
    let secs = started.elapsed().as_secs_f64();
    let restore_vcpus = vcpus(cpu, cpu_seconds(), secs);
    let written = sim.stats.blocks_written.load(Ordering::Relaxed) - before;
    images.complete_snapshot(&restored, written)?;
    let achieved = written as f64 / secs;
    println!(
        "restore unit: {written} blocks read from S3 in ranges and written in {secs:.2} s at median {median} ms / p99 {p99} ms: \
         {achieved:.1} requests/s of {rate} allotted, {} throttled, {} bad writes; CPU {restore_vcpus:.2} vCPU",
        sim.stats.throttled.load(Ordering::Relaxed),
        sim.stats.bad_writes.load(Ordering::Relaxed)
    );
    drop(sim);
    let two = match arg("--two-tasks", 1.0) != 0.0 {
        true => Some(two_tasks(
            &runtime,
            &settings,
            median,
            p99,
            concurrency,
            rate,
        )?),
        false => None,
    };
    println!("unit CPU: store {store_vcpus:.2} vCPU, restore {restore_vcpus:.2} vCPU");
    println!("store unit efficiency, one part uploaded after reading: {one_part_efficiency:.2}");
    println!("store unit efficiency: {store_efficiency:.2}");
    println!("restore unit efficiency: {:.2}", achieved / f64::from(rate));
    if let Some(two) = two {
        println!("{two}");
    }
    Ok(())
}

/// Two store tasks of `UNITS` units each, every unit with its own adapter
/// (as each runs in its own Lambda), sharing an account budget of `BUDGET`
/// GetSnapshotBlock requests a second through rate leases in a task store;
/// the simulation enforces that budget as EBS enforces the account's. The
/// second task starts while the first runs. Reports the share of the budget
/// used while both ran, the requests the simulation throttled, and the units
/// that failed.
///
/// The budget is scaled down from EBS's 1,000 a second so that this machine's
/// two CPUs can compress what eight units read; the sharing is the same.
fn two_tasks(
    runtime: &tokio::runtime::Runtime,
    settings: &AwsSettings,
    median: f64,
    p99: f64,
    concurrency: usize,
    unit_cap: u32,
) -> std::result::Result<String, Box<dyn std::error::Error>> {
    const UNITS: usize = 4;
    const BUDGET: u32 = 200;
    const SECOND_STARTS_AFTER: Duration = Duration::from_secs(3);
    let snapshots: [SnapshotId; 2] = [
        "snap-0a0a0a0a0a0a0a0a0".parse()?,
        "snap-0b0b0b0b0b0b0b0b0".parse()?,
    ];
    let sim = Simulation::start(SimConfig {
        median_latency: Duration::from_secs_f64(median / 1000.0),
        p99_latency: Duration::from_secs_f64(p99 / 1000.0),
        per_account_rps: f64::from(BUDGET),
        snapshots: snapshots.iter().map(|s| (s.to_string(), 2)).collect(),
        ..SimConfig::default()
    })?;
    let mut settings = settings.clone();
    settings.ebs = EbsLimits {
        concurrency,
        requests_per_second: unit_cap,
        ..EbsLimits::default()
    };
    settings.overrides.endpoint_url = Some(sim.endpoint.clone());
    let account = settings.account.clone().ok_or("no account")?;
    let dir = tempfile::tempdir()?;
    let leases = SqliteTaskStore::open(&dir.path().join("leases.db"), None)?;
    let budget = RequestBudget {
        account_per_second: BUDGET,
        unit_per_second: unit_cap,
    };
    // Each task's plan, and one connection (adapter, pacer, pool) per unit.
    let mut units = Vec::new();
    for (t, snapshot) in snapshots.iter().enumerate() {
        let lister = runtime.block_on(AwsPorts::connect(&settings, runtime.handle().clone()))?;
        let images = lister.images.clone();
        let present = std::thread::scope(|s| {
            s.spawn(|| images.list_blocks(&account, snapshot))
                .join()
                .expect("listing thread")
        })?;
        let plan = ArchivePlan::new(
            ImageMetadata::minimal("two".parse()?, Architecture::X86_64, "/dev/xvda".parse()?),
            vec![DiskSource {
                device_name: "/dev/xvda".parse()?,
                snapshot_id: Some(snapshot.to_string()),
                volume_size: 2 << 30,
                present,
                tags: vec![],
            }],
            time::OffsetDateTime::now_utc(),
        )?;
        if plan.units.len() < UNITS {
            return Err("the snapshot has too few units".into());
        }
        let task = TaskId::fresh();
        for unit in 0..UNITS {
            let ports = runtime.block_on(AwsPorts::connect(&settings, runtime.handle().clone()))?;
            units.push((t, task.clone(), unit, plan.clone(), snapshot.clone(), ports));
        }
    }
    let served = || sim.stats.blocks_served.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut samples = vec![(Duration::ZERO, served())];
    let (results, first_end) = std::thread::scope(|s| {
        let running: Vec<_> = units
            .iter()
            .map(|(t, task, unit, plan, snapshot, ports)| {
                let (leases, account) = (&leases, &account);
                s.spawn(move || {
                    std::thread::sleep(SECOND_STARTS_AFTER * *t as u32);
                    let images = ports.images.as_ref();
                    let planned = &plan.units[*unit];
                    let result = within_budget(
                        budget,
                        leases,
                        images,
                        UnitOf {
                            account,
                            kind: TaskKind::Store,
                            task,
                            unit: *unit as u64,
                        },
                        || {
                            images.will_read(
                                snapshot,
                                planned.first_block..planned.first_block + planned.block_count,
                            );
                            let source = Blocks {
                                store: images,
                                snapshot,
                            };
                            encode_unit(plan, *unit, &source, 1, std::io::sink(), &mut |_| {})
                        },
                    );
                    (result.map(|_| ()), started.elapsed())
                })
            })
            .collect();
        // Sample what was served until the first unit ends.
        while running.iter().all(|r| !r.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            samples.push((started.elapsed(), served()));
        }
        let results: Vec<_> = running
            .into_iter()
            .map(|r| r.join().expect("unit thread"))
            .collect();
        let first_end = results.iter().map(|(_, at)| *at).min().unwrap_or_default();
        (results, first_end)
    });
    // While both ran: from the second task's start (and a renewal for the
    // first task's units to make room) to the first unit's end.
    let from = SECOND_STARTS_AFTER + Duration::from_secs(2);
    let at = |when: Duration| {
        samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= when)
            .map_or((Duration::ZERO, 0), |s| *s)
    };
    let ((t0, n0), (t1, n1)) = (at(from), at(first_end));
    let used = (n1 - n0) as f64 / (t1 - t0).as_secs_f64() / f64::from(BUDGET);
    let failed = results.iter().filter(|(r, _)| r.is_err()).count();
    for (r, _) in &results {
        if let Err(e) = r {
            eprintln!("a unit failed: {e}");
        }
    }
    let throttled = sim.stats.throttled.load(Ordering::Relaxed);
    println!(
        "two tasks of {UNITS} units, budget {BUDGET} requests/s (unit cap {unit_cap}): \
         {} blocks served over {:.1} s; {:.1} requests/s from {:.1} s to {:.1} s",
        served(),
        started.elapsed().as_secs_f64(),
        (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
        t0.as_secs_f64(),
        t1.as_secs_f64()
    );
    Ok(format!(
        "two tasks: account budget used {used:.2}, throttled requests {throttled}, failed units {failed}"
    ))
}
