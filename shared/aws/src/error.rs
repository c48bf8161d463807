//! Errors: how SDK failures become the engine's [`Error`]s, and this crate's
//! own setup errors.

use std::fmt::Display;

use amistore_core::Error;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// Why the AWS adapters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A required setting (an environment variable, a flag) is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A setting has a value that cannot be used.
    #[error("{name} is not valid: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The caller's identity could not be found (STS GetCallerIdentity).
    #[error("cannot find the AWS account: {0}")]
    Identity(String),
    /// A secret the function needs could not be read.
    #[error("cannot read secret {arn}: {reason}")]
    Secret {
        /// The secret.
        arn: String,
        /// Why.
        reason: String,
    },
}

/// Error codes AWS services use for throttling and transient service faults:
/// these are worth retrying (the SDK already retried them with backoff).
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "TransactionConflictException",
    "ConcurrentLimitExceededException",
];

/// Error codes that mean "what you named does not exist".
const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchUpload",
    "NotFound",
    "ResourceNotFoundException",
    "ExecutionDoesNotExist",
    "StateMachineDoesNotExist",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Unavailable",
    "InvalidSnapshot.NotFound",
];

/// The engine's error for a failed SDK call; `what` says what we were doing.
pub(crate) fn sdk<E>(what: impl Display, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let detail = match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{code}: {message}"),
        (false, true) => code.clone(),
        _ => format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(&err)
        ),
    };
    let text = format!("{what}: {detail}");
    match err {
        SdkError::ServiceError(_) => {
            if TRANSIENT_CODES.contains(&code.as_str()) || status.is_some_and(|s| s >= 500) {
                Error::Transient(text)
            } else if NOT_FOUND_CODES.contains(&code.as_str()) || status == Some(404) {
                Error::NotFound(text)
            } else if status == Some(409) {
                Error::AlreadyExists(text)
            } else {
                Error::InvalidInput(text)
            }
        }
        // Timeouts, lost connections, unreadable responses: worth another try.
        _ => Error::Transient(text),
    }
}
