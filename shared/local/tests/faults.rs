//! Faults from the machine during a store and a restore: a full disk
//! (ENOSPC) and a failing one (EIO), injected into each port the data
//! crosses. The task fails cleanly (nothing half-made remains, its quota is
//! released, the reason names the fault), and the same engine goes on
//! serving: the next task completes.

#![allow(clippy::unwrap_used)]

mod support;

use std::io;

use amistore_core::Error;
use amistore_core::engine::intake::{RestoreRequest, StoreRequest};
use amistore_core::ids::ResourceState;
use amistore_core::ports::{ImageCatalog, ObjectStore};
use amistore_core::storage::ObjectKey;
use amistore_core::task::{Task, TaskKind, TaskState};
use support::*;

/// ENOSPC, as the kernel reports it.
fn disk_full(m: String) -> Error {
    Error::io(m, io::Error::from_raw_os_error(libc::ENOSPC))
}

/// EIO, as the kernel reports it.
fn disk_failing(m: String) -> Error {
    Error::io(m, io::Error::from_raw_os_error(libc::EIO))
}

fn store(w: &World, name: &str) -> Task {
    let (image, _) = w.image(name);
    let task = w
        .local
        .engine
        .create_store_task(
            &me(),
            &StoreRequest {
                image_id: image,
                bucket: w.bucket.to_string().parse().unwrap(),
                object_tags: vec![],
            },
        )
        .unwrap();
    w.local.wait(&task.id).unwrap()
}

fn restore(w: &World, key: &ObjectKey, name: &str) -> Task {
    let task = w
        .local
        .engine
        .create_restore_task(
            &me(),
            &RestoreRequest {
                bucket: w.bucket.clone(),
                key: key.clone(),
                name: Some(name.parse().unwrap()),
                image_tags: vec![],
                snapshot_tags: vec![],
            },
        )
        .unwrap();
    w.local.wait(&task.id).unwrap()
}

/// From the next call of `method` on, every call fails with `error`.
fn from_now_on(w: &World, method: &str, error: MakeError) {
    let next = w.faults.calls(method) + 1;
    w.faults
        .fail(method, &(next..next + 10_000).collect::<Vec<_>>(), error);
}

#[test]
fn a_store_meeting_a_full_or_failing_disk_fails_cleanly_and_the_next_completes() {
    let mut injected = 0;
    for (method, error, words) in [
        (
            "upload_part",
            disk_full as MakeError,
            "no space left on device",
        ),
        ("read_blocks", disk_failing, "input/output error"),
        ("complete_multipart", disk_full, "no space left on device"),
    ] {
        let w = world();
        from_now_on(&w, method, error);
        let task = store(&w, "faulty");
        injected += w.faults.calls(method);
        assert_eq!(task.state, TaskState::Failed, "{method}: {task:?}");
        let reason = task.failure_reason.clone().unwrap_or_default();
        assert!(
            reason.to_lowercase().contains(words),
            "{method}: the reason {reason:?} does not name the fault"
        );
        assert_eq!(w.in_progress_gib(TaskKind::Store), 0, "{method}");
        assert_eq!(
            w.local.buckets.head_object(&w.bucket, &task.key).unwrap(),
            None,
            "{method}: a half-made object remains"
        );
        assert_eq!(w.uploads(), 0, "{method}: staged parts remain");

        w.faults.clear();
        let next = store(&w, "healthy");
        assert_eq!(next.state, TaskState::Completed, "{method}: {next:?}");
    }
    println!("faults: {injected} ENOSPC/EIO failures injected into stores, 0 objects half-made");
}

#[test]
fn a_restore_meeting_a_full_or_failing_disk_fails_cleanly_and_the_next_completes() {
    let mut injected = 0;
    for (method, error, words) in [
        (
            "write_blocks",
            disk_full as MakeError,
            "no space left on device",
        ),
        ("get_range", disk_failing, "input/output error"),
        ("complete_snapshot", disk_failing, "input/output error"),
    ] {
        let w = world();
        let stored = store(&w, "source");
        assert_eq!(stored.state, TaskState::Completed);
        // Past intake's own reads of the archive (the caller gets those).
        let start = w.faults.calls(method) + if method == "get_range" { 4 } else { 1 };
        w.faults
            .fail(method, &(start..start + 10_000).collect::<Vec<_>>(), error);
        let task = restore(&w, &stored.key, "faulty copy");
        injected += w.faults.calls(method).saturating_sub(start - 1);
        assert_eq!(task.state, TaskState::Failed, "{method}: {task:?}");
        let reason = task.failure_reason.clone().unwrap_or_default();
        assert!(
            reason.to_lowercase().contains(words),
            "{method}: the reason {reason:?} does not name the fault"
        );
        assert_eq!(w.in_progress_gib(TaskKind::Restore), 0, "{method}");
        let image = w
            .local
            .library
            .describe_image(&me(), task.image_id.as_ref().unwrap())
            .unwrap();
        assert_eq!(image.state, ResourceState::Failed, "{method}");
        assert!(
            image
                .snapshots
                .iter()
                .all(|s| s.state == ResourceState::Failed),
            "{method}: a snapshot of the failed image is usable"
        );

        w.faults.clear();
        let next = restore(&w, &stored.key, "healthy copy");
        assert_eq!(next.state, TaskState::Completed, "{method}: {next:?}");
    }
    println!("faults: {injected} ENOSPC/EIO failures injected into restores, 0 images left usable");
}
