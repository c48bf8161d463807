//! Handles one HTTP API request with every action allowed (the route's IAM
//! policy decides who may call it).

use std::sync::Arc;

use amistore_api::service::Permission;
use amistore_core::engine::Engine;
use amistore_lambda::http_api::{self, HttpApiResponse};
use amistore_lambda::step::StepFailure;
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// Answers the request in `event`.
pub async fn handle(
    engine: Arc<Engine>,
    event: LambdaEvent<Value>,
) -> Result<HttpApiResponse, StepFailure> {
    http_api::answer_event(engine, event.payload, Permission::Full).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use amistore_core::ids::ImageId;
    use amistore_core::task::{TaskKind, TaskState};
    use amistore_lambda::testing::{Harness, account, fixture};
    use serde_json::json;

    use super::*;

    const STORE: &str = include_str!("../fixtures/create-store-image-task.json");
    const RESTORE: &str = include_str!("../fixtures/create-restore-image-task.json");
    const DESCRIBE: &str = include_str!("../fixtures/describe-store-image-tasks.json");
    const UNSIGNED: &str = include_str!("../fixtures/no-authorizer.json");
    const MISSING: &str = include_str!("../fixtures/missing-parameter.json");

    async fn call(h: &Harness, event: Value) -> HttpApiResponse {
        handle(
            h.engine(),
            LambdaEvent::new(event, lambda_runtime::Context::default()),
        )
        .await
        .unwrap()
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
        let described = call(&h, fixture(DESCRIBE, Some(&image), None)).await;
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
        let garbage = handle(
            h.engine(),
            LambdaEvent::new(
                json!({"not": "an event"}),
                lambda_runtime::Context::default(),
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(garbage.name, "Fatal");
        assert!(garbage.cause.contains("HTTP API"), "{}", garbage.cause);
    }
}
