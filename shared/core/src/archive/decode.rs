//! Decoding frames and units, with every check the format allows: zstd content
//! checksums, hole frames that must be all zeros, tar headers that must match the
//! manifest, and each unit's BLAKE3 hash.
//!
//! Frames decode independently (on any thread); [`UnitVerifier`] sees them in
//! order and checks each unit's hash when its last frame has passed.

use std::ops::Range;

use crate::archive::ReadAt;
use crate::archive::frame::{check_hole_frame, check_padding_frame, decompress_frame};
use crate::archive::index::{ArchiveIndex, FrameRole, read_range};
use crate::archive::tar::member_header;
use crate::parallel::ordered_map;
use crate::{Error, Result};

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A disk member's tar header (already checked against the manifest).
    Header {
        /// Unit index.
        unit: usize,
        /// The header bytes.
        bytes: Vec<u8>,
    },
    /// Present blocks of a disk.
    Data {
        /// Unit index.
        unit: usize,
        /// Disk index.
        disk: usize,
        /// First block.
        first_block: u64,
        /// The blocks' bytes.
        bytes: Vec<u8>,
    },
    /// Absent blocks (verified to be zeros; never written back).
    Hole {
        /// Unit index.
        unit: usize,
        /// Disk index.
        disk: usize,
        /// First block.
        first_block: u64,
        /// Number of blocks.
        blocks: u64,
    },
    /// Skippable padding.
    Padding {
        /// Unit index.
        unit: usize,
    },
}

/// Decodes single frames; owns a zstd context, so keep one per thread.
pub struct FrameDecoder {
    dctx: zstd::bulk::Decompressor<'static>,
}

impl FrameDecoder {
    /// A decoder with a fresh zstd context.
    pub fn new() -> Result<Self> {
        let dctx =
            zstd::bulk::Decompressor::new().map_err(|e| Error::io("creating a zstd context", e))?;
        Ok(Self { dctx })
    }

    /// Decodes frame `frame` of `index` from its bytes, verifying it.
    pub fn decode(&mut self, index: &ArchiveIndex, frame: usize, bytes: &[u8]) -> Result<Decoded> {
        let f = index.frames().get(frame).ok_or_else(|| {
            Error::InvalidInput(format!("frame {frame} is not in the archive").into())
        })?;
        let Some(unit) = f.role.unit() else {
            return Err(Error::InvalidInput(
                "the manifest frame is decoded when the index is built".into(),
            ));
        };
        let corrupt = |reason: String| Error::CorruptUnit {
            unit,
            reason: format!("frame {frame} at byte {}: {reason}", f.offset),
        };
        if bytes.len() as u64 != u64::from(f.entry.compressed) {
            return Err(corrupt(format!(
                "got {} bytes, the seek table says {}",
                bytes.len(),
                f.entry.compressed
            )));
        }
        let manifest = index.manifest();
        let disk = manifest.units[unit].disk;
        let expected = u64::from(f.entry.decompressed);
        Ok(match f.role {
            FrameRole::Header { unit } => {
                let bytes = decompress_frame(&mut self.dctx, bytes, expected).map_err(corrupt)?;
                let d = &manifest.disks[disk];
                if bytes != member_header(&d.member, d.volume_size, manifest.mtime()?) {
                    return Err(corrupt(format!(
                        "tar header does not match disk {:?} in the manifest",
                        d.member
                    )));
                }
                Decoded::Header { unit, bytes }
            }
            FrameRole::Data {
                unit, first_block, ..
            } => {
                let bytes = decompress_frame(&mut self.dctx, bytes, expected).map_err(corrupt)?;
                Decoded::Data {
                    unit,
                    disk,
                    first_block,
                    bytes,
                }
            }
            FrameRole::Hole {
                unit,
                first_block,
                blocks,
            } => {
                check_hole_frame(bytes, expected).map_err(corrupt)?;
                Decoded::Hole {
                    unit,
                    disk,
                    first_block,
                    blocks,
                }
            }
            FrameRole::Padding { unit } => {
                check_padding_frame(bytes).map_err(corrupt)?;
                Decoded::Padding { unit }
            }
            FrameRole::Manifest => unreachable!("handled above"),
        })
    }
}

/// Checks unit hashes as frames go by in order.
pub struct UnitVerifier<'a> {
    index: &'a ArchiveIndex,
    hasher: blake3::Hasher,
}

impl<'a> UnitVerifier<'a> {
    /// A verifier for `index`.
    pub fn new(index: &'a ArchiveIndex) -> Self {
        Self {
            index,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Observes decoded frame `frame`; frames of a unit must come in order, first
    /// to last. Fails when a unit's last frame completes a wrong hash.
    pub fn observe(&mut self, frame: usize, decoded: &Decoded) -> Result<()> {
        let unit = match decoded {
            Decoded::Header { unit, .. }
            | Decoded::Data { unit, .. }
            | Decoded::Hole { unit, .. }
            | Decoded::Padding { unit } => *unit,
        };
        let frames = self.index.unit_frames(unit);
        if frame == frames.start {
            self.hasher.reset();
        }
        if let Decoded::Header { bytes, .. } | Decoded::Data { bytes, .. } = decoded {
            self.hasher.update(bytes);
        }
        if frame + 1 == frames.end {
            let got = self.hasher.finalize().to_hex();
            let want = &self.index.manifest().units[unit].hash;
            if !got.as_str().eq_ignore_ascii_case(want) {
                return Err(Error::CorruptUnit {
                    unit,
                    reason: format!("BLAKE3 of its data is {got}, the manifest says {want}"),
                });
            }
        }
        Ok(())
    }
}

/// Reads, decodes and verifies units `units` from `src`, decompressing on
/// `threads` threads, and hands each frame to `sink` in object order. Memory is
/// bounded by a few frames per thread.
pub fn read_units(
    index: &ArchiveIndex,
    src: &dyn ReadAt,
    units: Range<usize>,
    threads: usize,
    mut sink: impl FnMut(Decoded) -> Result<()>,
) -> Result<()> {
    if units.end > index.manifest().units.len() || units.start > units.end {
        return Err(Error::InvalidInput(
            format!(
                "units {units:?} are not in the archive's {} units",
                index.manifest().units.len()
            )
            .into(),
        ));
    }
    if units.is_empty() {
        return Ok(());
    }
    let frames = index.unit_frames(units.start).start..index.unit_frames(units.end - 1).end;
    let inputs = frames.map(|i| read_range(src, index.frames()[i].range()).map(|bytes| (i, bytes)));
    let mut verifier = UnitVerifier::new(index);
    ordered_map(
        threads,
        inputs,
        FrameDecoder::new,
        |decoder, (i, bytes)| decoder.decode(index, i, &bytes).map(|d| (i, d)),
        |(i, decoded)| {
            verifier.observe(i, &decoded)?;
            sink(decoded)
        },
    )
    .map_err(|e| locate(index, e))
}

/// Adds where a corrupt unit lies (disk member and blocks) to its error.
fn locate(index: &ArchiveIndex, err: Error) -> Error {
    match err {
        Error::CorruptUnit { unit, reason } => {
            let m = index.manifest();
            let u = &m.units[unit];
            Error::CorruptUnit {
                unit,
                reason: format!(
                    "{reason} (disk {}, blocks {}..{})",
                    m.disks[u.disk].member,
                    u.first_block,
                    u.first_block + u.block_count
                ),
            }
        }
        other => other,
    }
}

/// Opens `data` as an archive and verifies all of it. The fuzz target and the
/// corpus-replay test call this: it must return, never panic, on any input.
#[doc(hidden)]
pub fn fuzz_open_and_verify(data: &[u8]) -> Result<()> {
    let src = data.to_vec();
    let index = ArchiveIndex::open(&src)?;
    read_units(&index, &src, 0..index.manifest().units.len(), 1, |_| Ok(()))
}
