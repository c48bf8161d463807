//! The describe function: the read-only route of the HTTP API. It answers
//! DescribeStoreImageTasks, DescribeRestoreImageTasks and the other Describe
//! actions; anything else is UnauthorizedOperation. Its role can only read.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amistore_lambda::run(amistore_lambda::Function::Describe).await
}
