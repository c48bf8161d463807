//! The describe function: the read-only route of the HTTP API. It answers
//! DescribeStoreImageTasks, DescribeRestoreImageTasks and the other Describe
//! actions; anything else is UnauthorizedOperation. Its role can only read.

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
