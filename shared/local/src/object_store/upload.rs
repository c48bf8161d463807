//! One multipart upload's staging folder, which joins parts into the object as
//! they arrive instead of all at completion.
//!
//! ```text
//! <upload>/upload.json           key, metadata, tags
//! <upload>/part-NNNNN.<etag>     a part not (yet) joined
//! <upload>/object                parts 1..=k, joined in order
//! <upload>/joined.json           which parts `object` holds (number, ETag, length)
//! <upload>/.lock                 held while the folder changes
//! ```
//!
//! A part that continues the joined run (and any staged parts that then follow
//! it) is appended to `object` at once, made durable, and its own file
//! removed. So the copying overlaps the work of producing later parts, and
//! completion, in the common case, appends only the last part. A part is
//! durable when its upload returns, as on S3: joined ones through `object`,
//! others through their own file. Uploading an already joined part again (a
//! retry) splits the joined run back into files from that part on.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use amistore_core::ids::unique_token;
use amistore_core::ports::CompletedPart;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::{Detail, Error, Result};

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::io(context, e)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JoinedPart {
    number: u32,
    etag: String,
    len: u64,
}

/// An upload's staging folder, locked for as long as the value lives.
pub(super) struct Staging {
    dir: PathBuf,
    _lock: File,
}

impl Staging {
    /// Locks the staging folder `dir` (which must exist).
    pub(super) fn lock(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let lock = crate::private::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    fn part_path(&self, number: u32, etag: &str) -> PathBuf {
        self.dir.join(format!("part-{number:05}.{etag}"))
    }

    /// Staged (not joined) versions of part `number`.
    fn staged(&self, number: u32) -> Result<Vec<PathBuf>> {
        let prefix = format!("part-{number:05}.");
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        Ok(entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect())
    }

    fn joined(&self) -> Vec<JoinedPart> {
        // A missing or unreadable record means nothing is joined: the object
        // file is then cut back to nothing and rebuilt.
        fs::read(self.dir.join("joined.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn set_joined(&self, parts: &[JoinedPart]) -> Result<()> {
        let json = serde_json::to_vec(parts).map_err(|e| {
            Error::InvalidInput(Detail::because("joined parts do not serialise", e))
        })?;
        super::write_atomically(&self.dir.join("joined.json"), &json)
    }

    fn object(&self) -> Result<File> {
        let path = self.dir.join("object");
        crate::private::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))
    }

    /// The object file, cut to `end` bytes and positioned there for appending.
    fn object_cut_at(&self, end: u64) -> Result<File> {
        let mut object = self.object()?;
        object
            .set_len(end)
            .map_err(io("cutting the joined object"))?;
        object
            .seek(SeekFrom::Start(end))
            .map_err(io("seeking the joined object"))?;
        Ok(object)
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing {}", self.dir.display())))
    }

    /// Stores part `number` (put in place by `place`, given its path) and joins
    /// what can be joined. Returns the part's ETag.
    pub(super) fn stage(
        &self,
        number: u32,
        place: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<String> {
        let etag = unique_token()[..32].to_owned();
        let previous = self.staged(number)?;
        let path = self.part_path(number, &etag);
        place(&path)?;
        for old in previous {
            let _ = fs::remove_file(old);
        }
        if self.joined().iter().any(|p| p.number == number) {
            self.split_from(number, Some(number))?;
        }
        if !self.join_ready()? {
            // Not joined: the part's own file must be durable.
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(format!("syncing {}", path.display())))?;
        }
        self.sync_dir()?;
        Ok(etag)
    }

    /// Moves joined parts from `number` on back into files of their own (their
    /// bytes copied out of the object), except `skip` (a part being replaced).
    fn split_from(&self, number: u32, skip: Option<u32>) -> Result<()> {
        let mut joined = self.joined();
        let keep = joined.iter().take_while(|p| p.number < number).count();
        let object = self.object()?;
        let mut offset: u64 = joined[..keep].iter().map(|p| p.len).sum();
        let cut = offset;
        for part in &joined[keep..] {
            if Some(part.number) != skip {
                let mut bytes = vec![0u8; part.len as usize];
                object
                    .read_exact_at(&mut bytes, offset)
                    .map_err(io("reading a joined part"))?;
                super::write_atomically(&self.part_path(part.number, &part.etag), &bytes)?;
            }
            offset += part.len;
        }
        joined.truncate(keep);
        self.set_joined(&joined)?;
        object.set_len(cut).map_err(io("cutting the joined object"))
    }

    /// Appends the staged parts that continue the joined run; returns whether
    /// any was appended. They are durable when this returns.
    fn join_ready(&self) -> Result<bool> {
        let mut joined = self.joined();
        // Bytes past the recorded end are from an append a crash interrupted.
        let mut object = self.object_cut_at(joined.iter().map(|p| p.len).sum())?;
        let mut appended = Vec::new();
        loop {
            let number = joined.len() as u32 + 1;
            let Some(path) = self.staged(number)?.into_iter().next() else {
                break;
            };
            let etag = etag_of(&path)?;
            let mut src = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
            let len = std::io::copy(&mut src, &mut object)
                .map_err(io(format!("joining {}", path.display())))?;
            joined.push(JoinedPart { number, etag, len });
            appended.push(path);
        }
        if appended.is_empty() {
            return Ok(false);
        }
        object
            .sync_data()
            .map_err(io("syncing the joined object"))?;
        self.set_joined(&joined)?;
        for path in appended {
            let _ = fs::remove_file(path);
        }
        Ok(true)
    }

    /// Builds the object from exactly `parts`; returns its path and size. Every
    /// part but the last must be at least `min_part_size` bytes.
    pub(super) fn complete(
        &self,
        parts: &[CompletedPart],
        min_part_size: u64,
    ) -> Result<(PathBuf, u64)> {
        let joined = self.joined();
        let matches = |i: usize| {
            joined
                .get(i)
                .is_some_and(|j| j.number == parts[i].part_number && j.etag == parts[i].etag)
        };
        let prefix = (0..parts.len()).take_while(|&i| matches(i)).count();
        let mut sizes: Vec<u64> = joined[..prefix].iter().map(|p| p.len).collect();
        let files: Vec<PathBuf> = parts[prefix..]
            .iter()
            .map(|p| self.part_path(p.part_number, &p.etag))
            .collect();
        if prefix < joined.len() {
            // The list leaves out joined parts: split the rest back into files.
            self.split_from(joined[prefix].number, None)?;
        }
        for (part, path) in parts[prefix..].iter().zip(&files) {
            let len = fs::metadata(path)
                .map_err(|_| {
                    Error::InvalidInput(
                        format!(
                            "part {} with ETag {} was not uploaded (InvalidPart)",
                            part.part_number, part.etag
                        )
                        .into(),
                    )
                })?
                .len();
            sizes.push(len);
        }
        if let Some((i, size)) = sizes[..sizes.len() - 1]
            .iter()
            .enumerate()
            .find(|(_, s)| **s < min_part_size)
        {
            return Err(Error::InvalidInput(format!(
                "part {} is {size} bytes; every part but the last must be at least {min_part_size} (EntityTooSmall)",
                parts[i].part_number
            ).into()));
        }
        let mut end: u64 = sizes[..prefix].iter().sum();
        let mut object = self.object_cut_at(end)?;
        for path in &files {
            let mut src = File::open(path).map_err(io(format!("opening {}", path.display())))?;
            end += std::io::copy(&mut src, &mut object)
                .map_err(io(format!("joining {}", path.display())))?;
        }
        object.sync_all().map_err(io("syncing the object"))?;
        Ok((self.dir.join("object"), end))
    }
}

fn etag_of(path: &Path) -> Result<String> {
    path.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::io(
                format!("reading the ETag of {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no ETag extension"),
            )
        })
}
