//! The races between a task's endings (written once in
//! `amistore_core::ports::races`), run over the local adapters: a real
//! SQLite task store, image library and bucket folders.

#![allow(clippy::unwrap_used)]

mod support;

use amistore_core::ports::races;
use amistore_core::task::TaskState;
use support::*;

#[test]
fn a_cancel_and_finalize_racing_leave_one_consistent_end() {
    let w = world();
    let (image, _) = w.image("raced");
    races::cancel_against_finalize(
        &w.local.engine,
        &me(),
        &image,
        &"test-bucket/races".parse().unwrap(),
    );
}

#[test]
fn a_sweep_failing_a_restore_and_its_finalize_racing_leave_one_consistent_end() {
    let w = world();
    let (image, _) = w.image("to restore");
    let task = w
        .local
        .engine
        .create_store_task(
            &me(),
            &amistore_core::engine::intake::StoreRequest {
                image_id: image,
                bucket: w.bucket.to_string().parse().unwrap(),
                object_tags: vec![],
            },
        )
        .unwrap();
    let stored = w.local.wait(&task.id).unwrap();
    assert_eq!(stored.state, TaskState::Completed);
    races::fail_against_finalize_restore(&w.local.engine, &me(), &w.bucket, &stored.key, "raced");
}

#[test]
fn every_ending_of_a_store_at_once_in_random_orders_leaves_one_consistent_end() {
    let w = world();
    let (image, _) = w.image("raced");
    let runs = races::random_store_endings(
        &w.local.engine,
        &me(),
        &image,
        &"test-bucket/random".parse().unwrap(),
        0..40,
    );
    assert_eq!(runs, 40);
}

#[test]
fn two_failures_of_a_restore_at_once_show_one_reason() {
    let w = world();
    let (image, _) = w.image("to restore");
    let (bucket, key) = races::stored(
        &w.local.engine,
        &me(),
        &image,
        &w.bucket.to_string().parse().unwrap(),
    );
    races::two_failures_agree_on_one_reason(&w.local.engine, &me(), &bucket, &key, "failed twice");
}
