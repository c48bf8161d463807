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
            Error::Io { .. } => "Io",
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
