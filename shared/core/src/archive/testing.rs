//! Tools for tests of archive readers: re-sealing an archive around an edited
//! manifest, to build archives that lie in one specific way. Not part of the API.

use crate::archive::frame::FrameCompressor;
use crate::archive::seek_table::{self, FrameEntry};
use crate::archive::tar::{member_header, padding_len};
use crate::archive::{ArchiveIndex, ReadAt};
use crate::{Detail, Error, Result};

/// `archive` with its manifest replaced by `edit`ed JSON, and its seek table
/// rewritten to match, so only the manifest's content is wrong.
pub fn with_manifest(archive: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Result<Vec<u8>> {
    let src = archive.to_vec();
    let index = ArchiveIndex::open(&src as &dyn ReadAt)?;
    let mut json = serde_json::to_value(index.manifest())
        .map_err(|e| Error::InvalidInput(Detail::because("manifest", e)))?;
    edit(&mut json);
    let json = serde_json::to_vec(&json)
        .map_err(|e| Error::InvalidInput(Detail::because("manifest", e)))?;
    let mut content = member_header(
        "manifest.json",
        json.len() as u64,
        index.manifest().mtime()?,
    );
    content.extend_from_slice(&json);
    content.resize(
        content.len() + padding_len(json.len() as u64) as usize + 1024,
        0,
    );
    let frame = FrameCompressor::new()
        .and_then(|mut z| z.compress(&content))
        .map_err(|e| Error::io("compressing the manifest", e))?;
    let manifest_frame = index
        .frames()
        .last()
        .ok_or_else(|| Error::malformed("no frames"))?;
    let mut entries: Vec<FrameEntry> = index.frames().iter().map(|f| f.entry).collect();
    if let Some(last) = entries.last_mut() {
        *last = FrameEntry {
            compressed: frame.len() as u32,
            decompressed: content.len() as u32,
        };
    }
    let mut out = archive[..manifest_frame.offset as usize].to_vec();
    out.extend_from_slice(&frame);
    out.extend_from_slice(&seek_table::encode(&entries));
    Ok(out)
}
