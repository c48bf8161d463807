//! amistore's EC2-compatible API, as library code so that the local server
//! (`amistore serve`) and the API Gateway front of the Lambda deployment speak
//! exactly the same protocol.
//!
//! - [`query`]: EC2 Query requests (form-encoded, flattened 1-based lists),
//!   parsed into typed parameters; every parameter must be consumed.
//! - [`xml`]: responses in the `http://ec2.amazonaws.com/doc/2016-11-15/`
//!   namespace and EC2's `<Response><Errors>…` error documents.
//! - [`error`]: EC2's error codes and HTTP statuses.
//! - [`sigv4`]: verifying AWS Signature Version 4 (header and query forms).
//! - [`actions`]: the actions over the engine, scoped to the caller's account.
//! - [`ebs`]: the EBS direct APIs over the engine's snapshot store.
//! - [`s3`]: a subset of S3 over the server's buckets.
//! - [`service`]: one HTTP request to one response, authentication included.
//! - [`client`]: signing and sending requests (the CLI's remote mode).

pub mod actions;
pub mod client;
pub mod ebs;
pub mod error;
pub mod json;
pub mod logs;
pub mod query;
pub mod s3;
pub mod service;
pub mod sigv4;
pub mod xml;

pub use error::ApiError;
