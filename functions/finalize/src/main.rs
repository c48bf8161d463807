//! The finalize function: the state machines' finalize and fail steps. Store:
//! the manifest and seek-table part, CompleteMultipartUpload (or Abort), the
//! task Completed (or Failed) and its quota released. Restore: CompleteSnapshot,
//! the image made available with its tags (or it and its snapshots failed).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amistore_lambda::run(amistore_lambda::Function::Finalize).await
}
