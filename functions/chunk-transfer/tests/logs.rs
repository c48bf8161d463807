//! The chunk-transfer function's log lines, in a test binary of their own:
//! `tracing`'s per-thread subscriber is only dependable when no other test
//! registers callsites at the same time.

#![allow(clippy::unwrap_used)]

use amistore_api::logs::MemoryLog;
use amistore_core::ids::TaskId;
use amistore_lambda::Function;
use amistore_lambda::step::StepFailure;
use amistore_lambda::testing::{Harness, fixture};
use serde_json::{Value, json};

const PLAN: &str = include_str!("../fixtures/store-plan.json");
const UNIT: &str = include_str!("../fixtures/store-unit.json");

async fn call(h: &Harness, event: Value) -> Result<Value, StepFailure> {
    h.call(Function::ChunkTransfer, event).await
}

/// The Map's item input for `unit`: the fixture with its number changed.
fn unit_input(task: &TaskId, unit: u64) -> Value {
    let mut v = fixture(UNIT, None, Some(task));
    v["unit"] = json!(unit);
    v
}

#[tokio::test]
async fn every_step_logs_one_json_line_naming_its_task_unit_and_outcome() {
    let log = MemoryLog::default();
    let _logs =
        tracing::subscriber::set_default(amistore_api::logs::json_subscriber(log.clone(), "info"));
    let h = Harness::new();
    let task = h.store_task("logged-source");
    call(&h, fixture(PLAN, None, Some(&task.id))).await.unwrap();
    call(&h, unit_input(&task.id, 0)).await.unwrap();
    let refused = call(&h, unit_input(&task.id, 999_999)).await.unwrap_err();

    let lines = log.lines();
    let steps: Vec<&Value> = lines.iter().filter(|l| l["event"] == "step").collect();
    assert_eq!(steps.len(), 3, "{lines:?}");
    for line in &steps {
        assert_eq!(line["taskId"], task.id.as_str(), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["ms"].is_u64(), "{line}");
    }
    assert_eq!(steps[0]["step"], "store.plan");
    assert_eq!(steps[0]["ok"], true);
    assert!(steps[0].get("unit").is_none(), "{}", steps[0]);
    assert_eq!(
        (steps[1]["unit"].as_u64(), &steps[1]["ok"]),
        (Some(0), &json!(true))
    );
    assert_eq!(steps[2]["ok"], false);
    assert_eq!(steps[2]["error"], refused.name);
    assert_eq!(steps[2]["cause"], refused.cause.as_str());
}
