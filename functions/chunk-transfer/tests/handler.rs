//! The chunk-transfer function's handler, fed the Step Functions task inputs
//! the state machines build (`fixtures/`) over the local adapters.

#![allow(clippy::unwrap_used)]

use amistore_lambda::Function;
use amistore_lambda::step::StepFailure;
use serde_json::Value;

use amistore_core::ids::TaskId;
use amistore_lambda::testing::{Harness, fixture};
use serde_json::json;

const PLAN: &str = include_str!("../fixtures/store-plan.json");
const UNIT: &str = include_str!("../fixtures/store-unit.json");
const NO_UNIT: &str = include_str!("../fixtures/unit-without-number.json");

async fn call(h: &Harness, event: Value) -> Result<Value, StepFailure> {
    h.call(Function::ChunkTransfer, event).await
}

/// The Map's item input for `unit`: the fixture with its number changed.
fn unit_input(task: &TaskId, unit: u64) -> Value {
    let mut v = fixture(UNIT, None, Some(task));
    v["unit"] = json!(unit);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_and_transfers_each_unit_once_however_often_retried() {
    let h = Harness::new();
    let task = h.store_task("chunk-source");

    let plan = call(&h, fixture(PLAN, None, Some(&task.id))).await.unwrap();
    let units = plan["units"].as_u64().unwrap();
    assert!(units >= 2, "the test image makes several units: {plan}");
    // The Map's ItemReader reads this object from the work bucket.
    let items_bucket = plan["itemsBucket"].as_str().unwrap().parse().unwrap();
    let items_key = plan["itemsKey"].as_str().unwrap().parse().unwrap();
    let info = h
        .engine()
        .work
        .head_object(&items_bucket, &items_key)
        .unwrap()
        .unwrap();
    let items: Value = serde_json::from_slice(
        &h.engine()
            .work
            .get_range(&items_bucket, &items_key, 0..info.size, None)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(items.as_array().unwrap().len() as u64, units);
    assert_eq!(items[0], json!({"unit": 0}));
    // Planning again (a retry) gives the same plan.
    assert_eq!(
        call(&h, fixture(PLAN, None, Some(&task.id))).await.unwrap(),
        plan
    );

    for unit in 0..units {
        call(&h, unit_input(&task.id, unit)).await.unwrap();
    }
    // A retried unit is not counted twice.
    call(&h, unit_input(&task.id, 0)).await.unwrap();
    let t = h.engine().task(&task.id).unwrap();
    assert_eq!((t.units_done, t.units_total), (units, units));
    assert_eq!(h.uploads_in_progress(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_the_error_names_the_state_machines_match() {
    let h = Harness::new();
    let no_unit = call(&h, fixture(NO_UNIT, None, None)).await.unwrap_err();
    assert_eq!(no_unit.name, "Fatal");
    assert!(no_unit.cause.contains("needs a unit"), "{}", no_unit.cause);
    let unknown = call(&h, fixture(PLAN, None, None)).await.unwrap_err();
    assert_eq!(unknown.name, "Fatal");
    assert!(
        unknown.cause.contains("does not exist"),
        "{}",
        unknown.cause
    );
    let elsewhere = call(
        &h,
        json!({"step": "store.finalize", "taskId": "task-0123456789abcdef0"}),
    )
    .await
    .unwrap_err();
    assert!(
        elsewhere.cause.contains("chunk-transfer runs"),
        "{}",
        elsewhere.cause
    );
    // What the Lambda runtime sends back as errorType.
    let diagnostic: lambda_runtime::Diagnostic = no_unit.into();
    assert_eq!(diagnostic.error_type, "Fatal");
}
