//! The sweeper function's handler, fed real EventBridge events and an
//! archive-policy input (`fixtures/`) over the local adapters.

#![allow(clippy::unwrap_used)]

use amistore_lambda::Function;
use amistore_lambda::schedule::ScheduleOutcome;
use amistore_lambda::step::StepFailure;
use serde_json::Value;

use amistore_core::engine::sweep::ABANDONED;
use amistore_core::task::{TaskKind, TaskState};
use amistore_lambda::testing::{Harness, account, fixture};
use serde_json::json;

const SCHEDULED: &str = include_str!("../fixtures/scheduled-event.json");
const POLICY: &str = include_str!("../fixtures/archive-policy.json");
const NOT_SCHEDULED: &str = include_str!("../fixtures/not-scheduled.json");

async fn call(h: &Harness, event: Value) -> Result<ScheduleOutcome, StepFailure> {
    h.call(Function::Sweeper, event).await
}

#[tokio::test(flavor = "multi_thread")]
async fn fails_abandoned_tasks_aborts_their_uploads_and_fixes_counters() {
    let h = Harness::new();
    let engine = h.engine();
    let stores: Vec<_> = ["sweep-a", "sweep-b"]
        .iter()
        .map(|name| h.store_task(name))
        .collect();
    let (abandoned, running) = (&stores[0], &stores[1]);
    let gib = engine
        .tasks
        .in_progress_gib(&account(), TaskKind::Store)
        .unwrap();
    assert_eq!(gib, abandoned.size_gib + running.size_gib);
    // The first one's execution ended without its fail step (stopped, say).
    h.workflows.end(&abandoned.id);
    // A counter that drifted (as a crash between steps could leave it).
    assert!(
        engine
            .tasks
            .correct_counter(&account(), TaskKind::Store, gib, gib + 40)
            .unwrap()
    );
    assert_eq!(h.uploads_in_progress(), 2);

    let outcome = call(&h, fixture(SCHEDULED, None, None)).await.unwrap();
    let sweep = outcome.sweep.unwrap();
    assert_eq!(sweep.failed, vec![abandoned.id.clone()]);
    let t = engine.task(&abandoned.id).unwrap();
    assert_eq!(
        (t.state, t.failure_reason.as_deref()),
        (TaskState::Failed, Some(ABANDONED))
    );
    assert_eq!(h.uploads_in_progress(), 1, "its upload aborted");
    assert_eq!(
        engine.task(&running.id).unwrap().state,
        TaskState::InProgress
    );

    // The counter read before the failure released its part; the next
    // sweep finds it off by the drift and corrects it.
    let again = call(&h, fixture(SCHEDULED, None, None))
        .await
        .unwrap()
        .sweep
        .unwrap();
    assert!(again.failed.is_empty());
    assert_eq!(again.corrected_counters.len(), 1, "{again:?}");
    assert_eq!(
        engine
            .tasks
            .in_progress_gib(&account(), TaskKind::Store)
            .unwrap(),
        running.size_gib
    );
    let quiet = call(&h, fixture(SCHEDULED, None, None))
        .await
        .unwrap()
        .sweep
        .unwrap();
    assert_eq!(quiet, Default::default(), "nothing left to do");
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_policy_stores_tagged_images_without_a_copy_once() {
    let h = Harness::new();
    let tagged = h.image("policy-tagged", &["backup=amistore"]);
    h.image("policy-untagged", &["backup=no"]);
    let first = call(&h, fixture(POLICY, None, None)).await.unwrap();
    let first = first.policy.unwrap();
    assert_eq!(first.started.len(), 1);
    assert!(first.refused.is_empty(), "{first:?}");
    let task = h.engine().task(&first.started[0]).unwrap();
    assert_eq!(task.image_id.as_ref(), Some(&tagged));
    assert_eq!(task.key.as_str(), format!("policy/{tagged}.bin"));
    // Still in progress: not started twice.
    assert!(
        call(&h, fixture(POLICY, None, None))
            .await
            .unwrap()
            .policy
            .unwrap()
            .started
            .is_empty()
    );
    // Stored: not again.
    h.complete(TaskKind::Store, &task.id);
    assert!(
        call(&h, fixture(POLICY, None, None))
            .await
            .unwrap()
            .policy
            .unwrap()
            .started
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_events_it_does_not_run_on() {
    let h = Harness::new();
    let other = call(&h, fixture(NOT_SCHEDULED, None, None))
        .await
        .unwrap_err();
    assert_eq!(other.name, "Fatal");
    assert!(other.cause.contains("scheduled events"), "{}", other.cause);
    let junk = call(
        &h,
        json!({"archivePolicy": {"tag": "no-equals", "bucket": "b"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(junk.name, "Fatal");
}
