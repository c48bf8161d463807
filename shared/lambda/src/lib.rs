//! What amistore's Lambda functions share. Each function's `main.rs` builds
//! the engine once ([`deployment::connect`]) and hands every event to its
//! `handler.rs`, which calls one function here:
//!
//! - [`http_api`]: API Gateway HTTP API events (payload 2.0) in, EC2 Query
//!   protocol answers out, the caller's account taken from the IAM authorizer.
//! - [`step`]: Step Functions task input in, a step's result out; failures
//!   carry the error names the state machines match ([`step::ERROR_NAMES`]).
//! - [`schedule`]: EventBridge events for the sweeper and archive policies.
//!
//! The engine is synchronous; every call runs it on a blocking thread, where
//! the AWS adapters may block on the runtime.

pub mod deployment;
pub mod http_api;
pub mod schedule;
pub mod step;
#[cfg(feature = "testing")]
pub mod testing;
