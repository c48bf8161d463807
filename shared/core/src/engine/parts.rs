//! A store unit's output cut into S3 parts as it is written, each uploaded
//! while the rest of the unit is still being read and compressed, so that
//! once the last block is read only the last piece is left to upload.
//!
//! A unit owns a fixed run of part numbers (`parts_per_unit` of them, chosen
//! at planning so that every unit and the final part fit S3's 10,000), and
//! its pieces take them in order: the object's bytes stay in unit order
//! whatever the pieces' sizes. Every piece but an object's last must be at
//! least S3's 5 MiB, and a unit cannot know which piece is its last until it
//! ends. So a full piece is held back until `min` bytes follow it, and a
//! shorter tail is appended to the piece held back instead of becoming a part
//! of its own. Units are padded to `min` (see
//! [`crate::archive::ArchivePlan::min_part_size`]), so a unit alone is never
//! too short.
//!
//! At most one piece is uploading and one waiting, each in a spool file, so
//! disk use stays under about four pieces whatever the unit's size, and a
//! slow upload holds the encoder back instead of filling the disk.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc;

use crate::archive::ArchivePlan;
use crate::archive::plan::MAX_PARTS;
use crate::blocks::BLOCK_SIZE;
use crate::engine::SpoolFile;
use crate::ports::{CompletedPart, ObjectStore};
use crate::storage::{BucketName, ObjectKey};
use crate::{Error, Result};

/// Most parts one unit is cut into.
pub const MAX_PARTS_PER_UNIT: u32 = 16;

/// Parts each of `units` units may use: as many as S3's 10,000 leave beside
/// the final part, at most [`MAX_PARTS_PER_UNIT`].
pub fn parts_per_unit(units: u64) -> u32 {
    let fit = (MAX_PARTS - 1) / units.max(1);
    u32::try_from(fit.clamp(1, u64::from(MAX_PARTS_PER_UNIT))).unwrap_or(1)
}

/// Where a unit's pieces go: one multipart upload, from part `first_part`.
pub struct PartTarget<'a> {
    /// The object store.
    pub objects: &'a dyn ObjectStore,
    /// The upload's bucket.
    pub bucket: &'a BucketName,
    /// The upload's key.
    pub key: &'a ObjectKey,
    /// The multipart upload.
    pub upload: &'a str,
    /// The unit's first part number.
    pub first_part: u32,
    /// How many part numbers the unit owns.
    pub parts: u32,
}

/// How a unit's output is cut.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    /// A full piece's size (larger pieces, fewer parts).
    pub piece: u64,
    /// S3's least part size: no piece but the object's last may be smaller.
    pub min: u64,
}

impl Cut {
    /// The cut of unit `unit` of `plan` into `parts` parts: pieces of an
    /// equal share of its present bytes. Its compressed size is not known
    /// until it ends and is rarely larger, so an incompressible unit fills
    /// its parts and one that halves leaves a tail of about one piece.
    pub fn for_unit(plan: &ArchivePlan, unit: usize, parts: u32) -> Result<Self> {
        let planned = plan
            .units
            .get(unit)
            .ok_or_else(|| Error::InvalidInput(format!("the plan has no unit {unit}").into()))?;
        let present = plan
            .disks
            .get(planned.disk)
            .map_or(planned.block_count, |d| {
                d.present
                    .present_in(planned.first_block..planned.first_block + planned.block_count)
            });
        Ok(Self {
            piece: (planned.header_len + present * BLOCK_SIZE).div_ceil(u64::from(parts.max(1))),
            min: plan.min_part_size,
        })
    }
}

/// Runs `encode` into a writer that cuts its output into pieces as `cut`
/// says and uploads each to `target` while `encode` goes on. Returns what
/// `encode` returned and the parts uploaded, in order. Spool files go in
/// `spool_dir`, named after `name`.
pub fn encode_in_parts<T>(
    target: &PartTarget<'_>,
    cut: Cut,
    spool_dir: &Path,
    name: &str,
    encode: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<(T, Vec<CompletedPart>)> {
    let (send, pieces) = mpsc::sync_channel::<(u32, SpoolFile)>(1);
    std::thread::scope(|s| {
        let uploader = s.spawn(move || -> Result<Vec<CompletedPart>> {
            let mut done = Vec::new();
            for (index, piece) in pieces {
                let part_number = target.first_part + index;
                let etag = target.objects.upload_part(
                    target.bucket,
                    target.key,
                    target.upload,
                    part_number,
                    &piece.path,
                )?;
                done.push(CompletedPart { part_number, etag });
            }
            Ok(done)
        });
        let encoded = (|| {
            let mut writer = PieceWriter {
                spool_dir,
                name,
                cut,
                max_pieces: target.parts.max(1),
                current: None,
                held: None,
                sealed: 0,
                send,
            };
            let value = encode(&mut writer)?;
            writer.finish()?;
            Ok(value)
        })();
        // The writer (and so the channel) is gone: the uploader ends.
        let uploaded = uploader.join().unwrap_or_else(|_| {
            Err(Error::Transient(
                "the part uploader stopped unexpectedly".into(),
            ))
        });
        // An upload that failed stops the writer too; its error is the cause.
        match (encoded, uploaded) {
            (_, Err(e)) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(value), Ok(parts)) => Ok((value, parts)),
        }
    })
}

struct Piece {
    spool: SpoolFile,
    file: File,
    len: u64,
}

struct PieceWriter<'a> {
    spool_dir: &'a Path,
    name: &'a str,
    cut: Cut,
    max_pieces: u32,
    current: Option<Piece>,
    /// A full piece not yet known to be followed by `min` bytes.
    held: Option<Piece>,
    /// Pieces made full so far (sent or held).
    sealed: u32,
    send: mpsc::SyncSender<(u32, SpoolFile)>,
}

fn stopped() -> io::Error {
    io::Error::other("the part upload stopped")
}

impl PieceWriter<'_> {
    fn send(&self, index: u32, piece: Piece) -> io::Result<()> {
        drop(piece.file);
        self.send.send((index, piece.spool)).map_err(|_| stopped())
    }

    fn current(&mut self) -> io::Result<&mut Piece> {
        if self.current.is_none() {
            let index = self.sealed;
            let (spool, file) =
                SpoolFile::create(self.spool_dir, &format!("{}-{index}", self.name))
                    .map_err(io::Error::other)?;
            self.current = Some(Piece {
                spool,
                file,
                len: 0,
            });
        }
        self.current.as_mut().ok_or_else(stopped)
    }

    /// Sends the held piece once `min` bytes follow it.
    fn release_held(&mut self) -> io::Result<()> {
        let enough = self.current.as_ref().is_some_and(|c| c.len >= self.cut.min);
        if enough && let Some(held) = self.held.take() {
            self.send(self.sealed - 1, held)?;
        }
        Ok(())
    }

    /// Ends the unit: sends what is left, a short tail joined to the piece
    /// held back.
    fn finish(mut self) -> Result<()> {
        self.release_held()
            .map_err(|e| Error::io("uploading a part", e))?;
        let index = self.sealed;
        match (self.held.take(), self.current.take()) {
            (Some(mut held), Some(tail)) => {
                let mut from = File::open(&tail.spool.path)
                    .map_err(|e| Error::io("reopening a unit's tail", e))?;
                io::copy(&mut from, &mut held.file)
                    .map_err(|e| Error::io("joining a unit's tail to its last part", e))?;
                self.send(index - 1, held)
            }
            (Some(held), None) => self.send(index - 1, held),
            (None, Some(tail)) => self.send(index, tail),
            (None, None) => Ok(()),
        }
        .map_err(|e| Error::io("uploading a part", e))
    }
}

impl Write for PieceWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let may_seal = self.sealed + 1 < self.max_pieces;
        let piece = self.cut.piece.max(self.cut.min).max(1);
        let current = self.current()?;
        let room = match may_seal {
            true => piece - current.len,
            false => u64::MAX,
        };
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        current.file.write_all(&buf[..n])?;
        current.len += n as u64;
        let full = may_seal && current.len == piece;
        self.release_held()?;
        if full {
            // Still held if the piece before it is: impossible, since a full
            // piece is at least `min`.
            self.held = self.current.take();
            self.sealed += 1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_get_as_many_parts_as_fit() {
        assert_eq!(parts_per_unit(1), MAX_PARTS_PER_UNIT);
        assert_eq!(parts_per_unit(624), 16);
        assert_eq!(parts_per_unit(1249), 8);
        assert_eq!(parts_per_unit(2000), 4);
        assert_eq!(parts_per_unit(4999), 2);
        assert_eq!(parts_per_unit(5000), 1);
        assert_eq!(parts_per_unit(9999), 1);
        for units in [1, 7, 1249, 1250, 3333, 4999, 5000, 9999] {
            assert!(
                units * u64::from(parts_per_unit(units)) < MAX_PARTS,
                "{units}"
            );
        }
    }
}
