//! The sweeper function, on EventBridge schedules: fails tasks whose execution
//! is gone (releasing their quota), aborts orphaned uploads, reconciles the
//! quota counters; and, on an archive policy's schedule, stores every AMI
//! carrying the policy's tag that has no stored copy yet.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amistore_lambda::run(amistore_lambda::Function::Sweeper).await
}
