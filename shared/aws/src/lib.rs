//! amistore's AWS adapters: the engine's ports over EC2, the EBS direct APIs,
//! S3, DynamoDB and Step Functions.
//!
//! Each module is named after the port its adapter serves:
//!
//! - [`object_store::S3ObjectStore`] is the [`ObjectStore`](amistore_core::ports::ObjectStore)
//!   (multipart with metadata, tags and CRC32C part checksums, ranged GET, abort).
//! - [`task_store::DynamoTaskStore`] is the [`TaskStore`](amistore_core::ports::TaskStore)
//!   over one table (tasks, units, quota counters, copy locks; TransactWriteItems
//!   admission and release; a GSI for newest-first listing; a TTL attribute).
//! - [`images::Ec2Images`] is the [`ImageCatalog`](amistore_core::ports::ImageCatalog) and
//!   [`SnapshotStore`](amistore_core::ports::SnapshotStore) (EC2 for images,
//!   snapshots and tags; the EBS direct APIs for blocks, with bounded
//!   concurrency, a request-rate cap and checksums).
//! - [`workflow_runner::StepFunctionsRunner`] is the [`WorkflowRunner`](amistore_core::ports::WorkflowRunner).
//!
//! The ports are synchronous; every adapter holds a [`Bridge`] to a tokio
//! runtime and blocks on the SDK's futures from the engine's threads (never from
//! a runtime thread: the Lambda handlers run the engine under `spawn_blocking`).
//! SDK types never leave this crate.

pub mod audit;
mod bridge;
mod error;
pub mod images;
pub mod object_store;
pub mod setup;
#[cfg(feature = "simulation")]
pub mod simulation;
pub mod task_store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workflow_runner;

pub use audit::{Audit, Permission};
pub use bridge::Bridge;
pub use error::SetupError;
pub use images::ebs_requests::EbsLimits;
pub use setup::{AwsPorts, AwsSettings, CallerCredentials, Overrides, caller_credentials};
