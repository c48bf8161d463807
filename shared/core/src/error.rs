//! The core crate's error type.
//!
//! Variants name what went wrong in the caller's terms (the archive is truncated,
//! a unit is corrupt, the input is invalid), and [`Error::name`] gives each a stable
//! identifier that workflow engines can match on.

use std::io;

/// Result alias for the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, as a cause kept behind one of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a meaning-level variant says: a message naming the problem, and the
/// error that revealed it where there was one (a JSON parser's, a clock's), kept
/// as the [`source`](std::error::Error::source) so callers can walk down to it.
///
/// It reads as `message: cause`, the way the [`Error::Dependency`] and
/// [`Error::Io`] variants read, so the text a caller sees names the cause too.
#[derive(Debug)]
pub struct Detail {
    message: String,
    cause: Option<BoxError>,
}

impl Detail {
    /// `message`, revealed by `cause`.
    pub fn because(message: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Detail {
            message: message.into(),
            cause: Some(cause.into()),
        }
    }

    /// The message alone, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for Detail {
    fn from(message: String) -> Self {
        Detail {
            message,
            cause: None,
        }
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// The whole text, cause included: what an API error document or a log line
/// carries.
impl From<Detail> for String {
    fn from(detail: Detail) -> Self {
        detail.to_string()
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            Some(cause) => write!(f, "{}: {cause}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Detail {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

/// Everything that can go wrong in the core crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not an amistore archive at all (no seek table footer, wrong magic).
    #[error("not an amistore archive: {0}")]
    NotAnArchive(#[source] Detail),

    /// The archive ends early: the object is shorter than its own tables say.
    #[error("archive is truncated: {0}")]
    Truncated(#[source] Detail),

    /// The archive's structures contradict each other or the format specification.
    #[error("archive is malformed: {0}")]
    Malformed(#[source] Detail),

    /// One unit's data failed verification (checksum, hash, frame structure).
    #[error("unit {unit} is corrupt: {reason}")]
    CorruptUnit {
        /// Index of the unit in the manifest.
        unit: usize,
        /// What failed.
        reason: String,
    },

    /// The archive was written by a format version this build cannot read.
    #[error("unsupported archive format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// Version found in the manifest.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },

    /// A value supplied by the caller is not acceptable (names the value and why).
    #[error(transparent)]
    InvalidInput(Detail),

    /// Two parameters were given that cannot be used together.
    #[error(transparent)]
    InvalidCombination(Detail),

    /// A pagination token that is not one this service issued for this caller
    /// and this query.
    #[error(transparent)]
    InvalidToken(Detail),

    /// A resource the caller named does not exist (for the caller's account).
    #[error(transparent)]
    NotFound(Detail),

    /// Something that must be unique already exists (an image name, a stored copy).
    #[error(transparent)]
    AlreadyExists(Detail),

    /// The account's in-progress quota does not admit another task now.
    #[error(transparent)]
    LimitExceeded(Detail),

    /// A resource is in the wrong state for the request (an image still pending).
    #[error(transparent)]
    IncorrectState(Detail),

    /// A dependency failed in a way that may pass on retry (throttling, a 5xx, a
    /// lost connection).
    #[error(transparent)]
    Transient(Detail),

    /// A dependency (a database, a service) failed; `retryable` says whether
    /// the same request may pass later (a busy database, throttling), or will
    /// fail the same way (a constraint, a refused permission).
    #[error("{context}: {source}")]
    Dependency {
        /// What we were doing.
        context: String,
        /// Whether retrying may help.
        retryable: bool,
        /// The dependency's own error.
        #[source]
        source: BoxError,
    },

    /// An operating-system I/O error, with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// A stable, machine-matchable name for the variant.
    pub fn name(&self) -> &'static str {
        match self {
            Error::NotAnArchive(_) => "NotAnArchive",
            Error::Truncated(_) => "Truncated",
            Error::Malformed(_) => "Malformed",
            Error::CorruptUnit { .. } => "CorruptUnit",
            Error::UnsupportedVersion { .. } => "UnsupportedVersion",
            Error::InvalidInput(_) => "InvalidInput",
            Error::InvalidCombination(_) => "InvalidCombination",
            Error::InvalidToken(_) => "InvalidToken",
            Error::NotFound(_) => "NotFound",
            Error::AlreadyExists(_) => "AlreadyExists",
            Error::LimitExceeded(_) => "LimitExceeded",
            Error::IncorrectState(_) => "IncorrectState",
            Error::Transient(_) => "Transient",
            Error::Dependency { .. } => "Dependency",
            Error::Io { .. } => "Io",
        }
    }

    /// Whether retrying the same request may succeed: transient failures,
    /// operating-system I/O errors and retryable dependency failures.
    /// Everything else fails the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Transient(_)
                | Error::Io { .. }
                | Error::Dependency {
                    retryable: true,
                    ..
                }
        )
    }

    /// Wraps a dependency's error with what was being done.
    pub fn dependency(
        context: impl Into<String>,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Dependency {
            context: context.into(),
            retryable,
            source: source.into(),
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(msg: impl Into<Detail>) -> Self {
        Error::Malformed(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// Every cause down the chain, outermost first.
    fn chain<'a>(
        e: &'a (dyn std::error::Error + 'static),
    ) -> Vec<&'a (dyn std::error::Error + 'static)> {
        std::iter::successors(Some(e), |&e| e.source()).collect()
    }

    #[test]
    fn a_meaning_found_by_a_parser_keeps_the_parser_s_error_as_its_cause() {
        let e = crate::archive::manifest::Manifest::from_json(b"{not json").unwrap_err();
        assert_eq!(e.name(), "Malformed");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "archive is malformed: manifest.json is not valid JSON: key must be a string"
            ),
            "{text}"
        );
        let json = chain(&e)
            .into_iter()
            .find_map(|c| c.downcast_ref::<serde_json::Error>())
            .expect("the JSON parser's error in the chain");
        assert!(json.is_syntax(), "{json}");
    }

    #[test]
    fn a_meaning_without_a_cause_reads_as_its_message_and_has_no_source() {
        let e = Error::NotFound("image ami-0123456789abcdef0 does not exist".into());
        assert_eq!(e.to_string(), "image ami-0123456789abcdef0 does not exist");
        assert!(e.source().is_none());
        let because = Error::InvalidInput(Detail::because(
            "clock out of range",
            io::Error::other("before 1970"),
        ));
        assert_eq!(because.to_string(), "clock out of range: before 1970");
        let cause = because.source().expect("the cause");
        assert_eq!(cause.to_string(), "before 1970");
        assert!(cause.downcast_ref::<io::Error>().is_some());
    }
}
