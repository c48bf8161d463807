//! The chunk-transfer function: the state machines' plan and unit steps. A
//! store unit reads its blocks through the EBS direct APIs, compresses them and
//! uploads one part; a restore unit reads its part's range, decompresses,
//! verifies and writes the blocks. Units are sized so one ends well inside
//! Lambda's 15 minutes, and each is idempotent under retries.

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
