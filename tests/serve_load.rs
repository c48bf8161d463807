//! A loopback load test of `amistore serve` (the real binary): 32 signed
//! clients at once, for a bounded number of requests and time, mixing
//! describes, dry runs, creates of store tasks for small images and cancels.
//! Every answer must be well-formed XML and either a success or one of the
//! errors these requests are documented to meet; afterwards every task ends,
//! the quota counters are back to 0, and the server logged no panic. The
//! figures (requests, p50/p99 latency, errors by code) are printed, never
//! asserted on.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amistore_api::client::{ClientCredentials, Endpoint, call};
use amistore_core::ids::AccountId;
use amistore_core::task::TaskKind;
use amistore_local::embedded::{LocalEngine, LocalOptions};
use support::*;

const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 120;
const TIME_LIMIT: Duration = Duration::from_secs(20);
const IMAGES: usize = 8;

/// Errors a request of the mix may meet in normal operation, by action.
fn documented(action: &str, code: &str) -> bool {
    match action {
        // Another client's store of the image into the bucket is in
        // progress, or the account's quota is in use.
        "CreateStoreImageTask" => [
            "InvalidParameterValue",
            "ResourceLimitExceeded",
            "DryRunOperation",
        ]
        .contains(&code),
        // Nothing to cancel, or the task is completing.
        "CancelStoreImageTask" => code == "IncorrectState",
        _ => false,
    }
}

fn key() -> ClientCredentials {
    ClientCredentials {
        access_key: "test".into(),
        secret: "test".into(),
        session_token: None,
    }
}

fn world(dir: &Path) -> Vec<String> {
    let data = dir.join("data");
    let images = (0..IMAGES)
        .map(|i| {
            let disk = dir.join(format!("disk{i}.raw"));
            let f = std::fs::File::create(&disk).unwrap();
            f.set_len(8 * MIB).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &bytes(MIB, i as u64 + 1), 0).unwrap();
            ok_in(
                &[
                    "image",
                    "import",
                    "--name",
                    &format!("load {i}"),
                    "--disk",
                    &format!("/dev/xvda={}", s(&disk)),
                ],
                Some(&data),
            )
            .trim()
            .to_owned()
        })
        .collect();
    // A bucket per client: an AMI is stored once per bucket.
    for client in 0..CLIENTS {
        ok_in(
            &["bucket", "create", &format!("load-{client}")],
            Some(&data),
        );
    }
    images
}

/// One request of the mix, chosen by `n`.
fn request(n: usize, client: usize, images: &[String]) -> (&'static str, Vec<(String, String)>) {
    // The create and the cancel of one round of ten name the same image.
    let image = images[(n / 10 + client) % images.len()].clone();
    let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    match n % 10 {
        0..=3 => ("DescribeImages", vec![]),
        4 => (
            "DescribeImages",
            p(&[("Filter.1.Name", "name"), ("Filter.1.Value.1", "load *")]),
        ),
        5 | 6 => ("DescribeStoreImageTasks", vec![]),
        7 => (
            "CreateStoreImageTask",
            p(&[
                ("ImageId", &image),
                ("Bucket", "load-0/dry"),
                ("DryRun", "true"),
            ]),
        ),
        8 => (
            "CreateStoreImageTask",
            p(&[
                ("ImageId", &image),
                ("Bucket", &format!("load-{client}/p{}", n % 3)),
            ]),
        ),
        _ => (
            "CancelStoreImageTask",
            p(&[("ImageId", &image), ("Bucket", &format!("load-{client}"))]),
        ),
    }
}

/// Whether another, completed store wrote the same object (a failed task's
/// key may hold a later task's archive).
fn other_task_completed(local: &LocalEngine, failed: &amistore_core::task::Task) -> bool {
    let now = amistore_core::engine::now_ms();
    local
        .engine
        .tasks
        .list(&failed.account, TaskKind::Store, now)
        .unwrap()
        .iter()
        .any(|t| {
            t.id != failed.id
                && t.state == amistore_core::task::TaskState::Completed
                && t.bucket == failed.bucket
                && t.key == failed.key
        })
}

#[test]
fn thirty_two_clients_get_well_formed_answers_and_leave_no_quota_behind() {
    let dir = tempfile::tempdir().unwrap();
    let images = world(dir.path());
    let data = dir.path().join("data");
    let server = Serve::start(&data, &["--maintenance-interval", "2"]);
    let endpoint = Endpoint::parse(&format!("http://{}", server.host())).unwrap();
    let latencies = Mutex::new(Vec::new());
    let errors: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..CLIENTS {
            let (endpoint, images, latencies, errors) = (&endpoint, &images, &latencies, &errors);
            s.spawn(move || {
                for n in 0..REQUESTS_PER_CLIENT {
                    if started.elapsed() > TIME_LIMIT {
                        break;
                    }
                    let (action, params) = request(n, client, images);
                    let sent = Instant::now();
                    let answer = call(endpoint, &key(), "us-east-1", action, &params);
                    latencies.lock().unwrap().push(sent.elapsed());
                    match answer {
                        Ok(xml) => {
                            roxmltree::Document::parse(&xml).unwrap_or_else(|e| {
                                panic!("{action}: the answer is not well-formed XML ({e}): {xml}")
                            });
                        }
                        Err(e) => {
                            assert!(
                                documented(action, &e.code),
                                "{action} {params:?}: undocumented error {e}"
                            );
                            *errors
                                .lock()
                                .unwrap()
                                .entry(format!("{action}: {}", e.code))
                                .or_default() += 1;
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();

    // Every task ends (the in-process executions finish; maintenance runs).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let xml = call(
            &endpoint,
            &key(),
            "us-east-1",
            "DescribeStoreImageTasks",
            &[],
        )
        .unwrap();
        if !xml.contains("<storeTaskState>InProgress</storeTaskState>") {
            break;
        }
        assert!(Instant::now() < deadline, "tasks still in progress: {xml}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = server.stop();
    assert!(!log.contains("panicked"), "the server panicked");
    for line in log_events(&log, "request") {
        assert!(
            line["status"].as_u64().unwrap() < 500,
            "a request failed on the server's side: {line}"
        );
    }

    // No quota leaked: the counters are back to 0, and no task is left.
    let local = LocalEngine::open(&data, LocalOptions::default(), None).unwrap();
    let me = AccountId::local_default();
    for kind in [TaskKind::Store, TaskKind::Restore] {
        assert_eq!(local.engine.tasks.in_progress_gib(&me, kind).unwrap(), 0);
    }
    assert!(local.engine.tasks.in_progress().unwrap().is_empty());
    assert!(
        local
            .engine
            .tasks
            .counters()
            .unwrap()
            .iter()
            .all(|(_, _, gib)| *gib == 0),
        "{:?}",
        local.engine.tasks.counters()
    );

    // Every store ended consistently: a Completed one has its object, a
    // Failed (cancelled) one has none.
    let now = amistore_core::engine::now_ms();
    for task in local.engine.tasks.list(&me, TaskKind::Store, now).unwrap() {
        let object = local
            .engine
            .objects
            .head_object(&task.bucket, &task.key)
            .unwrap();
        match task.state {
            amistore_core::task::TaskState::Completed => {
                assert!(
                    object.is_some(),
                    "a completed store lost its object: {task:?}"
                )
            }
            _ => assert!(
                object.is_none() || other_task_completed(&local, &task),
                "a failed store left an object: {task:?}"
            ),
        }
    }

    let mut sorted = latencies.into_inner().unwrap();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    let ended = |state: &str| {
        log_events(&log, "task")
            .iter()
            .filter(|e| e["state"] == state)
            .count()
    };
    let (stored, failed) = (ended("Completed"), ended("Failed"));
    println!(
        "load: {} requests from {CLIENTS} clients in {elapsed:.1?} ({:.0}/s); latency p50 {:.1?}, \
         p99 {:.1?}, max {:.1?}; {stored} stores completed, {failed} failed (cancelled); documented errors {:?}; 0 quota leaked, \
         0 panics",
        sorted.len(),
        sorted.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        sorted.last().unwrap(),
        errors.into_inner().unwrap()
    );
}
