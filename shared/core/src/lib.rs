//! amistore's core: the domain types shared by every deployment, the open
//! archive format an AMI is stored in, the ports the engine works through, and
//! the engine itself (the store and restore steps).
//!
//! This crate must never depend on an AWS SDK crate: it is what every binary,
//! Lambda function and test builds on, and it has to stay fast to compile.

pub mod archive;
pub mod blocks;
pub mod engine;
pub mod error;
pub mod ids;
pub mod image;
mod newtype;
pub mod parallel;
pub mod ports;
pub mod storage;
pub mod task;

pub use error::{BoxError, Detail, Error, Result};
