//! The finalize function's handler, fed the Step Functions task inputs the
//! state machines build (`fixtures/`) over the local adapters.

#![allow(clippy::unwrap_used)]

use amistore_lambda::Function;
use amistore_lambda::step::StepFailure;
use serde_json::Value;

use amistore_core::engine::intake::RestoreRequest;
use amistore_core::ids::ResourceState;
use amistore_core::ports::ObjectStore;
use amistore_core::task::{TaskKind, TaskState};
use amistore_lambda::testing::{Harness, account, fixture};

const STORE_FINALIZE: &str = include_str!("../fixtures/store-finalize.json");
const STORE_FAIL: &str = include_str!("../fixtures/store-fail.json");
const RESTORE_FINALIZE: &str = include_str!("../fixtures/restore-finalize.json");
const RESTORE_FAIL: &str = include_str!("../fixtures/restore-fail.json");

async fn call(h: &Harness, event: Value) -> Result<Value, StepFailure> {
    h.call(Function::Finalize, event).await
}

#[tokio::test(flavor = "multi_thread")]
async fn finalizes_a_store_and_a_restore_and_retries_harmlessly() {
    let h = Harness::new();
    let task = h.store_task("finalize-source");
    h.transfer(TaskKind::Store, &task.id);
    call(&h, fixture(STORE_FINALIZE, None, Some(&task.id)))
        .await
        .unwrap();
    call(&h, fixture(STORE_FINALIZE, None, Some(&task.id)))
        .await
        .unwrap();
    let done = h.engine().task(&task.id).unwrap();
    assert_eq!(done.state, TaskState::Completed);
    let object = h
        .engine()
        .objects
        .head_object(&h.bucket(), &task.key)
        .unwrap()
        .unwrap();
    assert!(object.metadata.contains_key("ami-name"));
    assert_eq!(
        h.engine()
            .tasks
            .in_progress_gib(&account(), TaskKind::Store)
            .unwrap(),
        0
    );

    let restore = h
        .engine()
        .create_restore_task(
            &account(),
            &RestoreRequest {
                bucket: h.bucket(),
                key: task.key.clone(),
                name: Some("finalize-restored".parse().unwrap()),
                image_tags: Vec::new(),
                snapshot_tags: Vec::new(),
            },
        )
        .unwrap();
    let image = restore.image_id.clone().unwrap();
    assert_eq!(
        h.engine()
            .catalog
            .describe_image(&account(), &image)
            .unwrap()
            .state,
        ResourceState::Pending
    );
    h.transfer(TaskKind::Restore, &restore.id);
    call(&h, fixture(RESTORE_FINALIZE, None, Some(&restore.id)))
        .await
        .unwrap();
    let restored = h
        .engine()
        .catalog
        .describe_image(&account(), &image)
        .unwrap();
    assert_eq!(restored.state, ResourceState::Available);
    assert!(
        restored
            .snapshots
            .iter()
            .all(|s| s.state == ResourceState::Available)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fails_tasks_with_the_caught_cause_and_releases_everything() {
    let h = Harness::new();
    let task = h.store_task("fail-source");
    h.transfer(TaskKind::Store, &task.id);
    assert_eq!(h.uploads_in_progress(), 1);
    call(&h, fixture(STORE_FAIL, None, Some(&task.id)))
        .await
        .unwrap();
    let failed = h.engine().task(&task.id).unwrap();
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("reading block 7 of snap-0123456789abcdef0: RequestThrottledException: rate exceeded"),
        "the reason is the caught error's message"
    );
    assert!(
        h.local
            .buckets
            .list_multipart_uploads(&h.bucket())
            .unwrap()
            .is_empty(),
        "upload aborted"
    );
    assert!(
        h.engine()
            .objects
            .head_object(&h.bucket(), &task.key)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        h.engine()
            .tasks
            .in_progress_gib(&account(), TaskKind::Store)
            .unwrap(),
        0
    );

    // A restore that fails leaves its image and snapshots failed.
    let ok = h.store_task("fail-restore-source");
    h.transfer(TaskKind::Store, &ok.id);
    call(&h, fixture(STORE_FINALIZE, None, Some(&ok.id)))
        .await
        .unwrap();
    let restore = h
        .engine()
        .create_restore_task(
            &account(),
            &RestoreRequest {
                bucket: h.bucket(),
                key: ok.key.clone(),
                name: Some("fail-restored".parse().unwrap()),
                image_tags: Vec::new(),
                snapshot_tags: Vec::new(),
            },
        )
        .unwrap();
    call(&h, fixture(RESTORE_FAIL, None, Some(&restore.id)))
        .await
        .unwrap();
    let image = h
        .engine()
        .catalog
        .describe_image(&account(), restore.image_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(image.state, ResourceState::Failed);
    assert_eq!(
        image.state_reason.as_deref(),
        Some("unit 0 is corrupt: checksum mismatch")
    );
    assert!(
        image
            .snapshots
            .iter()
            .all(|s| s.state == ResourceState::Failed)
    );
    assert_eq!(
        h.engine()
            .tasks
            .in_progress_gib(&account(), TaskKind::Restore)
            .unwrap(),
        0
    );
}
