//! Opening an archive: the footer, the seek table and the manifest, read from the
//! end of the object with at most two range reads, cross-checked against each
//! other, and turned into an index that says what every frame is.
//!
//! Once the index exists, any frame (and so any unit) can be fetched and decoded
//! on its own, which is what parallel restore and extraction need.

use std::ops::Range;

use crate::archive::ReadAt;
use crate::archive::frame::{decompress_frame, read_u32_le};
use crate::archive::manifest::{MANIFEST_MEMBER, Manifest};
use crate::archive::seek_table::{self, FOOTER_LEN, Footer, FrameEntry};
use crate::archive::tar::{
    END_OF_ARCHIVE_LEN, MEMBER_HEADER_LEN, member_header, padding_len, ustar_size,
};
use crate::blocks::BLOCK_SIZE;
use crate::{Detail, Error, Result};

/// Bytes the first range read fetches from the end of the object. Small archives
/// are then fully indexed in one read.
pub const TAIL_READ_LEN: u64 = 256 * 1024;
/// Largest manifest frame (decompressed) a reader accepts.
pub const MAX_MANIFEST_FRAME: u64 = 64 << 20;
/// Largest data frame (decompressed) a reader accepts.
pub const MAX_DATA_FRAME: u64 = 64 << 20;
/// Largest hole frame a reader accepts (the seekable reference's frame limit).
pub const MAX_HOLE_FRAME: u64 = 1 << 30;
/// Largest frame in the object a reader accepts, so fetching one frame is bounded.
pub const MAX_COMPRESSED_FRAME: u64 = MAX_DATA_FRAME + (1 << 20);
/// Largest manifest frame in the object (zstd's worst-case expansion of the
/// largest manifest is well inside it).
pub const MAX_MANIFEST_COMPRESSED: u64 = MAX_MANIFEST_FRAME + (1 << 20);

/// What a frame of the object is, derived from the manifest and the seek table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRole {
    /// A disk member's tar header, at the start of the disk's first unit.
    Header {
        /// Unit index.
        unit: usize,
    },
    /// Present blocks.
    Data {
        /// Unit index.
        unit: usize,
        /// First block.
        first_block: u64,
        /// Number of blocks.
        blocks: u64,
    },
    /// Absent blocks: the frame must decode to zeros and is never written back.
    Hole {
        /// Unit index.
        unit: usize,
        /// First block.
        first_block: u64,
        /// Number of blocks.
        blocks: u64,
    },
    /// A skippable frame that pads a part to S3's minimum size.
    Padding {
        /// Unit index.
        unit: usize,
    },
    /// The final frame: the manifest member and the end of the tar stream.
    Manifest,
}

impl FrameRole {
    /// The unit the frame belongs to (none for the manifest frame).
    pub fn unit(&self) -> Option<usize> {
        match *self {
            FrameRole::Header { unit }
            | FrameRole::Data { unit, .. }
            | FrameRole::Hole { unit, .. }
            | FrameRole::Padding { unit } => Some(unit),
            FrameRole::Manifest => None,
        }
    }
}

/// One frame's place in the object and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedFrame {
    /// Byte offset in the object.
    pub offset: u64,
    /// Sizes from the seek table.
    pub entry: FrameEntry,
    /// What it is.
    pub role: FrameRole,
}

impl IndexedFrame {
    /// The frame's byte range in the object.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.entry.compressed)
    }
}

/// An opened archive: its manifest and a map of every frame.
#[derive(Debug, Clone)]
pub struct ArchiveIndex {
    manifest: Manifest,
    frames: Vec<IndexedFrame>,
    unit_frames: Vec<Range<usize>>,
    object_len: u64,
}

impl ArchiveIndex {
    /// The byte range of the first read: the last [`TAIL_READ_LEN`] bytes.
    pub fn tail_range(object_len: u64) -> Range<u64> {
        object_len.saturating_sub(TAIL_READ_LEN)..object_len
    }

    /// Given the last bytes of the object (at least the footer and the last seek
    /// table entry), the range that holds the manifest frame and the seek table.
    pub fn suffix_range(object_len: u64, tail: &[u8]) -> Result<Range<u64>> {
        Self::locate(object_len, tail).map(|(_, range)| range)
    }

    /// The footer, and the range holding the manifest frame and the seek table.
    fn locate(object_len: u64, tail: &[u8]) -> Result<(Footer, Range<u64>)> {
        let footer_at = tail.len().checked_sub(FOOTER_LEN as usize).ok_or_else(|| {
            Error::NotAnArchive(
                format!("object is {object_len} bytes, too short to hold a seek table").into(),
            )
        })?;
        let footer = seek_table::parse_footer(&tail[footer_at..], object_len)?;
        if footer.frames == 0 {
            return Err(Error::malformed("seek table lists no frames"));
        }
        let entry_at = footer_at
            .checked_sub(footer.entry_len() as usize)
            .ok_or_else(|| Error::Truncated("the tail read ends inside the seek table".into()))?;
        // The manifest frame is the last one the table lists. Its size is the
        // object's own claim: bound it before anything is read for it.
        let last_compressed = u64::from(read_u32_le(tail, entry_at).unwrap_or_default());
        if last_compressed > MAX_MANIFEST_COMPRESSED {
            return Err(Error::Malformed(format!(
                "the last frame (the manifest) claims {last_compressed} bytes; a manifest frame is at most {MAX_MANIFEST_COMPRESSED}"
            ).into()));
        }
        let needed = footer.table_len() + last_compressed;
        let start = object_len.checked_sub(needed).ok_or_else(|| {
            Error::Truncated(format!(
                "the seek table and manifest frame need {needed} bytes but the object has {object_len}"
            ).into())
        })?;
        Ok((footer, start..object_len))
    }

    /// Builds the index from the object's last bytes `suffix` (they must start at
    /// or before [`Self::suffix_range`]'s start).
    pub fn from_suffix(object_len: u64, suffix: &[u8]) -> Result<Self> {
        let suffix_start = object_len
            .checked_sub(suffix.len() as u64)
            .ok_or_else(|| Error::InvalidInput("suffix is longer than the object".into()))?;
        let (footer, needed) = Self::locate(object_len, suffix)?;
        if needed.start < suffix_start {
            return Err(Error::InvalidInput(
                format!(
                    "suffix starts at {suffix_start}, after the manifest frame at {}",
                    needed.start
                )
                .into(),
            ));
        }
        let rel = |at: u64| (at - suffix_start) as usize;
        let table_start = object_len - footer.table_len();
        let table = &suffix[rel(table_start)..];
        // Added up before anything is built from it: a table that does not
        // describe this object allocates nothing.
        let sum = seek_table::compressed_total(table, footer)?;
        if sum != table_start {
            return Err(Error::Malformed(format!(
                "seek table frames add up to {sum} bytes but {table_start} bytes precede the table"
            ).into()));
        }
        let entries = seek_table::parse(table, footer)?;
        let (manifest_entry, unit_entries) = entries
            .split_last()
            .ok_or_else(|| Error::malformed("seek table lists no frames"))?;
        let manifest_frame = &suffix[rel(needed.start)..rel(table_start)];
        let manifest = read_manifest_frame(manifest_frame, *manifest_entry)?;
        let manifest_offset = needed.start;
        let units_len: u64 = manifest.units.iter().map(|u| u.compressed_len).sum();
        if units_len != manifest_offset {
            return Err(Error::Malformed(format!(
                "manifest's units add up to {units_len} bytes but the manifest frame starts at {manifest_offset}"
            ).into()));
        }
        let (mut frames, unit_frames) = assign_roles(&manifest, unit_entries)?;
        frames.push(IndexedFrame {
            offset: manifest_offset,
            entry: *manifest_entry,
            role: FrameRole::Manifest,
        });
        Ok(Self {
            manifest,
            frames,
            unit_frames,
            object_len,
        })
    }

    /// Opens an archive from a random-access source with at most two reads.
    pub fn open(src: &dyn ReadAt) -> Result<Self> {
        let len = src.size()?;
        let tail_range = Self::tail_range(len);
        let tail = read_range(src, tail_range.clone())?;
        let needed = Self::suffix_range(len, &tail)?;
        if needed.start >= tail_range.start {
            return Self::from_suffix(len, &tail[(needed.start - tail_range.start) as usize..]);
        }
        let mut suffix = read_range(src, needed.start..tail_range.start)?;
        suffix.extend_from_slice(&tail);
        Self::from_suffix(len, &suffix)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Every frame of the object, in order, the manifest frame last.
    pub fn frames(&self) -> &[IndexedFrame] {
        &self.frames
    }

    /// Indices into [`Self::frames`] of unit `unit`'s frames.
    pub fn unit_frames(&self, unit: usize) -> Range<usize> {
        self.unit_frames.get(unit).cloned().unwrap_or(0..0)
    }

    /// Length of the object.
    pub fn object_len(&self) -> u64 {
        self.object_len
    }
}

pub(crate) fn read_range(src: &dyn ReadAt, range: Range<u64>) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    src.read_exact_at(&mut buf, range.start)?;
    Ok(buf)
}

fn read_manifest_frame(frame: &[u8], entry: FrameEntry) -> Result<Manifest> {
    let expected = u64::from(entry.decompressed);
    if expected > MAX_MANIFEST_FRAME {
        return Err(Error::Malformed(
            format!("manifest frame claims {expected} bytes; the limit is {MAX_MANIFEST_FRAME}")
                .into(),
        ));
    }
    let mut dctx =
        zstd::bulk::Decompressor::new().map_err(|e| Error::io("creating a zstd context", e))?;
    let content = decompress_frame(&mut dctx, frame, expected)
        .map_err(|e| Error::Malformed(Detail::because("manifest frame", e)))?;
    let json_len = ustar_size(&content)
        .filter(|_| content.len() as u64 >= MEMBER_HEADER_LEN)
        .ok_or_else(|| {
            Error::malformed("manifest frame does not start with a tar member header")
        })?;
    let json_end = MEMBER_HEADER_LEN
        .checked_add(json_len)
        .filter(|end| end + padding_len(json_len) + END_OF_ARCHIVE_LEN == content.len() as u64)
        .ok_or_else(|| Error::malformed("manifest member's size does not match its frame"))?;
    let json = &content[MEMBER_HEADER_LEN as usize..json_end as usize];
    let manifest = Manifest::from_json(json)?;
    if content[..MEMBER_HEADER_LEN as usize]
        != member_header(MANIFEST_MEMBER, json_len, manifest.mtime()?)[..]
    {
        return Err(Error::malformed(
            "manifest member header does not match the manifest",
        ));
    }
    if content[json_end as usize..].iter().any(|&b| b != 0) {
        return Err(Error::malformed("end of the tar stream is not zero-filled"));
    }
    Ok(manifest)
}

/// Walks the units' frames, checking that they tile each unit exactly and that
/// every frame covers wholly present or wholly absent blocks.
fn assign_roles(
    manifest: &Manifest,
    entries: &[FrameEntry],
) -> Result<(Vec<IndexedFrame>, Vec<Range<usize>>)> {
    let mut frames = Vec::with_capacity(entries.len() + 1);
    let mut unit_frames = Vec::with_capacity(manifest.units.len());
    let mut entries = entries.iter();
    let mut offset = 0u64;
    for (u, unit) in manifest.units.iter().enumerate() {
        let bad = |msg: String| Error::Malformed(format!("unit {u}: {msg}").into());
        let present = &manifest.disks[unit.disk].present;
        let end = unit.offset + unit.compressed_len;
        let first_frame = frames.len();
        let mut block = unit.first_block;
        let block_end = unit.first_block + unit.block_count;
        let mut header_due = unit.header_len > 0;
        let mut decompressed = 0u64;
        while offset < end {
            let entry = *entries
                .next()
                .ok_or_else(|| bad("the seek table ends inside the unit".into()))?;
            let (c, d) = (u64::from(entry.compressed), u64::from(entry.decompressed));
            if c > MAX_COMPRESSED_FRAME {
                return Err(bad(format!(
                    "frame at {offset} occupies {c} bytes; the limit is {MAX_COMPRESSED_FRAME}"
                )));
            }
            if offset + c > end {
                return Err(bad(format!(
                    "frame at {offset} crosses the unit's end at {end}"
                )));
            }
            let role = if d == 0 {
                FrameRole::Padding { unit: u }
            } else if header_due {
                if d != unit.header_len {
                    return Err(bad(format!(
                        "header frame holds {d} bytes, expected {}",
                        unit.header_len
                    )));
                }
                header_due = false;
                FrameRole::Header { unit: u }
            } else {
                if d % BLOCK_SIZE != 0 {
                    return Err(bad(format!("frame of {d} bytes is not whole blocks")));
                }
                let blocks = d / BLOCK_SIZE;
                if block + blocks > block_end {
                    return Err(bad("frames cover more blocks than the unit".into()));
                }
                let first_block = block;
                block += blocks;
                let present_blocks = present.present_in(first_block..block);
                if present_blocks == blocks {
                    if d > MAX_DATA_FRAME {
                        return Err(bad(format!(
                            "data frame of {d} bytes exceeds the {MAX_DATA_FRAME}-byte limit"
                        )));
                    }
                    FrameRole::Data {
                        unit: u,
                        first_block,
                        blocks,
                    }
                } else if present_blocks == 0 {
                    if d > MAX_HOLE_FRAME {
                        return Err(bad(format!(
                            "hole frame of {d} bytes exceeds the {MAX_HOLE_FRAME}-byte limit"
                        )));
                    }
                    FrameRole::Hole {
                        unit: u,
                        first_block,
                        blocks,
                    }
                } else {
                    return Err(bad(format!(
                        "frame covering blocks {first_block}..{block} mixes present and absent blocks"
                    )));
                }
            };
            frames.push(IndexedFrame {
                offset,
                entry,
                role,
            });
            decompressed += d;
            offset += c;
        }
        if header_due || block != block_end || decompressed != unit.decompressed_len {
            return Err(bad(format!(
                "frames decompress to {decompressed} bytes ending at block {block}; the manifest says {} bytes ending at block {block_end}",
                unit.decompressed_len
            )));
        }
        unit_frames.push(first_frame..frames.len());
    }
    if entries.next().is_some() {
        return Err(Error::malformed(
            "the seek table lists frames that no unit owns",
        ));
    }
    Ok((frames, unit_frames))
}
