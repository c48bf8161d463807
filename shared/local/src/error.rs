//! The local adapters' error type.

use std::io;
use std::path::PathBuf;

/// Result alias for the local adapters.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the local adapters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An archive or domain rule was broken (see the core error).
    #[error(transparent)]
    Core(#[from] amistore_core::Error),

    /// A value supplied by the caller is not acceptable.
    #[error("{0}")]
    InvalidInput(String),

    /// A resource (image, snapshot) that does not exist for the caller.
    #[error("{0}")]
    NotFound(String),

    /// A name that must be unique is taken.
    #[error("{0}")]
    Duplicate(String),

    /// Admitting the task would break the account's in-progress quota.
    #[error("{0}")]
    LimitExceeded(String),

    /// The output already exists and overwriting was not asked for.
    #[error("{} already exists (pass --force to replace it)", .0.display())]
    OutputExists(PathBuf),

    /// An operating-system I/O error, with the path and what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A stable, machine-matchable name for the error.
    pub fn name(&self) -> &'static str {
        match self {
            Error::Core(e) => e.name(),
            Error::InvalidInput(_) => "InvalidInput",
            Error::NotFound(_) => "NotFound",
            Error::Duplicate(_) => "Duplicate",
            Error::LimitExceeded(_) => "LimitExceeded",
            Error::OutputExists(_) => "OutputExists",
            Error::Io { .. } => "Io",
        }
    }
}

/// How the engine's ports see a local failure.
impl From<Error> for amistore_core::Error {
    fn from(e: Error) -> Self {
        use amistore_core::Error as Core;
        match e {
            Error::Core(e) => e,
            Error::InvalidInput(m) => Core::InvalidInput(m),
            Error::NotFound(m) => Core::NotFound(m),
            Error::Duplicate(m) => Core::AlreadyExists(m),
            Error::LimitExceeded(m) => Core::LimitExceeded(m),
            e @ Error::OutputExists(_) => Core::AlreadyExists(e.to_string()),
            Error::Io { context, source } => Core::Io { context, source },
        }
    }
}
