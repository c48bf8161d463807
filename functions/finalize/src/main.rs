//! The finalize function: the state machines' finalize and fail steps. Store:
//! the manifest and seek-table part, CompleteMultipartUpload (or Abort), the
//! task Completed (or Failed) and its quota released. Restore: CompleteSnapshot,
//! the image made available with its tags (or it and its snapshots failed).

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
