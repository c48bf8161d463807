//! The simulated data plane with the real EBS adapter: what it serves is what
//! the adapter reads, its limits are enforced (and the SDK's retries get past
//! them), its latency is applied; and a unit's reads, announced with
//! `will_read`, stay in flight across frames without a request outside the
//! unit; units of two tasks share the account's budget through rate leases;
//! and the S3 adapter's multipart uploads, HEADs and ranged GETs are served
//! at the configured bandwidth.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amistore_aws::EbsLimits;
use amistore_aws::setup::{AwsPorts, AwsSettings, Overrides};
use amistore_aws::simulation::{BlockKind, SimConfig, Simulation, block_data, block_kind};
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::engine::budget::{RequestBudget, UnitOf, within_budget};
use amistore_core::engine::parts::{Cut, PartTarget, encode_in_parts};
use amistore_core::ids::{AccountId, SnapshotId, TaskId};
use amistore_core::image::Encryption;
use amistore_core::ports::{ObjectStore, RateLease, SnapshotStore, TaskStore};
use amistore_core::task::TaskKind;
use amistore_local::task_store::SqliteTaskStore;

struct World {
    sim: Simulation,
    ports: AwsPorts,
    _runtime: tokio::runtime::Runtime,
    snapshot: SnapshotId,
    account: AccountId,
}

fn world(config: SimConfig, limits: EbsLimits) -> World {
    let snapshot: SnapshotId = "snap-0123456789abcdef0".parse().unwrap();
    let sim = Simulation::start(SimConfig {
        snapshots: vec![(snapshot.to_string(), 1)],
        ..config
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let account: AccountId = "123456789012".parse().unwrap();
    let ports = connect(&runtime, &sim, &account, limits);
    World {
        sim,
        ports,
        _runtime: runtime,
        snapshot,
        account,
    }
}

/// The AWS adapters of `account`, pointed at `sim`, pacing blocks at `limits`.
fn connect(
    runtime: &tokio::runtime::Runtime,
    sim: &Simulation,
    account: &AccountId,
    limits: EbsLimits,
) -> AwsPorts {
    let mut settings = AwsSettings::new("unused", "unused-work".parse().unwrap());
    settings.account = Some(account.clone());
    settings.ebs = limits;
    settings.overrides = Overrides {
        endpoint_url: Some(sim.endpoint.clone()),
        region: Some("us-east-1".into()),
        credentials: Some(("sim".into(), "sim".into())),
        audit: None,
    };
    runtime
        .block_on(AwsPorts::connect(&settings, runtime.handle().clone()))
        .unwrap()
}

fn fast() -> SimConfig {
    SimConfig {
        median_latency: Duration::from_millis(2),
        p99_latency: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

#[test]
fn announced_reads_are_served_ahead_exactly_and_correctly() {
    let w = world(
        fast(),
        EbsLimits {
            concurrency: 32,
            requests_per_second: 1000,
            ..EbsLimits::default()
        },
    );
    let images = w.ports.images.clone();
    let present = images.list_blocks(&w.account, &w.snapshot).unwrap();
    assert_eq!(present.present_count(), 2048 * 3 / 4, "a quarter holes");
    // A unit of blocks 64..320 (holes from 256), read a frame at a time.
    images.will_read(&w.snapshot, 64..320);
    let mut frame = vec![0u8; 16 * BLOCK_SIZE as usize];
    for first in (64..320).step_by(16) {
        images.read_blocks(&w.snapshot, first, &mut frame).unwrap();
        for (n, block) in frame.chunks(BLOCK_SIZE as usize).enumerate() {
            assert!(
                block == block_data(first + n as u64),
                "block {} differs",
                first + n as u64
            );
        }
    }
    let wanted = (64..320)
        .filter(|&i| block_kind(i) != BlockKind::Hole)
        .count() as u64;
    assert_eq!(
        w.sim.stats.blocks_served.load(Ordering::Relaxed),
        wanted,
        "every present block of the unit once, and none outside it"
    );
}

#[test]
fn throttled_requests_are_retried_and_the_limit_holds() {
    // The adapter asks 400/s of a snapshot that allows 100/s.
    let w = world(
        SimConfig {
            per_snapshot_rps: 100.0,
            ..fast()
        },
        EbsLimits {
            concurrency: 32,
            requests_per_second: 400,
            ..EbsLimits::default()
        },
    );
    let images = w.ports.images.clone();
    images.list_blocks(&w.account, &w.snapshot).unwrap();
    images.will_read(&w.snapshot, 64..192);
    let started = Instant::now();
    let mut frame = vec![0u8; 16 * BLOCK_SIZE as usize];
    for first in (64..192).step_by(16) {
        images.read_blocks(&w.snapshot, first, &mut frame).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let served = w.sim.stats.blocks_served.load(Ordering::Relaxed);
    assert_eq!(served, 128);
    assert!(
        w.sim.stats.throttled.load(Ordering::Relaxed) > 0,
        "the limit was reached"
    );
    // 128 blocks at 100/s (after a burst of 10): at least about 1.1 s.
    assert!(
        secs > 1.0,
        "{served} blocks in {secs:.2} s: the limit did not hold"
    );
}

#[test]
fn latency_is_applied() {
    let w = world(
        SimConfig {
            median_latency: Duration::from_millis(200),
            p99_latency: Duration::from_millis(201),
            ..SimConfig::default()
        },
        EbsLimits::default(),
    );
    let images = w.ports.images.clone();
    let started = Instant::now();
    images.list_blocks(&w.account, &w.snapshot).unwrap();
    // DescribeSnapshots, then ListSnapshotBlocks: two round trips.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn writes_land_before_finish_writes_returns_and_bad_blocks_are_refused() {
    let w = world(
        fast(),
        EbsLimits {
            concurrency: 8,
            requests_per_second: 1000,
            ..EbsLimits::default()
        },
    );
    let images = w.ports.images.clone();
    let frame: Vec<u8> = (64..80).flat_map(block_data).collect();
    for _ in 0..4 {
        images.write_blocks(&w.snapshot, 64, &frame).unwrap();
    }
    images.finish_writes(&w.snapshot).unwrap();
    assert_eq!(
        w.sim.stats.blocks_written.load(Ordering::Relaxed),
        64,
        "every write landed"
    );
    assert_eq!(w.sim.stats.bad_writes.load(Ordering::Relaxed), 0);

    // The simulation checks what it is sent: a block whose checksum is not
    // its data's is refused as EBS refuses it.
    let addr = w.sim.endpoint.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let body = vec![1u8; BLOCK_SIZE as usize];
    let head = format!(
        "PUT /snapshots/{}/blocks/0 HTTP/1.1\r\nHost: {addr}\r\nx-amz-Checksum: AAAA\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        w.snapshot,
        body.len()
    );
    use std::io::{Read, Write};
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("ValidationException"),
        "{answer}"
    );
    assert_eq!(w.sim.stats.bad_writes.load(Ordering::Relaxed), 1);
}

/// Reads blocks `range` (all present) of `snapshot` as a unit does.
fn read_unit(images: &dyn SnapshotStore, snapshot: &SnapshotId, range: std::ops::Range<u64>) {
    images.will_read(snapshot, range.clone());
    let mut frame = vec![0u8; 16 * BLOCK_SIZE as usize];
    for first in range.step_by(16) {
        images.read_blocks(snapshot, first, &mut frame).unwrap();
    }
}

#[test]
fn units_of_two_tasks_share_the_account_budget() {
    // Four units (two tasks of two), each able to make 100 requests a second,
    // against an account that allows 100: each pacing alone would ask for 400
    // between them. Started together, they join the budget at once.
    let w = world(
        SimConfig {
            per_account_rps: 100.0,
            ..fast()
        },
        EbsLimits::default(),
    );
    let unit_cap = 100;
    let limits = EbsLimits {
        concurrency: 16,
        requests_per_second: unit_cap,
        ..EbsLimits::default()
    };
    w.ports.images.list_blocks(&w.account, &w.snapshot).unwrap();
    // Present runs of 32 blocks, one per unit.
    let ranges = [64..96, 320..352, 576..608, 832..864];
    let tasks = [TaskId::fresh(), TaskId::fresh()];
    let dir = tempfile::tempdir().unwrap();
    let leases = SqliteTaskStore::open(&dir.path().join("leases.db"), None).unwrap();
    let budget = RequestBudget {
        account_per_second: 100,
        unit_per_second: unit_cap,
    };
    let units: Vec<_> = ranges
        .iter()
        .map(|_| connect(&w._runtime, &w.sim, &w.account, limits))
        .collect();
    let start = std::sync::Barrier::new(ranges.len());
    std::thread::scope(|s| {
        for (n, (range, ports)) in ranges.iter().zip(&units).enumerate() {
            let (leases, w, task, start) = (&leases, &w, &tasks[n / 2], &start);
            s.spawn(move || {
                let images = ports.images.as_ref();
                start.wait();
                let unit = UnitOf {
                    account: &w.account,
                    kind: TaskKind::Store,
                    task,
                    unit: n as u64,
                };
                within_budget(budget, leases, images, unit, || {
                    read_unit(images, &w.snapshot, range.clone());
                    Ok(())
                })
                .unwrap();
            });
        }
    });
    assert_eq!(
        w.sim.stats.throttled.load(Ordering::Relaxed),
        0,
        "sharing the budget, no request is throttled"
    );
    assert_eq!(
        w.sim.stats.blocks_served.load(Ordering::Relaxed),
        4 * 32,
        "every block of every unit"
    );
    // Every unit withdrew its lease.
    let probe = RateLease {
        holder: "probe".into(),
        task: TaskId::fresh(),
        rate: 0,
        expires_ms: i64::MAX,
    };
    assert_eq!(
        leases
            .renew_lease(&w.account, TaskKind::Store, &probe, 0)
            .unwrap(),
        vec![probe]
    );
}

#[test]
fn s3_parts_heads_and_ranges_are_served_at_the_connection_bandwidth() {
    // 50 MiB/s, so the 12 MiB below take at least 0.24 s to send.
    let w = world(
        SimConfig {
            s3_first_byte: Duration::from_millis(1),
            s3_bytes_per_second: 50.0 * 1024.0 * 1024.0,
            ..fast()
        },
        EbsLimits::default(),
    );
    let objects = w.ports.objects.as_ref();
    let bucket = "archive".parse().unwrap();
    let key = "p/ami-0123456789abcdef0.bin".parse().unwrap();
    let upload = objects
        .create_multipart(&bucket, &key, &Default::default(), &[])
        .unwrap();
    let data: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 253) as u8).collect();
    let target = PartTarget {
        objects,
        bucket: &bucket,
        key: &key,
        upload: &upload,
        first_part: 1,
        parts: 8,
    };
    let cut = Cut {
        piece: 5 << 20,
        min: 5 << 20,
    };
    let spool = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let ((), parts) = encode_in_parts(&target, cut, spool.path(), "unit", |out| {
        out.write_all(&data).unwrap();
        Ok(())
    })
    .unwrap();
    let took = started.elapsed();
    // 5 MiB, then 7 MiB (a 2 MiB tail joins the piece before it).
    assert_eq!(parts.len(), 2);
    assert_eq!(w.sim.stats.parts_uploaded.load(Ordering::Relaxed), 2);
    assert!(took >= Duration::from_millis(240), "{took:?}");
    objects
        .complete_multipart(&bucket, &key, &upload, &parts)
        .unwrap();
    let info = objects.head_object(&bucket, &key).unwrap().unwrap();
    assert_eq!(info.size, data.len() as u64);
    let middle = objects
        .get_range(&bucket, &key, 5_000_000..5_300_000, Some(&info.etag))
        .unwrap();
    assert!(middle == data[5_000_000..5_300_000]);
    assert!(
        objects
            .head_object(&bucket, &"absent".parse().unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn started_snapshots_complete_only_with_the_blocks_written() {
    let w = world(fast(), EbsLimits::default());
    let images = w.ports.images.as_ref();
    let started = images
        .start_snapshot(
            &w.account,
            1 << 30,
            &[],
            &Encryption::Unencrypted,
            "token-1",
        )
        .unwrap();
    let frame: Vec<u8> = (64..80).flat_map(block_data).collect();
    images.write_blocks(&started, 64, &frame).unwrap();
    images.write_blocks(&started, 64, &frame).unwrap(); // the same blocks again
    images.finish_writes(&started).unwrap();
    assert!(
        images.complete_snapshot(&started, 15).is_err(),
        "EBS answers `error` to a wrong changed-block count"
    );
    images.complete_snapshot(&started, 16).unwrap();
}
