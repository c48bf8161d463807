//! The amistore archive format, version 1: one object per AMI that stock `zstd`
//! and `tar` can read, that restores in parallel with ranged reads, and that is
//! written as independent parts for S3 multipart upload.
//!
//! ```text
//! object  = unit* final-part
//! unit    = [header frame] (data frame | hole frame)* [padding frame]
//! final   = manifest frame, seek table (zstd seekable format)
//! zstd -dc object = tar stream: disk members…, manifest.json, end-of-archive
//! ```
//!
//! docs/format.md is the normative specification; this module implements it:
//! [`plan`] decides units, [`encode`] writes them, [`index`] opens an archive from
//! its tail, and [`decode`] verifies and decodes frames.

pub mod decode;
pub mod encode;
pub mod frame;
pub mod index;
pub mod manifest;
pub mod plan;
pub mod seek_table;
pub mod tar;
#[doc(hidden)]
pub mod testing;

pub use decode::{Decoded, FrameDecoder, UnitVerifier, read_units};
pub use encode::{
    BlockSource, FinalPart, UnitRecord, UnitWriter, encode_unit, encode_units, write_archive,
};
pub use index::{ArchiveIndex, FrameRole, IndexedFrame};
pub use manifest::{Disk, Manifest, Unit};
pub use plan::{ArchivePlan, DiskSource, UnitPlan};

use crate::{Error, Result};

/// A random-access byte source: a local file, an in-memory buffer, or (in the AWS
/// crate) ranged GETs on an S3 object.
pub trait ReadAt: Sync {
    /// Total size in bytes.
    fn size(&self) -> Result<u64>;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

impl ReadAt for std::fs::File {
    fn size(&self) -> Result<u64> {
        Ok(self
            .metadata()
            .map_err(|e| Error::io("reading the archive's size", e))?
            .len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset).map_err(|e| {
            Error::io(
                format!("reading {} bytes of the archive at {offset}", buf.len()),
                e,
            )
        })
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).ok();
        let bytes = start
            .and_then(|s| self.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| {
                Error::Truncated(
                    format!("read of {} bytes at {offset} passes the end", buf.len()).into(),
                )
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}
