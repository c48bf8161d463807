//! Writing an archive: one unit at a time, each independently (so units can be
//! written by different workers, in any order, as S3 multipart parts), then the
//! final part with the manifest, the end of the tar stream and the seek table.

use std::io::Write;
use std::ops::Range;
use std::sync::Mutex;

use crate::archive::frame::{FrameCompressor, hole_frames, padding_frame};
use crate::archive::manifest::{
    FORMAT_NAME, FORMAT_VERSION, MANIFEST_MEMBER, Manifest, UNIT_HASH, Unit,
};
use crate::archive::plan::{ArchivePlan, FrameJob};
use crate::archive::seek_table::{self, FrameEntry, MAX_FRAMES};
use crate::archive::tar::{END_OF_ARCHIVE_LEN, member_header, padding_len};
use crate::blocks::BLOCK_SIZE;
use crate::parallel::ordered_map;
use crate::{Detail, Error, Result};

/// Reads present blocks of the disks being archived.
pub trait BlockSource: Sync {
    /// Fills `buf` (a whole number of blocks) with the blocks of disk `disk`
    /// starting at `first_block`.
    fn read_blocks(&self, disk: usize, first_block: u64, buf: &mut [u8]) -> Result<()>;
}

/// What writing one unit produced: everything the final part needs to know.
/// It serialises, so units written by different workers can be finished by another.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitRecord {
    /// Index of the unit in the plan.
    pub unit: usize,
    /// Bytes written, padding included.
    pub compressed_len: u64,
    /// Bytes the unit decompresses to.
    pub decompressed_len: u64,
    /// BLAKE3 of the header and data frames' decompressed bytes.
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
    /// Seek-table entries of the unit's frames, in order.
    pub frames: Vec<FrameEntry>,
}

/// A 32-byte hash as 64 hex digits.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(blake3::Hash::from_bytes(*hash).to_hex().as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let hex = String::deserialize(d)?;
        blake3::Hash::from_hex(&hex)
            .map(|h| *h.as_bytes())
            .map_err(|e| D::Error::custom(format!("bad hash {hex:?}: {e}")))
    }
}

/// Writes the frames of one unit and keeps its accounts.
pub struct UnitWriter<W> {
    unit: usize,
    min_len: u64,
    out: W,
    hasher: blake3::Hasher,
    frames: Vec<FrameEntry>,
    compressed: u64,
    decompressed: u64,
}

impl<W: Write> UnitWriter<W> {
    /// Starts unit `unit`, writing to `out`; [`Self::finish`] pads it to `min_len` bytes.
    pub fn new(unit: usize, min_len: u64, out: W) -> Self {
        Self {
            unit,
            min_len,
            out,
            hasher: blake3::Hasher::new(),
            frames: Vec::new(),
            compressed: 0,
            decompressed: 0,
        }
    }

    fn write_frame(&mut self, frame: &[u8], decompressed: u64) -> Result<()> {
        self.out
            .write_all(frame)
            .map_err(|e| Error::io(format!("writing unit {}", self.unit), e))?;
        self.frames.push(FrameEntry {
            compressed: frame.len() as u32,
            decompressed: decompressed as u32,
        });
        self.compressed += frame.len() as u64;
        self.decompressed += decompressed;
        Ok(())
    }

    /// Appends a data (or header) frame: `frame` is `raw` compressed.
    pub fn data_frame(&mut self, raw: &[u8], frame: &[u8]) -> Result<()> {
        self.hasher.update(raw);
        self.write_frame(frame, raw.len() as u64)
    }

    /// Appends hole frames for `blocks` absent blocks.
    pub fn holes(&mut self, blocks: u64) -> Result<()> {
        for (frame, count) in hole_frames(blocks) {
            self.write_frame(frame, count * BLOCK_SIZE)?;
        }
        Ok(())
    }

    /// Pads the unit to its minimum length and returns the output and record.
    pub fn finish(mut self) -> Result<(W, UnitRecord)> {
        if self.compressed < self.min_len {
            let pad = padding_frame((self.min_len - self.compressed) as usize);
            self.write_frame(&pad, 0)?;
        }
        self.out
            .flush()
            .map_err(|e| Error::io(format!("writing unit {}", self.unit), e))?;
        let record = UnitRecord {
            unit: self.unit,
            compressed_len: self.compressed,
            decompressed_len: self.decompressed,
            hash: *self.hasher.finalize().as_bytes(),
            frames: self.frames,
        };
        Ok((self.out, record))
    }
}

/// Frame-sized buffers handed back for reuse: the writer moves two 8 MiB buffers
/// per frame between threads, and fresh allocations would cost a page fault per
/// 4 KiB.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 64 {
            pool.push(buf);
        }
    }
}

enum Raw {
    /// Bytes to compress; `blocks` is false for a tar header.
    Bytes {
        raw: Vec<u8>,
        blocks: bool,
    },
    Holes(u64),
}

enum Compressed {
    Frame {
        raw: Vec<u8>,
        frame: Vec<u8>,
        blocks: bool,
    },
    Holes(u64),
}

/// Writes unit `unit` of `plan` to `out`, compressing frames on `threads` threads.
/// `progress` is called with the number of present-block bytes done.
pub fn encode_unit<W: Write>(
    plan: &ArchivePlan,
    unit: usize,
    source: &dyn BlockSource,
    threads: usize,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, UnitRecord)> {
    let (out, mut records) = encode_units(plan, unit..unit + 1, source, threads, out, progress)?;
    let record = records
        .pop()
        .ok_or_else(|| Error::InvalidInput(format!("unit {unit} is not in the plan").into()))?;
    Ok((out, record))
}

/// Writes units `units` of `plan` one after another to `out`. One pipeline spans
/// all of them, so the workers never drain and refill at a unit boundary.
pub fn encode_units<W: Write>(
    plan: &ArchivePlan,
    units: Range<usize>,
    source: &dyn BlockSource,
    threads: usize,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, Vec<UnitRecord>)> {
    if units.end > plan.units.len() {
        return Err(Error::InvalidInput(
            format!(
                "units {units:?} are not all in the plan's {} units",
                plan.units.len()
            )
            .into(),
        ));
    }
    let pool = BufferPool::default();
    let pool = &pool;
    let inputs = units.clone().flat_map(|unit| {
        let disk = plan.units[unit].disk;
        plan.unit_frame_jobs(unit)
            .into_iter()
            .map(move |job| match job {
                FrameJob::Header(raw) => Ok((unit, Raw::Bytes { raw, blocks: false })),
                FrameJob::Data { first_block, count } => {
                    let mut buf = pool.take();
                    // Every byte is overwritten by the read, so reused contents don't matter.
                    buf.resize((count * BLOCK_SIZE) as usize, 0);
                    source.read_blocks(disk, first_block, &mut buf)?;
                    Ok((
                        unit,
                        Raw::Bytes {
                            raw: buf,
                            blocks: true,
                        },
                    ))
                }
                FrameJob::Hole { count } => Ok((unit, Raw::Holes(count))),
            })
    });
    let mut records = Vec::with_capacity(units.len());
    // The output moves into the writer of the unit being written, and back out
    // when that unit finishes.
    let mut idle_out = Some(out);
    let mut writer: Option<UnitWriter<W>> = None;
    ordered_map(
        threads,
        inputs,
        || FrameCompressor::new().map_err(|e| Error::io("creating a zstd compressor", e)),
        |zstd, (unit, raw)| match raw {
            Raw::Bytes { raw, blocks } => {
                let mut frame = pool.take();
                zstd.compress_into(&raw, &mut frame)
                    .map_err(|e| Error::io("compressing a frame", e))?;
                Ok((unit, Compressed::Frame { raw, frame, blocks }))
            }
            Raw::Holes(n) => Ok((unit, Compressed::Holes(n))),
        },
        |(unit, done)| {
            if writer.as_ref().map(|w| w.unit) != Some(unit) {
                if let Some(finished) = writer.take() {
                    let (out, record) = finished.finish()?;
                    records.push(record);
                    idle_out = Some(out);
                }
                let out = idle_out
                    .take()
                    .ok_or_else(|| Error::InvalidInput("output lost between units".into()))?;
                writer = Some(UnitWriter::new(unit, plan.min_part_size, out));
            }
            let w = writer
                .as_mut()
                .ok_or_else(|| Error::InvalidInput("no unit is being written".into()))?;
            match done {
                Compressed::Frame { raw, frame, blocks } => {
                    w.data_frame(&raw, &frame)?;
                    if blocks {
                        progress(raw.len() as u64);
                    }
                    pool.give(raw);
                    pool.give(frame);
                    Ok(())
                }
                Compressed::Holes(n) => w.holes(n),
            }
        },
    )?;
    let out = match writer {
        Some(last) => {
            let (out, record) = last.finish()?;
            records.push(record);
            out
        }
        None => idle_out.ok_or_else(|| Error::InvalidInput("output lost".into()))?,
    };
    Ok((out, records))
}

/// The archive's last part and the manifest it holds.
#[derive(Debug, Clone)]
pub struct FinalPart {
    /// Bytes of the part: the manifest frame and the seek table.
    pub bytes: Vec<u8>,
    /// The manifest written into it.
    pub manifest: Manifest,
}

impl ArchivePlan {
    /// Builds the final part from the records of every unit (in any order).
    pub fn final_part(&self, records: &[UnitRecord]) -> Result<FinalPart> {
        let mut ordered: Vec<&UnitRecord> = records.iter().collect();
        ordered.sort_by_key(|r| r.unit);
        if ordered.len() != self.units.len() || ordered.iter().enumerate().any(|(i, r)| r.unit != i)
        {
            return Err(Error::InvalidInput(format!(
                "the final part needs exactly one record for each of the {} units, got units {:?}",
                self.units.len(),
                ordered.iter().map(|r| r.unit).collect::<Vec<_>>()
            ).into()));
        }
        let mut offset = 0;
        let mut units = Vec::with_capacity(ordered.len());
        for (plan, rec) in self.units.iter().zip(&ordered) {
            if rec.decompressed_len != plan.decompressed_len() {
                return Err(Error::InvalidInput(
                    format!(
                        "unit {} decompresses to {} bytes, its plan says {}",
                        rec.unit,
                        rec.decompressed_len,
                        plan.decompressed_len()
                    )
                    .into(),
                ));
            }
            units.push(Unit {
                disk: plan.disk,
                first_block: plan.first_block,
                block_count: plan.block_count,
                header_len: plan.header_len,
                offset,
                compressed_len: rec.compressed_len,
                decompressed_len: rec.decompressed_len,
                hash: blake3::Hash::from_bytes(rec.hash).to_hex().to_string(),
            });
            offset += rec.compressed_len;
        }
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            stored_at: self.stored_at.clone(),
            unit_hash: UNIT_HASH.into(),
            image: self.image.clone(),
            disks: self.disks.clone(),
            units,
        };
        manifest.validate()?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::InvalidInput(Detail::because("manifest does not serialise", e)))?;
        let json_len = json.len() as u64;
        let mut content = member_header(MANIFEST_MEMBER, json_len, self.mtime());
        content.extend_from_slice(&json);
        content.resize(
            content.len() + (padding_len(json_len) + END_OF_ARCHIVE_LEN) as usize,
            0,
        );
        let frame = FrameCompressor::new()
            .and_then(|mut z| z.compress(&content))
            .map_err(|e| Error::io("compressing the manifest", e))?;

        let mut entries: Vec<FrameEntry> = ordered
            .iter()
            .flat_map(|r| r.frames.iter().copied())
            .collect();
        entries.push(FrameEntry {
            compressed: frame.len() as u32,
            decompressed: content.len() as u32,
        });
        if entries.len() > MAX_FRAMES as usize {
            return Err(Error::InvalidInput(
                format!(
                    "the archive would have {} frames; the format allows {MAX_FRAMES}",
                    entries.len()
                )
                .into(),
            ));
        }
        let mut bytes = frame;
        bytes.extend_from_slice(&seek_table::encode(&entries));
        Ok(FinalPart { bytes, manifest })
    }
}

/// Writes a whole archive to `out`, unit after unit, then the final part.
pub fn write_archive<W: Write>(
    plan: &ArchivePlan,
    source: &dyn BlockSource,
    threads: usize,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, Manifest)> {
    let (mut out, records) =
        encode_units(plan, 0..plan.units.len(), source, threads, out, progress)?;
    let last = plan.final_part(&records)?;
    out.write_all(&last.bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("writing the final part", e))?;
    Ok((out, last.manifest))
}
