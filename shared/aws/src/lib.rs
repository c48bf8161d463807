//! amistore's AWS adapters: the engine's ports over EC2, the EBS direct APIs,
//! S3, DynamoDB and Step Functions.
//!
//! - [`s3::S3ObjectStore`] is the [`ObjectStore`](amistore_core::ports::ObjectStore)
//!   (multipart with metadata, tags and CRC32C part checksums, ranged GET, abort).
//! - [`dynamodb::DynamoTaskStore`] is the [`TaskStore`](amistore_core::ports::TaskStore)
//!   over one table (tasks, units, quota counters, copy locks; TransactWriteItems
//!   admission and release; a GSI for newest-first listing; a TTL attribute).
//! - [`ec2::Ec2Images`] is the [`ImageCatalog`](amistore_core::ports::ImageCatalog) and
//!   [`SnapshotStore`](amistore_core::ports::SnapshotStore) (EC2 for images,
//!   snapshots and tags; the EBS direct APIs for blocks, with bounded
//!   concurrency, a request-rate cap and checksums).
//! - [`sfn::StepFunctionsRunner`] is the [`WorkflowRunner`](amistore_core::ports::WorkflowRunner).
//!
//! The ports are synchronous; every adapter holds a [`Bridge`] to a tokio
//! runtime and blocks on the SDK's futures from the engine's threads (never from
//! a runtime thread: the Lambda handlers run the engine under `spawn_blocking`).
//! SDK types never leave this crate.

pub mod audit;
mod bridge;
pub mod dynamodb;
pub mod ebs;
pub mod ec2;
mod error;
pub mod s3;
pub mod setup;
pub mod sfn;
#[cfg(feature = "simulation")]
pub mod simulation;
#[cfg(feature = "testing")]
pub mod testing;

pub use audit::{Audit, Permission};
pub use bridge::Bridge;
pub use ebs::EbsLimits;
pub use error::SetupError;
pub use setup::{AwsPorts, AwsSettings, Overrides};
