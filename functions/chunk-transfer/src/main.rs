//! The chunk-transfer function: the state machines' plan and unit steps. A
//! store unit reads its blocks through the EBS direct APIs, compresses them and
//! uploads one part; a restore unit reads its part's range, decompresses,
//! verifies and writes the blocks. Units are sized so one ends well inside
//! Lambda's 15 minutes, and each is idempotent under retries.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amistore_lambda::run(amistore_lambda::Function::ChunkTransfer).await
}
