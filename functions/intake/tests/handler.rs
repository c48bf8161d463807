//! The intake function's handler, fed real HTTP API (2.0) events from
//! `fixtures/` over the local adapters.

#![allow(clippy::unwrap_used)]

use amistore_lambda::Function;
use serde_json::Value;

use amistore_core::ids::ImageId;
use amistore_core::task::{TaskKind, TaskState};
use amistore_lambda::testing::{Harness, HttpAnswer, account, fixture};
use serde_json::json;

const STORE: &str = include_str!("../fixtures/create-store-image-task.json");
const RESTORE: &str = include_str!("../fixtures/create-restore-image-task.json");
const DESCRIBE: &str = include_str!("../../describe/fixtures/describe-store-image-tasks.json");
const UNSIGNED: &str = include_str!("../fixtures/no-authorizer.json");
const MISSING: &str = include_str!("../fixtures/missing-parameter.json");

async fn call(h: &Harness, event: Value) -> HttpAnswer {
    h.call(Function::Intake, event).await.unwrap()
}

fn between<'a>(body: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = body.find(&open).unwrap() + open.len();
    &body[start..start + body[start..].find('<').unwrap()]
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_restores_and_describes_for_the_iam_caller() {
    let h = Harness::new();
    let image = h.image("intake-source", &["team=infra"]);

    let stored = call(&h, fixture(STORE, Some(&image), None)).await;
    assert_eq!(stored.status_code, 200, "{}", stored.body);
    assert_eq!(stored.headers["content-type"], "text/xml;charset=UTF-8");
    assert!(!stored.is_base64_encoded);
    let key = between(&stored.body, "objectKey");
    assert_eq!(key, format!("nightly/{image}.bin"));
    let started = h.workflows.started();
    assert_eq!(started.len(), 1, "one execution started");
    let (kind, task) = &started[0];
    assert_eq!(*kind, TaskKind::Store);
    let t = h.engine().task(task).unwrap();
    assert_eq!(
        (t.state, t.account.clone()),
        (TaskState::InProgress, account())
    );

    h.complete(TaskKind::Store, task);
    let described: HttpAnswer = h
        .call(Function::Describe, fixture(DESCRIBE, Some(&image), None))
        .await
        .unwrap();
    assert_eq!(described.status_code, 200, "{}", described.body);
    assert_eq!(between(&described.body, "storeTaskState"), "Completed");
    assert_eq!(between(&described.body, "s3objectKey"), key);

    let restore = fixture(RESTORE, Some(&image), None);
    let restored = call(&h, restore).await;
    assert_eq!(restored.status_code, 200, "{}", restored.body);
    let new_image: ImageId = between(&restored.body, "imageId").parse().unwrap();
    assert_ne!(new_image, image, "a restore makes a new AMI");
    let (kind, task) = h.workflows.started()[1].clone();
    assert_eq!(kind, TaskKind::Restore);
    h.complete(TaskKind::Restore, &task);
    let restored = h
        .engine()
        .catalog
        .describe_image(&account(), &new_image)
        .unwrap();
    assert_eq!(restored.metadata.name.as_str(), "intake-restored");
    assert!(
        restored
            .metadata
            .tags
            .contains(&"team=infra".parse().unwrap())
    );
    assert!(
        restored
            .metadata
            .tags
            .contains(&"restored-by=intake".parse().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_what_api_gateway_did_not_authenticate_and_bad_requests() {
    let h = Harness::new();
    let image = h.image("intake-refusals", &[]);
    let unsigned = call(&h, fixture(UNSIGNED, Some(&image), None)).await;
    assert_eq!(unsigned.status_code, 401);
    assert_eq!(between(&unsigned.body, "Code"), "AuthFailure");
    let missing = call(&h, fixture(MISSING, None, None)).await;
    assert_eq!(missing.status_code, 400);
    assert_eq!(between(&missing.body, "Code"), "MissingParameter");
    assert!(h.workflows.started().is_empty(), "nothing was started");
    let garbage = h
        .call::<HttpAnswer>(Function::Intake, json!({"not": "an event"}))
        .await
        .unwrap_err();
    assert_eq!(garbage.name, "Fatal");
    assert!(garbage.cause.contains("HTTP API"), "{}", garbage.cause);
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_only_the_action_its_route_names() {
    // IAM grants execute-api:Invoke per route; a body naming another action
    // must not ride on a grant for this one.
    let h = Harness::new();
    let image = h.image("intake-routes", &[]);
    let mut smuggled = fixture(RESTORE, Some(&image), None);
    smuggled["routeKey"] = json!("POST /CreateStoreImageTask");
    let refused = call(&h, smuggled).await;
    assert_eq!(refused.status_code, 403, "{}", refused.body);
    assert_eq!(between(&refused.body, "Code"), "UnauthorizedOperation");
    // A describe route is not intake's at all.
    let mut elsewhere = fixture(STORE, Some(&image), None);
    elsewhere["routeKey"] = json!("POST /DescribeStoreImageTasks");
    let refused = call(&h, elsewhere).await;
    assert_eq!(refused.status_code, 404, "{}", refused.body);
    assert_eq!(between(&refused.body, "Code"), "InvalidAction");
    assert!(h.workflows.started().is_empty(), "nothing was started");
}
