//! The sweeper function, on EventBridge schedules: fails tasks whose execution
//! is gone (releasing their quota), aborts orphaned uploads, reconciles the
//! quota counters; and, on an archive policy's schedule, stores every AMI
//! carrying the policy's tag that has no stored copy yet.

mod handler;

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let deployment = amistore_lambda::deployment::connect().await?;
    let grace_ms = match std::env::var("AMISTORE_SWEEP_GRACE_SECONDS") {
        Ok(s) => s.parse::<i64>()? * 1000,
        Err(_) => amistore_lambda::schedule::GRACE_MS,
    };
    let (engine, account) = (deployment.engine, deployment.account);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        handler::handle(engine.clone(), account.clone(), grace_ms, event)
    }))
    .await
}
