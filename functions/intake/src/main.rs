//! The intake function: API Gateway's HTTP API front door. It answers the EC2
//! Query protocol for the IAM-authenticated caller's account: creates store
//! and restore tasks (starting their executions), cancels, describes.

mod handler;

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let engine = amistore_lambda::deployment::connect().await?.engine;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        handler::handle(engine.clone(), event)
    }))
    .await
}
