//! The core crate's error type.
//!
//! Variants name what went wrong in the caller's terms (the archive is truncated,
//! a unit is corrupt, the input is invalid), and [`Error::name`] gives each a stable
//! identifier that workflow engines can match on.

use std::io;

/// Result alias for the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not an amistore archive at all (no seek table footer, wrong magic).
    #[error("not an amistore archive: {0}")]
    NotAnArchive(String),

    /// The archive ends early: the object is shorter than its own tables say.
    #[error("archive is truncated: {0}")]
    Truncated(String),

    /// The archive's structures contradict each other or the format specification.
    #[error("archive is malformed: {0}")]
    Malformed(String),

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
    #[error("{0}")]
    InvalidInput(String),

    /// Two parameters were given that cannot be used together.
    #[error("{0}")]
    InvalidCombination(String),

    /// A pagination token that is not one this service issued for this caller
    /// and this query.
    #[error("{0}")]
    InvalidToken(String),

    /// A resource the caller named does not exist (for the caller's account).
    #[error("{0}")]
    NotFound(String),

    /// Something that must be unique already exists (an image name, a stored copy).
    #[error("{0}")]
    AlreadyExists(String),

    /// The account's in-progress quota does not admit another task now.
    #[error("{0}")]
    LimitExceeded(String),

    /// A resource is in the wrong state for the request (an image still pending).
    #[error("{0}")]
    IncorrectState(String),

    /// A dependency failed in a way that may pass on retry (throttling, a 5xx, a
    /// lost connection).
    #[error("{0}")]
    Transient(String),

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
        source: Box<dyn std::error::Error + Send + Sync>,
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
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
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

    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        Error::Malformed(msg.into())
    }
}
