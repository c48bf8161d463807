//! The intake function: API Gateway's HTTP API front door. It answers the EC2
//! Query protocol for the IAM-authenticated caller's account: creates store
//! and restore tasks (starting their executions), cancels, describes.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amistore_lambda::run(amistore_lambda::Function::Intake).await
}
