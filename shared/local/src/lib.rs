//! amistore's local adapters: everything that touches the machine's own disks,
//! and the in-process workflow runner.
//!
//! - [`image_library`]: images and snapshots (the image catalog and snapshot
//!   store ports); [`object_store`]: buckets as folders (the object store port);
//!   [`task_store`]: SQLite (the task store port); [`workflow`]: the runner.
//! - [`embedded`] wires them into an engine rooted in one data directory.
//! - [`raw_disk`] reads and writes sparse raw disk images; [`archive_file`]
//!   packs, verifies and extracts archives stored as local files.

pub mod archive_file;
pub mod embedded;
pub mod image_library;
pub mod object_store;
pub mod private;
pub mod raw_disk;
pub mod task_store;
pub mod throttle;
pub mod workflow;

/// The local adapters report failures as the engine's ports do: one error
/// type for the whole engine, so nothing is translated on the way through.
pub use amistore_core::{Detail, Error, Result};

/// The error for an output file that exists when replacing it was not asked for.
pub fn output_exists(path: &std::path::Path) -> Error {
    Error::AlreadyExists(
        format!(
            "{} already exists (pass --force to replace it)",
            path.display()
        )
        .into(),
    )
}

/// A sink for progress reports of long operations.
pub trait Progress {
    /// The operation will process `total` bytes.
    fn begin(&mut self, total: u64);
    /// `bytes` more bytes are done.
    fn advance(&mut self, bytes: u64);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
}
