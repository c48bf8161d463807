//! Errors: how SDK failures become the engine's [`Error`]s, and this crate's
//! own setup errors.

use std::fmt::Display;

use amistore_core::{BoxError, Detail, Error};
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
    /// No credentials could be found (the SDK's default chain), with the
    /// chain's own error behind it.
    #[error("no AWS credentials")]
    Credentials(#[source] amistore_core::BoxError),
    /// The caller's identity could not be found (STS GetCallerIdentity).
    #[error("cannot find the AWS account: {0}")]
    Identity(#[source] BoxError),
    /// A secret the function needs could not be read.
    #[error("cannot read secret {arn}: {source}")]
    Secret {
        /// The secret.
        arn: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}

/// Error codes AWS services use for throttling and transient service faults:
/// these are worth retrying (the SDK already retried them with backoff).
const TRANSIENT_CODES: &[&str] = &[
    // Throttling, as each service spells it: STS, Step Functions, KMS,
    // Secrets Manager (Throttling/ThrottlingException); EBS direct APIs
    // (RequestThrottledException, ConcurrentLimitExceededException); S3
    // (SlowDown); EC2 (RequestLimitExceeded); DynamoDB
    // (ProvisionedThroughputExceededException, ThrottlingException,
    // RequestLimitExceeded); Lambda (TooManyRequestsException).
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "ConcurrentLimitExceededException",
    // Contention: a DynamoDB item another transaction is writing, or a
    // transaction with this client token still in flight.
    "TransactionConflictException",
    "TransactionInProgressException",
    // Service faults and timeouts.
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
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

/// A failed AWS call as its cause: shown as the service's code and message
/// (or, for a call that got no answer, the SDK's chain of causes), with the
/// SDK's own error (request id, raw response, the connector's error) kept
/// behind it as its `source`.
#[derive(Debug)]
pub(crate) struct AwsCallError {
    detail: String,
    sdk: Box<dyn std::error::Error + Send + Sync>,
}

impl Display for AwsCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl AwsCallError {
    /// `err`, read as the service's code and message, or for a call that got
    /// no answer, the SDK's chain of causes.
    pub(crate) fn new<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let detail = match (err.code(), err.message()) {
            (Some(code), Some(message)) if !code.is_empty() && !message.is_empty() => {
                format!("{code}: {message}")
            }
            (Some(code), _) if !code.is_empty() => code.to_owned(),
            _ => format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            ),
        };
        Self {
            detail,
            sdk: Box::new(err),
        }
    }
}

impl std::error::Error for AwsCallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.sdk.as_ref())
    }
}

/// The engine's error for a failed SDK call; `what` says what we were doing.
/// The SDK's error is always kept as the cause, behind an [`AwsCallError`]
/// that reads as the service's code and message. An answer that names the
/// caller's mistake or a missing resource becomes that meaning; anything worth
/// retrying (throttling, 5xx answers, timeouts, lost connections, unreadable
/// responses) is a retryable [`Error::Dependency`].
pub(crate) fn sdk<E>(what: impl Display, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let answered = matches!(err, SdkError::ServiceError(_));
    let call = AwsCallError::new(err);
    match classify(&code, status).filter(|_| answered) {
        Some(meaning) => meaning(Detail::because(what.to_string(), call)),
        None => Error::dependency(what.to_string(), true, call),
    }
}

/// What a service's answer `code` with HTTP `status` means, as the variant to
/// report it with; `None` for an answer worth retrying.
fn classify(code: &str, status: Option<u16>) -> Option<fn(Detail) -> Error> {
    if TRANSIENT_CODES.contains(&code) || status.is_some_and(|s| s >= 500) {
        None
    } else if NOT_FOUND_CODES.contains(&code) || status == Some(404) {
        Some(Error::NotFound)
    } else if status == Some(409) {
        Some(Error::AlreadyExists)
    } else {
        Some(Error::InvalidInput)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_s_throttling_is_transient_and_refusals_are_not() {
        for (code, status) in [
            ("ThrottlingException", 400), // DynamoDB, Step Functions, KMS
            ("ProvisionedThroughputExceededException", 400), // DynamoDB
            ("RequestLimitExceeded", 400), // EC2, DynamoDB
            ("RequestThrottledException", 400), // EBS direct APIs
            ("ConcurrentLimitExceededException", 400), // EBS StartSnapshot
            ("SlowDown", 503),            // S3
            ("Throttling", 400),          // STS
            ("TooManyRequestsException", 429), // Lambda
            ("TransactionConflictException", 400), // DynamoDB single-item vs a transaction
            ("TransactionInProgressException", 400), // DynamoDB, same client token in flight
            ("InternalServerError", 500),
        ] {
            assert!(
                classify(code, Some(status)).is_none(),
                "{code} should be retried"
            );
        }
        for (code, status) in [
            ("AccessDenied", 403),
            ("AccessDeniedException", 400),
            ("ValidationException", 400),
            ("UnauthorizedOperation", 403),
        ] {
            let e = classify(code, Some(status)).expect("a meaning")(code.into());
            assert!(!e.is_retryable(), "{code} fails the same way again");
        }
        assert!(matches!(
            classify("NoSuchUpload", Some(404)).expect("a meaning")("".into()),
            Error::NotFound(_)
        ));
    }

    #[test]
    fn a_call_that_may_pass_on_retry_keeps_the_sdk_error_as_its_cause() {
        use aws_smithy_runtime_api::client::result::ConnectorError;
        let lost = SdkError::<aws_sdk_s3::operation::head_object::HeadObjectError, HttpResponse>::dispatch_failure(
            ConnectorError::io("connection reset by peer".into()),
        );
        let e = sdk("reading x", lost);
        assert!(e.is_retryable());
        assert!(e.to_string().starts_with("reading x: "), "{e}");
        assert!(e.to_string().contains("connection reset by peer"), "{e}");
        let aws = std::error::Error::source(&e).expect("the call's error");
        let sdk = aws.source().expect("the SDK's error behind it");
        assert!(
            sdk.downcast_ref::<SdkError<aws_sdk_s3::operation::head_object::HeadObjectError, HttpResponse>>()
                .is_some(),
            "{sdk:?}"
        );
    }

    #[test]
    fn a_service_s_refusal_keeps_its_meaning_and_the_sdk_error_as_its_cause() {
        use aws_sdk_s3::operation::head_object::HeadObjectError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let answer = HeadObjectError::generic(
            ErrorMetadata::builder()
                .code("NoSuchKey")
                .message("The specified key does not exist.")
                .build(),
        );
        let response = HttpResponse::new(404.try_into().expect("a status"), SdkBody::empty());
        let e = sdk("reading b/k", SdkError::service_error(answer, response));
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "reading b/k: NoSuchKey: The specified key does not exist."
        );
        let aws = std::error::Error::source(&e).expect("the call's error");
        assert_eq!(
            aws.to_string(),
            "NoSuchKey: The specified key does not exist."
        );
        let sdk = aws.source().expect("the SDK's error behind it");
        assert!(
            sdk.downcast_ref::<SdkError<HeadObjectError, HttpResponse>>()
                .is_some(),
            "{sdk:?}"
        );
    }
}
