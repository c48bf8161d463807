//! The engine end to end over the local adapters, driven through the library
//! exactly as the CLI and the server drive it: intake, then the store and
//! restore state machines in the in-process runner. Faults are injected into
//! each port to show that failures leave nothing half-done.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use amistore_core::Error;
use amistore_core::archive::ArchiveIndex;
use amistore_core::engine::FailedBy;
use amistore_core::engine::intake::{RestoreRequest, StoreRequest};
use amistore_core::engine::metadata;
use amistore_core::engine::restore::snapshot_token;
use amistore_core::engine::store::StoredUnit;
use amistore_core::ids::{ImageId, ResourceState, SnapshotId};
use amistore_core::image::{Encryption, Tag};
use amistore_core::ports::{ImageCatalog, ObjectStore};
use amistore_core::storage::ObjectKey;
use amistore_core::task::{Task, TaskKind, TaskState};
use support::*;

fn store_request(w: &World, image: &ImageId, path: &str) -> StoreRequest {
    StoreRequest {
        image_id: image.clone(),
        bucket: format!("{}{path}", w.bucket).parse().unwrap(),
        object_tags: vec!["team=storage".parse().unwrap()],
    }
}

fn store(w: &World, image: &ImageId) -> Task {
    let task = w
        .local
        .engine
        .create_store_task(&me(), &store_request(w, image, "/p1/p2"))
        .unwrap();
    w.local.wait(&task.id).unwrap()
}

fn restore_request(w: &World, key: &ObjectKey, name: &str) -> RestoreRequest {
    RestoreRequest {
        bucket: w.bucket.clone(),
        key: key.clone(),
        name: Some(name.parse().unwrap()),
        image_tags: vec![
            "restored=yes".parse().unwrap(),
            "Name=copy".parse().unwrap(),
        ],
        snapshot_tags: vec!["snap=1".parse().unwrap()],
    }
}

fn restore(w: &World, key: &ObjectKey, name: &str) -> Task {
    let task = w
        .local
        .engine
        .create_restore_task(&me(), &restore_request(w, key, name))
        .unwrap();
    let image = task.image_id.clone().unwrap();
    let pending = w.local.library.describe_image(&me(), &image).unwrap();
    assert!(
        pending.state == ResourceState::Pending || pending.state == ResourceState::Available,
        "the image exists from the start"
    );
    w.local.wait(&task.id).unwrap()
}

fn tags(list: &[Tag]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|t| format!("{}={}", t.key(), t.value()))
        .collect();
    v.sort();
    v
}

fn assert_clean_failure(w: &World, task: &Task, needle: &str) {
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let reason = task.failure_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(needle),
        "reason {reason:?} should mention {needle:?}"
    );
    assert_eq!(w.in_progress_gib(task.kind), 0, "quota released");
    if task.kind == TaskKind::Store {
        assert_eq!(
            w.local.buckets.head_object(&w.bucket, &task.key).unwrap(),
            None,
            "no object"
        );
        assert_eq!(w.uploads(), 0, "no staged parts");
    }
    assert_eq!(task.progress_percent(), task.progress_percent().min(99));
}

#[test]
fn a_store_then_a_restore_gives_back_every_block_with_metadata_and_tags() {
    let w = world();
    let (image, disks) = w.image("round trip");
    let task = store(&w, &image);
    assert_eq!(
        task.state,
        TaskState::Completed,
        "{:?}",
        task.failure_reason
    );
    assert_eq!(task.progress_percent(), 100);
    assert!(task.units_total >= 4, "small units make several parts");
    assert_eq!(task.units_done, task.units_total);
    assert_eq!(task.key.as_str(), format!("p1/p2/{image}.bin"));
    assert_eq!(w.in_progress_gib(TaskKind::Store), 0);

    // The object: S3 metadata, tags, and an archive whose manifest keeps the
    // AMI's metadata and tags.
    let info = w
        .local
        .buckets
        .head_object(&w.bucket, &task.key)
        .unwrap()
        .unwrap();
    assert_eq!(info.metadata[metadata::AMI_NAME], "round trip");
    assert_eq!(info.metadata[metadata::AMI_DESCRIPTION], "engine test");
    assert_eq!(info.metadata[metadata::AMI_OWNER_ACCOUNT], me().as_str());
    for k in [metadata::AMI_REGISTRATION_DATE, metadata::AMI_STORE_DATE] {
        assert!(info.metadata[k].ends_with('Z'), "{k}: {}", info.metadata[k]);
    }
    assert_eq!(tags(&info.tags), ["team=storage"]);
    let file = w.local.buckets.open_object(&w.bucket, &task.key).unwrap();
    let index = ArchiveIndex::open(&file).unwrap();
    let m = index.manifest();
    assert_eq!(m.image.source_image_id.as_deref(), Some(image.as_str()));
    assert_eq!(tags(&m.image.tags), ["Name=source"]);
    assert_eq!(m.units.len() as u64, task.units_total);
    // Units of random data were cut into several parts, uploaded while they
    // were encoded, each unit in its own run of part numbers.
    let parts: Vec<Vec<u32>> = w
        .local
        .engine
        .tasks
        .units(&task.id)
        .unwrap()
        .iter()
        .map(|(_, json)| {
            let stored: StoredUnit = serde_json::from_str(json).unwrap();
            stored.parts.iter().map(|p| p.part_number).collect()
        })
        .collect();
    assert!(parts.iter().any(|p| p.len() > 1), "{parts:?}");
    assert!(
        parts.iter().flatten().is_sorted() && parts.iter().all(|p| !p.is_empty()),
        "{parts:?}"
    );

    // Restore: a new id, the requested name, merged tags, identical disks.
    let r = restore(&w, &task.key, "restored copy");
    assert_eq!(r.state, TaskState::Completed, "{:?}", r.failure_reason);
    let new = r.image_id.unwrap();
    assert_ne!(new, image);
    let restored = w.local.library.describe_image(&me(), &new).unwrap();
    assert_eq!(restored.state, ResourceState::Available);
    assert_eq!(restored.metadata.name.as_str(), "restored copy");
    assert_eq!(
        restored.metadata.description.as_deref(),
        Some("engine test")
    );
    assert_eq!(tags(&restored.metadata.tags), ["Name=copy", "restored=yes"]);
    let source = w.local.library.describe_image(&me(), &image).unwrap();
    assert_eq!(
        restored.metadata.block_device_mappings,
        source.metadata.block_device_mappings
    );
    assert_eq!(w.in_progress_gib(TaskKind::Restore), 0);
    for (snap, original) in restored.snapshots.iter().zip(&disks) {
        assert_eq!(snap.state, ResourceState::Available);
        assert_eq!(tags(&snap.tags), ["snap=1"]);
        let path = w.local.library.snapshot_path(&snap.snapshot_id);
        assert_eq!(fs::read(&path).unwrap(), fs::read(original).unwrap());
        assert_eq!(
            layout(&path),
            layout(original),
            "absent blocks stay absent, zeros stay present"
        );
    }
    // Its work objects are gone.
    let left: Vec<_> = fs::read_dir(w.dir.path().join("data/work/amistore-work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_seed_quota_example_holds_and_concurrent_requests_never_pass_the_limit() {
    // Huge sparse volumes cost nothing to store, so the seed's real sizes are used.
    let w = world();
    let sized = |name: &str, gib: u64| {
        let path = disk(w.dir.path(), name, gib * 2048, &[0..1]);
        let spec = amistore_core::image::ImageSpec {
            name: name.parse().unwrap(),
            description: None,
            architecture: amistore_core::image::Architecture::X86_64,
            boot_mode: None,
            root_device_name: None,
            tags: vec![],
        };
        w.local
            .library
            .import(&me(), &spec, &[("/dev/xvda".parse().unwrap(), path)])
            .unwrap()
            .image_id
    };
    let request = |image: &ImageId| -> Result<Task, Error> {
        w.local
            .engine
            .create_store_task(&me(), &store_request(&w, image, ""))
    };
    let finish_all = |tasks: &[&Task]| {
        for t in tasks {
            assert_eq!(w.local.wait(&t.id).unwrap().state, TaskState::Completed);
        }
        assert_eq!(
            w.in_progress_gib(TaskKind::Store),
            0,
            "counters return to zero"
        );
    };

    // EC2's example: with 200 and 400 GiB in progress, another request is
    // accepted (600 < 1,200); a single 1,200 GiB task in progress blocks new
    // ones. Tasks wait in their plan step while the gate is held.
    let gate = w.faults.hold("list_blocks");
    let a = request(&sized("a200", 200)).unwrap();
    let b = request(&sized("b400", 400)).unwrap();
    let c = request(&sized("c1300", 1300)).expect("600 GiB < 1,200 in progress: admitted");
    assert_eq!(w.in_progress_gib(TaskKind::Store), 1900);
    let d = sized("d001", 1);
    assert!(matches!(request(&d), Err(Error::LimitExceeded(_))));
    drop(gate);
    finish_all(&[&a, &b, &c]);

    let gate = w.faults.hold("list_blocks");
    let e = request(&sized("e1200", 1200)).expect("a lone 1,200 GiB task is admitted");
    let err = request(&d).unwrap_err();
    assert!(err.to_string().contains("1200 GiB"), "{err}");
    drop(gate);
    finish_all(&[&e]);
    finish_all(&[&request(&d).unwrap()]);

    // 20 requests at once, 100 GiB each, while none can finish: admitted at
    // 0, 100, … 1,100 GiB in progress, never at 1,200 or more.
    let images: Vec<ImageId> = (0..20).map(|i| sized(&format!("par{i:02}"), 100)).collect();
    let gate = w.faults.hold("list_blocks");
    let results: Vec<Result<Task, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = images.iter().map(|i| s.spawn(move || request(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admitted: Vec<&Task> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, Error::LimitExceeded(_)), "{e}");
        }
    }
    assert_eq!(admitted.len(), 12);
    assert_eq!(w.in_progress_gib(TaskKind::Store), 1200);
    drop(gate);
    finish_all(&admitted);
}

#[test]
fn transient_failures_in_each_store_port_are_retried_and_units_count_once() {
    for (method, nth) in [
        ("read_blocks", vec![2, 3]),
        ("upload_part", vec![1]),
        ("record_unit", vec![2]),
        ("complete_multipart", vec![1]),
        ("list_blocks", vec![1]),
        ("work.put_object", vec![1]),
        ("finish", vec![1]),
    ] {
        let w = world();
        let (image, _) = w.image("retried");
        w.faults.fail(method, &nth, transient);
        let task = store(&w, &image);
        assert_eq!(
            task.state,
            TaskState::Completed,
            "{method}: {:?}",
            task.failure_reason
        );
        assert_eq!(
            task.units_done, task.units_total,
            "{method}: each unit counted once"
        );
        assert!(w.faults.calls(method) > nth.len(), "{method} was retried");
        let file = w.local.buckets.open_object(&w.bucket, &task.key).unwrap();
        let index = ArchiveIndex::open(&file).unwrap();
        amistore_core::archive::read_units(
            &index,
            &file,
            0..index.manifest().units.len(),
            1,
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(w.uploads(), 0);
        assert_eq!(w.in_progress_gib(TaskKind::Store), 0);
    }
}

#[test]
fn permanent_failures_in_each_store_port_fail_the_task_cleanly() {
    for method in [
        "read_blocks",
        "upload_part",
        "record_unit",
        "complete_multipart",
        "list_blocks",
        "describe_image",
        "work.put_object",
        "set_units_total",
    ] {
        let w = world();
        let (image, _) = w.image("doomed");
        // Intake's own calls pass; the workflow's fail.
        let from = if method == "describe_image" { 2 } else { 1 };
        w.faults
            .fail(method, &(from..100).collect::<Vec<_>>(), permanent);
        let task = store(&w, &image);
        assert_clean_failure(&w, &task, &format!("injected failure of {method}"));
    }
    // Retryable failures that never stop are given up on, and fail cleanly too.
    let w = world();
    let (image, _) = w.image("flaky");
    w.faults
        .fail("read_blocks", &(1..1000).collect::<Vec<_>>(), transient);
    let task = store(&w, &image);
    assert_clean_failure(&w, &task, "read_blocks");
}

#[test]
fn intake_failures_after_admission_release_the_quota() {
    for method in ["create_multipart", "set_upload"] {
        let w = world();
        let (image, _) = w.image("intake");
        w.faults.fail(method, &[1], permanent);
        let err = w
            .local
            .engine
            .create_store_task(&me(), &store_request(&w, &image, ""))
            .unwrap_err();
        assert!(err.to_string().contains(method), "{err}");
        let tasks = w
            .local
            .engine
            .tasks
            .list(&me(), TaskKind::Store, amistore_core::engine::now_ms())
            .unwrap();
        assert_eq!(tasks.len(), 1);
        assert_clean_failure(&w, &tasks[0], method);
    }
}

#[test]
fn a_task_that_died_before_recording_its_upload_still_has_it_aborted() {
    let w = world();
    let (image, _) = w.image("crashed early");
    let key: ObjectKey = format!("{image}.bin").parse().unwrap();
    // What intake did before the crash: admission, then CreateMultipartUpload.
    let task = Task::start(
        TaskKind::Store,
        me(),
        Some(image),
        w.bucket.clone(),
        key.clone(),
        1,
        0,
    );
    w.local.engine.tasks.admit(&task, 600).unwrap();
    w.local
        .engine
        .objects
        .create_multipart(&w.bucket, &key, &Default::default(), &[])
        .unwrap();
    assert_eq!(w.uploads(), 1);
    w.local
        .engine
        .fail_store(&task.id, "interrupted", FailedBy::Recovery)
        .unwrap();
    assert_clean_failure(&w, &w.task(&task.id), "interrupted");
}

/// What a restore's intake did before it died: admission, then StartSnapshot
/// for `disks` disks (4 blocks each), but no RegisterImage.
fn restore_that_died_before_registering(w: &World, disks: usize) -> (Task, Vec<SnapshotId>) {
    let task = Task::start(
        TaskKind::Restore,
        me(),
        None,
        w.bucket.clone(),
        "crashed.bin".parse().unwrap(),
        disks as u64,
        0,
    );
    w.local.engine.tasks.admit(&task, 300).unwrap();
    let started = (0..disks)
        .map(|disk| {
            w.local
                .engine
                .snapshots
                .start_snapshot(
                    &me(),
                    CRASHED_DISK,
                    &[],
                    &Encryption::Unencrypted,
                    &snapshot_token(&task.id, disk),
                )
                .unwrap()
        })
        .collect();
    (task, started)
}

const CRASHED_DISK: u64 = 4 * amistore_core::blocks::BLOCK_SIZE;

#[test]
fn a_restore_that_died_before_registering_its_image_has_its_snapshots_deleted() {
    let w = world();
    let snapshots = &w.local.engine.snapshots;
    let (task, _) = restore_that_died_before_registering(&w, 2);
    let bystander = snapshots
        .start_snapshot(
            &me(),
            CRASHED_DISK,
            &[],
            &Encryption::Unencrypted,
            "another-restore-disk0",
        )
        .unwrap();

    // A transient error leaves the task to be failed again later.
    w.faults.fail("delete_snapshot", &[1], transient);
    w.local
        .engine
        .fail_restore(&task.id, "interrupted", FailedBy::Recovery)
        .expect_err("a transient error is retried");
    assert_eq!(w.task(&task.id).state, TaskState::InProgress);
    w.local
        .engine
        .fail_restore(&task.id, "interrupted", FailedBy::Recovery)
        .unwrap();
    assert_clean_failure(&w, &w.task(&task.id), "interrupted");
    for disk in 0..2 {
        let token = snapshot_token(&task.id, disk);
        assert_eq!(
            snapshots.find_snapshot_by_token(&me(), &token).unwrap(),
            None,
            "disk {disk}'s snapshot is deleted"
        );
    }
    assert_eq!(
        snapshots
            .find_snapshot_by_token(&me(), "another-restore-disk0")
            .unwrap(),
        Some(bystander),
        "another task's snapshot is left alone"
    );
}

#[test]
fn a_restore_whose_snapshots_cannot_be_deleted_still_fails_and_frees_its_quota() {
    let w = world();
    let (task, started) = restore_that_died_before_registering(&w, 1);
    let token = snapshot_token(&task.id, 0);
    let snapshots = &w.local.engine.snapshots;
    w.faults.fail("delete_snapshot", &[1], permanent);
    w.local
        .engine
        .fail_restore(&task.id, "interrupted", FailedBy::Recovery)
        .unwrap();
    assert_clean_failure(&w, &w.task(&task.id), "interrupted");
    assert_eq!(
        snapshots.find_snapshot_by_token(&me(), &token).unwrap(),
        Some(started[0].clone()),
        "the refused deletion left the snapshot"
    );
}

#[test]
fn a_cancelled_store_ends_failed_with_nothing_left() {
    let w = world();
    let (image, _) = w.image("to cancel");
    let gate = w.faults.hold("upload_part");
    let task = w
        .local
        .engine
        .create_store_task(&me(), &store_request(&w, &image, "/p"))
        .unwrap();
    // Wait until a unit is under way (reading; its upload held), then cancel.
    while w.faults.calls("read_blocks") == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let cancelled = w.local.engine.cancel_store(&me(), &image, None).unwrap();
    assert_eq!(cancelled.failure_reason.as_deref(), Some("cancelled"));
    drop(gate);
    let done = w.local.wait(&task.id).unwrap();
    assert_clean_failure(&w, &done, "cancelled");
    assert!(matches!(
        w.local.engine.cancel_store(&me(), &image, None),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn tasks_beyond_the_execution_limit_wait_their_turn() {
    let w = world_with(amistore_local::embedded::LocalOptions {
        runner: amistore_local::workflow::RunnerOptions {
            max_executions: Some(1),
            ..options().runner
        },
        ..options()
    });
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = events.clone();
    w.local.observe(std::sync::Arc::new(move |task, _, what| {
        log.lock().unwrap().push((task.clone(), what.to_owned()));
    }));
    let (first_image, _) = w.image("first");
    let (second_image, _) = w.image("second");
    let gate = w.faults.hold("list_blocks");
    let first = w
        .local
        .engine
        .create_store_task(&me(), &store_request(&w, &first_image, ""))
        .unwrap();
    let second = w
        .local
        .engine
        .create_store_task(&me(), &store_request(&w, &second_image, ""))
        .unwrap();
    while w.faults.calls("list_blocks") == 0
        && !events
            .lock()
            .unwrap()
            .iter()
            .any(|(t, e)| *t == first.id && e == "running")
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let waiting = w.task(&second.id);
    assert_eq!(
        (waiting.state, waiting.progress_percent()),
        (TaskState::InProgress, 0)
    );
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|(t, e)| *t == second.id && e == "running"),
        "the second task waits while the first runs"
    );
    assert_eq!(
        w.local.execution_threads(),
        1,
        "a queued execution holds no thread"
    );
    drop(gate);
    for t in [&first, &second] {
        assert_eq!(w.local.wait(&t.id).unwrap().state, TaskState::Completed);
    }
    // Nothing is kept per finished execution.
    assert_eq!(w.local.live_executions(), 0);
    let order: Vec<(bool, String)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|(t, e)| (*t == first.id, e.clone()))
        .collect();
    let pos = |first: bool, e: &str| {
        order
            .iter()
            .position(|(f, x)| *f == first && x == e)
            .unwrap()
    };
    assert!(pos(true, "Completed") < pos(false, "running"), "{order:?}");
}

fn stored(w: &World) -> ObjectKey {
    stored_image(w).1
}

fn stored_image(w: &World) -> (ImageId, ObjectKey) {
    let (image, _) = w.image("to restore");
    let task = store(w, &image);
    assert_eq!(task.state, TaskState::Completed);
    (image, task.key)
}

#[test]
fn restore_failures_leave_a_failed_image_and_release_the_quota() {
    for (method, error, expect) in [
        (
            "write_blocks",
            permanent as fn(String) -> Error,
            TaskState::Failed,
        ),
        ("complete_snapshot", permanent, TaskState::Failed),
        ("get_range", transient, TaskState::Completed),
        ("write_blocks", transient, TaskState::Completed),
        ("set_image_state", transient, TaskState::Completed),
        ("record_unit", transient, TaskState::Completed),
    ] {
        let w = world();
        let key = stored(&w);
        // Past intake's own reads (which are not retried: the caller gets the error).
        let first = w.faults.calls(method) + if method == "get_range" { 3 } else { 1 };
        let nth: Vec<usize> = match expect {
            TaskState::Failed => (first..first + 100).collect(),
            _ => vec![first],
        };
        w.faults.fail(method, &nth, error);
        let task = restore(&w, &key, "restored");
        assert_eq!(task.state, expect, "{method}: {:?}", task.failure_reason);
        let image = w
            .local
            .library
            .describe_image(&me(), task.image_id.as_ref().unwrap())
            .unwrap();
        assert_eq!(w.in_progress_gib(TaskKind::Restore), 0, "{method}");
        match expect {
            TaskState::Failed => {
                assert_clean_failure(&w, &task, method);
                assert_eq!(image.state, ResourceState::Failed);
                assert!(
                    image
                        .snapshots
                        .iter()
                        .all(|s| s.state == ResourceState::Failed)
                );
                let reason = image.state_reason.unwrap_or_default();
                assert!(reason.contains(method), "{method}: {reason}");
            }
            _ => {
                assert_eq!(image.state, ResourceState::Available);
                assert_eq!(task.units_done, task.units_total);
            }
        }
    }
}

#[test]
fn a_corrupted_archive_fails_the_restore_naming_the_unit() {
    let w = world();
    let key = stored(&w);
    let path = w
        .dir
        .path()
        .join("data/s3")
        .join(w.bucket.as_str())
        .join(key.as_str());
    let mut bytes = fs::read(&path).unwrap();
    let file = fs::File::open(&path).unwrap();
    let index = ArchiveIndex::open(&file).unwrap();
    let unit = &index.manifest().units[1];
    bytes[(unit.offset + unit.compressed_len / 2) as usize] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let task = restore(&w, &key, "from corrupt");
    assert_clean_failure(&w, &task, "corrupt");
    let image = w
        .local
        .library
        .describe_image(&me(), task.image_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(image.state, ResourceState::Failed);
}

#[test]
fn bad_requests_are_refused_with_clear_errors_and_change_nothing() {
    let w = world();
    let (image, key) = stored_image(&w);
    let engine = &w.local.engine;
    let nothing_changed = |w: &World, images: usize, tasks: usize| {
        assert_eq!(w.local.library.list_images(&me()).unwrap().len(), images);
        let all = w
            .local
            .engine
            .tasks
            .list(&me(), TaskKind::Store, amistore_core::engine::now_ms())
            .unwrap()
            .len()
            + w.local
                .engine
                .tasks
                .list(&me(), TaskKind::Restore, amistore_core::engine::now_ms())
                .unwrap()
                .len();
        assert_eq!(all, tasks);
        assert_eq!(
            w.in_progress_gib(TaskKind::Store) + w.in_progress_gib(TaskKind::Restore),
            0
        );
    };
    let images = w.local.library.list_images(&me()).unwrap().len();
    let check = |err: Error, needle: &str| {
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle:?}"
        );
        nothing_changed(&w, images, 1);
    };

    let unknown = ImageId::fresh();
    let req = |image: &ImageId, bucket: &str| StoreRequest {
        image_id: image.clone(),
        bucket: bucket.parse().unwrap(),
        object_tags: vec![],
    };
    let e = engine
        .create_store_task(&me(), &req(&unknown, "test-bucket"))
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)));
    check(e, unknown.as_str());
    let e = engine
        .create_store_task(&me(), &req(&image, "no-such-bucket/x"))
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)));
    check(e, "no-such-bucket");
    let other: amistore_core::ids::AccountId = "111122223333".parse().unwrap();
    check(
        engine
            .create_store_task(&other, &req(&image, "test-bucket"))
            .unwrap_err(),
        "does not exist",
    );
    let e = engine
        .create_store_task(&me(), &req(&image, "test-bucket/again"))
        .unwrap_err();
    assert!(
        matches!(e, Error::AlreadyExists(_)),
        "a second copy in the same bucket"
    );
    check(e, "once per bucket");
    let eleven = StoreRequest {
        object_tags: (0..11)
            .map(|i| format!("k{i}=v").parse().unwrap())
            .collect(),
        ..req(&image, "test-bucket/x")
    };
    check(
        engine.create_store_task(&me(), &eleven).unwrap_err(),
        "11 object tags",
    );
    for bad in ["test-bucket/../x", "test-bucket//x", "test-bucket/a\u{1}b"] {
        assert!(
            bad.parse::<amistore_core::storage::BucketPath>().is_err(),
            "{bad}"
        );
    }

    // Restore: duplicate name, missing object or bucket, not an archive,
    // truncated, another format version.
    let rreq = |key: &str, name: Option<&str>| RestoreRequest {
        bucket: w.bucket.clone(),
        key: key.parse().unwrap(),
        name: name.map(|n| n.parse().unwrap()),
        image_tags: vec![],
        snapshot_tags: vec![],
    };
    let e = engine
        .create_restore_task(&me(), &rreq(key.as_str(), None))
        .unwrap_err();
    assert!(
        matches!(e, Error::AlreadyExists(_)),
        "the stored name is taken: {e}"
    );
    check(e, "to restore");
    check(
        engine
            .create_restore_task(&me(), &rreq("missing.bin", Some("x-1")))
            .unwrap_err(),
        "missing.bin",
    );
    let missing_bucket = RestoreRequest {
        bucket: "nope-bucket".parse().unwrap(),
        ..rreq(key.as_str(), Some("x-2"))
    };
    check(
        engine
            .create_restore_task(&me(), &missing_bucket)
            .unwrap_err(),
        "nope-bucket",
    );
    let object = fs::read(w.dir.path().join("data/s3/test-bucket").join(key.as_str())).unwrap();
    let put = |k: &str, bytes: &[u8]| {
        w.local
            .buckets
            .put_object(&w.bucket, &k.parse().unwrap(), bytes)
            .unwrap();
    };
    put(
        "foreign.bin",
        b"this is not an archive at all, just some text",
    );
    let e = engine
        .create_restore_task(&me(), &rreq("foreign.bin", Some("x-3")))
        .unwrap_err();
    assert!(matches!(e, Error::NotAnArchive(_)), "{e}");
    put("truncated.bin", &object[..object.len() - 5000]);
    let e = engine
        .create_restore_task(&me(), &rreq("truncated.bin", Some("x-4")))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotAnArchive(_) | Error::Truncated(_) | Error::Malformed(_)
        ),
        "{e}"
    );
    let v2 = amistore_core::archive::testing::with_manifest(&object, |m| m["version"] = 2.into())
        .unwrap();
    put("v2.bin", &v2);
    let e = engine
        .create_restore_task(&me(), &rreq("v2.bin", Some("x-5")))
        .unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedVersion { found: 2, .. }),
        "{e}"
    );
    assert!(
        "a".repeat(129)
            .parse::<amistore_core::image::ImageName>()
            .is_err()
    );
    nothing_changed(&w, images, 1);
}

#[test]
fn a_failed_unit_fails_its_task_with_its_own_error() {
    // A Distributed Map's own failure says only that too many items failed;
    // the unit's execution records its error as the task's reason.
    let w = world();
    let (image, _) = w.image("one-bad-unit");
    w.faults
        .fail("read_blocks", &(3..1000).collect::<Vec<_>>(), permanent);
    let task = store(&w, &image);
    assert_clean_failure(&w, &task, "injected failure of read_blocks");
    let reason = w.task(&task.id).failure_reason.unwrap();
    assert!(reason.starts_with("unit "), "{reason}");
    assert!(!reason.contains("tolerated failure threshold"), "{reason}");
}

#[test]
fn one_refused_clean_up_does_not_stop_the_sweep() {
    // Two abandoned stores (their executions are gone); the first one's
    // DeleteObject is refused, as S3 refuses a role without s3:DeleteObject.
    let w = world();
    let mut tasks = Vec::new();
    for (i, name) in ["abandoned first", "abandoned second"].iter().enumerate() {
        let (image, _) = w.image(name);
        let key: ObjectKey = format!("{image}.bin").parse().unwrap();
        let task = Task::start(
            TaskKind::Store,
            me(),
            Some(image),
            w.bucket.clone(),
            key.clone(),
            3,
            i as i64,
        );
        w.local.engine.tasks.admit(&task, 600).unwrap();
        let upload = w
            .local
            .engine
            .objects
            .create_multipart(&w.bucket, &key, &Default::default(), &[])
            .unwrap();
        w.local.engine.tasks.set_upload(&task.id, &upload).unwrap();
        tasks.push(task);
    }
    assert_eq!(w.in_progress_gib(TaskKind::Store), 6);
    w.faults.fail("delete_object", &[1], permanent);

    let report = w
        .local
        .engine
        .sweep(amistore_core::engine::now_ms(), 0)
        .unwrap();
    assert_eq!(report.failed, vec![tasks[1].id.clone()], "{report:?}");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(
        report.errors[0].contains(tasks[0].id.as_str())
            && report.errors[0].contains("injected failure of delete_object"),
        "{report:?}"
    );
    let second = w.task(&tasks[1].id);
    assert_eq!(second.state, TaskState::Failed);
    assert!(second.failure_reason.unwrap().starts_with("abandoned"));
    assert_eq!(
        w.in_progress_gib(TaskKind::Store),
        3,
        "the second's quota is free"
    );
    assert_eq!(w.task(&tasks[0].id).state, TaskState::InProgress);

    // The next sweep finishes what the first could not.
    let again = w
        .local
        .engine
        .sweep(amistore_core::engine::now_ms(), 0)
        .unwrap();
    assert_eq!(again.failed, vec![tasks[0].id.clone()], "{again:?}");
    assert!(again.errors.is_empty(), "{again:?}");
    assert_eq!(w.in_progress_gib(TaskKind::Store), 0);
    assert_eq!(w.uploads(), 0);
}

#[test]
fn a_restore_whose_archive_is_replaced_midway_fails_instead_of_mixing_two() {
    let w = world();
    let (a, _) = w.image("pinned-a");
    let (b, _) = w.image("pinned-b");
    let key_a = store(&w, &a).key;
    let key_b = store(&w, &b).key;
    let object = |k: &ObjectKey| {
        w.dir
            .path()
            .join("data/s3")
            .join(w.bucket.as_str())
            .join(k.as_str())
    };
    // The plan opens the archive, then waits here while it is replaced.
    let gate = w.faults.hold("set_units_total");
    let task = w
        .local
        .engine
        .create_restore_task(&me(), &restore_request(&w, &key_a, "pinned copy"))
        .unwrap();
    let replacement = object(&key_a).with_extension("swap");
    fs::copy(object(&key_b), &replacement).unwrap();
    fs::rename(&replacement, object(&key_a)).unwrap();
    drop(gate);
    let done = w.local.wait(&task.id).unwrap();
    assert_clean_failure(&w, &done, "was replaced");
    let image = w
        .local
        .library
        .describe_image(&me(), done.image_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(image.state, ResourceState::Failed);
}

#[test]
fn the_archive_policy_goes_on_past_an_image_it_cannot_store() {
    use amistore_core::engine::sweep::ArchivePolicy;
    use amistore_core::image::{Architecture, ImageMetadata, VirtualizationType};
    let w = world();
    let tag: Tag = "backup=nightly".parse().unwrap();
    // First (oldest): a paravirtual image, which no store admits.
    let engine = &w.local.engine;
    let snap = engine
        .snapshots
        .start_snapshot(&me(), 4 << 20, &[], &Encryption::Unencrypted, "pv-disk")
        .unwrap();
    engine.snapshots.complete_snapshot(&snap, 0).unwrap();
    let (source, _) = w.image("policy-template");
    let template = engine.catalog.describe_image(&me(), &source).unwrap();
    let pv = ImageMetadata {
        virtualization_type: VirtualizationType::Paravirtual,
        tags: vec![tag.clone()],
        block_device_mappings: vec![template.metadata.block_device_mappings[0].clone()],
        ..ImageMetadata::minimal(
            "policy-pv".parse().unwrap(),
            Architecture::X86_64,
            "/dev/xvda".parse().unwrap(),
        )
    };
    let pv_image = engine
        .catalog
        .register_image(&me(), &pv, std::slice::from_ref(&snap), "pv")
        .unwrap();
    engine
        .catalog
        .set_image_state(&me(), &pv_image, ResourceState::Available, None)
        .unwrap();
    // Then a good one, tagged at import.
    let (tagged, _) = {
        let d = w.dir.path();
        let a = disk(d, "policy-tagged.raw", 8, &[0..2]);
        let spec = amistore_core::image::ImageSpec {
            name: "policy-tagged".parse().unwrap(),
            description: None,
            architecture: Architecture::X86_64,
            boot_mode: None,
            root_device_name: None,
            tags: vec![tag.clone()],
        };
        let image = w
            .local
            .library
            .import(&me(), &spec, &[("/dev/xvda".parse().unwrap(), a.clone())])
            .unwrap();
        (image.image_id, a)
    };
    let policy = ArchivePolicy {
        tag,
        bucket: format!("{}/policy", w.bucket).parse().unwrap(),
    };
    let report = engine.apply_archive_policy(&me(), &policy).unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].starts_with(pv_image.as_str()),
        "{report:?}"
    );
    assert!(report.refused[0].contains("paravirtual"), "{report:?}");
    assert_eq!(
        report.started.len(),
        1,
        "the next image is still stored: {report:?}"
    );
    let task = w.local.wait(&report.started[0]).unwrap();
    assert_eq!(task.image_id, Some(tagged));
    assert_eq!(
        task.state,
        TaskState::Completed,
        "{:?}",
        task.failure_reason
    );
}

#[test]
fn the_data_directory_is_for_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let key = stored(&w);
    let task = restore(&w, &key, "private copy");
    assert_eq!(task.state, TaskState::Completed);
    let data = w.dir.path().join("data");
    let mut seen = 0;
    let mut open = Vec::new();
    let mut stack = vec![data];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            open.push(format!(
                "{} {:o}",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        seen += 1;
        if meta.is_dir() {
            stack.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    // Records, snapshots, objects, the database and its WAL, token.key, leases.
    assert!(seen > 15, "{seen}");
    assert!(open.is_empty(), "readable by others: {open:#?}");
}

/// The leak: an execution that ended without ending its task (its
/// fail step failed too) kept the task, and its quota, until a restart.
#[test]
fn a_running_process_sweeps_the_tasks_its_executions_left_in_progress() {
    let w = world();
    let (image, _) = w.image("left behind");
    // Every try of the workflow's fail step fails too.
    let every: Vec<usize> = (1..=1000).collect();
    w.faults.fail("complete_multipart", &every, permanent);
    w.faults.fail("abort_multipart", &every, permanent);
    let task = w
        .local
        .engine
        .create_store_task(&me(), &store_request(&w, &image, ""))
        .unwrap();
    let left = w.local.wait(&task.id).unwrap();
    assert_eq!(left.state, TaskState::InProgress, "{left:?}");
    assert!(w.in_progress_gib(TaskKind::Store) > 0);

    // Within the grace period, nothing happens.
    let young = w.local.maintain(60_000).unwrap();
    assert!(young.sweep.failed.is_empty(), "{young:?}");
    // After it, the task fails (the clean-up works again) and frees its quota.
    w.faults.clear();
    let swept = w.local.maintain(0).unwrap();
    assert_eq!(swept.sweep.failed, vec![task.id.clone()], "{swept:?}");
    assert_eq!(w.task(&task.id).state, TaskState::Failed);
    assert_eq!(w.in_progress_gib(TaskKind::Store), 0);
    assert_eq!(w.uploads(), 0);
}

/// Two processes over one data directory: one's maintenance must not fail a
/// task the other is running.
#[test]
fn maintenance_leaves_the_tasks_another_live_process_runs() {
    let w = world();
    let (image, _) = w.image("elsewhere");
    let gate = w.faults.hold("complete_multipart");
    let task = w
        .local
        .engine
        .create_store_task(&me(), &store_request(&w, &image, ""))
        .unwrap();
    // Its units are done: its execution is in finalize, held.
    while w.task(&task.id).units_done < w.task(&task.id).units_total {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let other =
        amistore_local::embedded::LocalEngine::open(&w.dir.path().join("data"), options(), None)
            .unwrap();
    let report = other.maintain(0).unwrap();
    assert!(report.sweep.failed.is_empty(), "{report:?}");
    assert!(report.resumed.is_empty(), "{report:?}");
    assert_eq!(w.task(&task.id).state, TaskState::InProgress);
    drop(gate);
    assert_eq!(w.local.wait(&task.id).unwrap().state, TaskState::Completed);
}
