//! API errors as EC2 reports them: a code from EC2's catalogue, a message, and
//! the HTTP status that goes with the code.

use std::borrow::Cow;

use amistore_core::Error as CoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// EC2's error code, e.g. `InvalidAMIID.NotFound`: one of ours, or, in
    /// an answer read by the client, whatever code the server sent.
    pub code: Cow<'static, str>,
    /// Readable message.
    pub message: String,
    /// HTTP status.
    pub status: u16,
}

impl ApiError {
    /// An error with `code`, its usual status, and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Cow::Borrowed(code),
            message: message.into(),
            status: status_of(code),
        }
    }

    /// An error a server answered with: its code kept as sent, known or not.
    pub fn answered(code: String, message: impl Into<String>, status: u16) -> Self {
        Self {
            code: Cow::Owned(code),
            message: message.into(),
            status,
        }
    }

    /// `MissingParameter` for `name`, worded as EC2 words it.
    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    /// `InvalidParameterValue` naming the parameter.
    pub fn invalid(name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            "InvalidParameterValue",
            format!("Value for parameter {name} is invalid: {why}"),
        )
    }

    /// `DryRunOperation`: the request would have succeeded.
    pub fn dry_run() -> Self {
        Self::new(
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }
}

/// The HTTP status EC2 answers `code` with.
pub fn status_of(code: &str) -> u16 {
    match code {
        "DryRunOperation" => 412,
        "AuthFailure" | "IncompleteSignature" | "SignatureDoesNotMatch" => 401,
        "UnauthorizedOperation" => 403,
        "RequestLimitExceeded" | "ServiceUnavailable" => 503,
        "InternalError" => 500,
        "RequestEntityTooLarge" => 413,
        "RequestTimeout" => 408,
        _ => 400,
    }
}

/// Maps an engine error to EC2's generic codes. Actions map the errors whose
/// meaning depends on which parameter caused them (an unknown image, say)
/// before falling back to this.
impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = match &e {
            CoreError::InvalidInput(_) => "InvalidParameterValue",
            CoreError::InvalidCombination(_) => "InvalidParameterCombination",
            CoreError::InvalidToken(_) => "InvalidNextToken",
            CoreError::NotFound(_) => "InvalidParameterValue",
            CoreError::AlreadyExists(_) => "InvalidParameterValue",
            CoreError::LimitExceeded(_) => "ResourceLimitExceeded",
            CoreError::IncorrectState(_) => "IncorrectState",
            CoreError::NotAnArchive(_)
            | CoreError::Truncated(_)
            | CoreError::Malformed(_)
            | CoreError::CorruptUnit { .. }
            | CoreError::UnsupportedVersion { .. } => "InvalidParameterValue",
            CoreError::Transient(_)
            | CoreError::Dependency {
                retryable: true, ..
            } => "ServiceUnavailable",
            CoreError::Dependency { .. } | CoreError::Io { .. } => "InternalError",
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_ec2_statuses() {
        assert_eq!(ApiError::dry_run().status, 412);
        assert_eq!(ApiError::new("AuthFailure", "x").status, 401);
        assert_eq!(ApiError::new("UnauthorizedOperation", "x").status, 403);
        assert_eq!(ApiError::missing("ImageId").status, 400);
        assert_eq!(
            ApiError::missing("ImageId").message,
            "The request must contain the parameter ImageId"
        );
        let quota: ApiError = CoreError::LimitExceeded("600 GiB in progress".into()).into();
        assert_eq!(
            (quota.code.as_ref(), quota.status),
            ("ResourceLimitExceeded", 400)
        );
        let token: ApiError = CoreError::InvalidToken("bad".into()).into();
        assert_eq!(token.code, "InvalidNextToken");
    }
}
