//! The describe function's handler, fed real HTTP API (2.0) events from
//! `fixtures/` over the local adapters.

#![allow(clippy::unwrap_used)]

use amistore_lambda::Function;
use serde_json::Value;

use amistore_core::engine::intake::StoreRequest;
use amistore_lambda::testing::{Harness, HttpAnswer, account, fixture};

const DESCRIBE_STORES: &str = include_str!("../fixtures/describe-store-image-tasks.json");
const DESCRIBE_RESTORES: &str = include_str!("../fixtures/describe-restore-image-tasks.json");
const CREATE: &str = include_str!("../fixtures/create-store-image-task.json");

async fn call(h: &Harness, event: Value) -> HttpAnswer {
    h.call(Function::Describe, event).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn describes_tasks_and_refuses_to_create_any() {
    let h = Harness::new();
    let image = h.image("describe-source", &[]);
    let task = h
        .engine()
        .create_store_task(
            &account(),
            &StoreRequest {
                image_id: image.clone(),
                bucket: "amistore-archive/nightly".parse().unwrap(),
                object_tags: Vec::new(),
            },
        )
        .unwrap();

    // The fixture's body is base64, as API Gateway sends form bodies.
    let stores = call(&h, fixture(DESCRIBE_STORES, Some(&image), None)).await;
    assert_eq!(stores.status_code, 200, "{}", stores.body);
    assert!(
        stores
            .body
            .contains("<storeTaskState>InProgress</storeTaskState>"),
        "{}",
        stores.body
    );
    assert!(stores.body.contains(&format!("<amiId>{image}</amiId>")));
    assert!(
        stores
            .body
            .contains(&format!("<s3objectKey>{}</s3objectKey>", task.key))
    );

    let restores = call(&h, fixture(DESCRIBE_RESTORES, None, None)).await;
    assert_eq!(restores.status_code, 200, "{}", restores.body);
    assert!(restores.body.contains("DescribeRestoreImageTasksResponse"));

    let refused = call(&h, fixture(CREATE, Some(&image), None)).await;
    assert_eq!(refused.status_code, 403, "{}", refused.body);
    assert!(refused.body.contains("<Code>UnauthorizedOperation</Code>"));
    assert_eq!(
        h.workflows.started().len(),
        1,
        "describe started nothing (the one execution is the test's own task)"
    );
    assert_eq!(
        h.engine()
            .tasks
            .list(
                &account(),
                amistore_core::task::TaskKind::Store,
                amistore_core::engine::now_ms()
            )
            .unwrap()
            .len(),
        1,
        "and created nothing"
    );
}
