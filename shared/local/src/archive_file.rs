//! Archives as local files: pack raw disks into one, verify one, extract one
//! back into sparse raw files, and summarise one.
//!
//! Outputs appear only when complete: they are written under temporary names
//! and renamed into place at the end, and removed if anything fails.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use amistore_core::archive::{
    ArchiveIndex, ArchivePlan, Decoded, DiskSource, Manifest, read_units, write_archive,
};
use amistore_core::image::{DeviceName, ImageSpec};
use serde::Serialize;
use time::OffsetDateTime;

use crate::raw_disk::{RawDisks, SparseFile, open_image_disks};
use crate::{Detail, Error, Progress, Result};

/// A path that is deleted on drop unless it was kept.
struct Partial(Option<PathBuf>);

impl Partial {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn partial_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Start writing back to disk every this many bytes.
const WRITE_BEHIND_BYTES: u64 = 64 << 20;

/// A file writer that asks a helper thread to flush what has been written every
/// [`WRITE_BEHIND_BYTES`], so the fsync that precedes the final rename finds
/// little left to write instead of the whole archive.
struct WriteBehind {
    file: File,
    unsynced: u64,
    wake: std::sync::mpsc::SyncSender<()>,
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= WRITE_BEHIND_BYTES {
            self.unsynced = 0;
            // A flush already queued covers this one too.
            let _ = self.wake.try_send(());
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Runs `write` with a [`WriteBehind`] over `file`, then makes the file durable.
fn write_durably<T>(
    file: File,
    path: &Path,
    write: impl FnOnce(&mut BufWriter<WriteBehind>) -> Result<T>,
) -> Result<T> {
    let flusher = file
        .try_clone()
        .map_err(|e| Error::io(format!("opening {} twice", path.display()), e))?;
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::scope(|scope| {
        // Linux reports a writeback error to one fsync only, so an error seen here
        // must be returned, not left for the final sync to (not) find.
        let flushing = scope.spawn(move || -> std::io::Result<()> {
            for () in woken {
                flusher.sync_data()?;
            }
            Ok(())
        });
        let mut out = BufWriter::with_capacity(
            1 << 20,
            WriteBehind {
                file,
                unsynced: 0,
                wake,
            },
        );
        let value = write(&mut out)?;
        let inner = out
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", path.display()), e.into_error()))?;
        let WriteBehind { file, wake, .. } = inner;
        drop(wake);
        flushing
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the flushing thread panicked")))
            .map_err(|e| Error::io(format!("flushing {}", path.display()), e))?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
        Ok(value)
    })
}

fn refuse_existing(path: &Path, force: bool) -> Result<()> {
    if !force && path.symlink_metadata().is_ok() {
        return Err(crate::output_exists(path));
    }
    Ok(())
}

/// Packs raw disk files into an archive at `out`. Returns the manifest written.
pub fn pack(
    out: &Path,
    spec: &ImageSpec,
    disks: &[(DeviceName, PathBuf)],
    threads: usize,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    refuse_existing(out, force)?;
    let (image, opened) = open_image_disks(spec, disks)?;
    let sources = opened
        .iter()
        .map(|(device, r)| DiskSource {
            device_name: device.clone(),
            snapshot_id: None,
            volume_size: r.size,
            present: r.present.clone(),
            tags: vec![],
        })
        .collect();
    // A local file is not uploaded in parts, so units need no S3 padding.
    let plan = ArchivePlan::new(image, sources, OffsetDateTime::now_utc())?.with_min_part_size(0);
    let source = RawDisks(opened.into_iter().map(|(_, r)| r).collect());
    progress.begin(
        source
            .0
            .iter()
            .map(|d| d.present.present_count() * amistore_core::blocks::BLOCK_SIZE)
            .sum(),
    );

    let tmp = partial_path(out);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let guard = Partial(Some(tmp.clone()));
    let manifest = write_durably(file, &tmp, |out| {
        let (_, manifest) =
            write_archive(&plan, &source, threads, out, &mut |n| progress.advance(n))?;
        Ok(manifest)
    })?;
    fs::rename(&tmp, out).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", tmp.display(), out.display()),
            e,
        )
    })?;
    guard.keep();
    Ok(manifest)
}

fn open_archive(path: &Path) -> Result<(File, ArchiveIndex)> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let index = ArchiveIndex::open(&file)?;
    Ok((file, index))
}

/// What a full verification covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// Units checked.
    pub units: usize,
    /// Frames checked.
    pub frames: usize,
    /// Bytes of present blocks decoded and hashed.
    pub present_bytes: u64,
}

/// Checks every frame, hash and table of the archive at `path`.
pub fn verify(path: &Path, threads: usize, progress: &mut dyn Progress) -> Result<Verified> {
    let (file, index) = open_archive(path)?;
    let units = index.manifest().units.len();
    progress.begin(index.manifest().present_bytes());
    let mut present_bytes = 0;
    read_units(&index, &file, 0..units, threads, |decoded| {
        if let Decoded::Data { bytes, .. } = decoded {
            present_bytes += bytes.len() as u64;
            progress.advance(bytes.len() as u64);
        }
        Ok(())
    })?;
    Ok(Verified {
        units,
        frames: index.frames().len(),
        present_bytes,
    })
}

/// Extracts the archive at `path` into `dir`: one sparse raw file per disk, named
/// as its tar member, and `manifest.json`. Everything is verified on the way.
pub fn extract(
    path: &Path,
    dir: &Path,
    threads: usize,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let (file, index) = open_archive(path)?;
    let manifest = index.manifest().clone();
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let targets: Vec<PathBuf> = manifest
        .disks
        .iter()
        .map(|d| dir.join(&d.member))
        .chain([dir.join(amistore_core::archive::manifest::MANIFEST_MEMBER)])
        .collect();
    for target in &targets {
        refuse_existing(target, force)?;
    }
    let partials: Vec<PathBuf> = targets.iter().map(|t| partial_path(t)).collect();
    let mut guards = Vec::new();
    let mut outputs = Vec::new();
    for (disk, tmp) in manifest.disks.iter().zip(&partials) {
        outputs.push(SparseFile::create(tmp, disk.volume_size)?);
        guards.push(Partial(Some(tmp.clone())));
    }
    let manifest_tmp = partials.last().cloned().unwrap_or_default();
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::InvalidInput(Detail::because("manifest does not serialise", e)))?;
    guards.push(Partial(Some(manifest_tmp.clone())));
    File::create_new(&manifest_tmp)
        .and_then(|mut f| f.write_all(&json))
        .map_err(|e| Error::io(format!("writing {}", manifest_tmp.display()), e))?;

    progress.begin(manifest.present_bytes());
    read_units(&index, &file, 0..manifest.units.len(), threads, |decoded| {
        if let Decoded::Data {
            disk,
            first_block,
            bytes,
            ..
        } = decoded
        {
            outputs[disk].write_blocks(first_block, &bytes)?;
            progress.advance(bytes.len() as u64);
        }
        Ok(())
    })?;
    for out in &outputs {
        out.sync()?;
    }
    for (tmp, target) in partials.iter().zip(&targets) {
        fs::rename(tmp, target).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), target.display()),
                e,
            )
        })?;
    }
    guards.into_iter().for_each(Partial::keep);
    Ok(manifest)
}

/// One disk in an archive summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSummary {
    /// Device name.
    pub device_name: String,
    /// tar member.
    pub member: String,
    /// Source snapshot, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Volume size in bytes.
    pub volume_size: u64,
    /// Bytes of present blocks.
    pub present_bytes: u64,
}

/// What `archive inspect` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// AMI name.
    pub name: String,
    /// AMI description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Source AMI id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_image_id: Option<String>,
    /// Architecture.
    pub architecture: String,
    /// Boot mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    /// Root device.
    pub root_device_name: String,
    /// When it was stored.
    pub stored_at: String,
    /// Format version.
    pub format_version: u32,
    /// The disks.
    pub disks: Vec<DiskSummary>,
    /// Units (parts).
    pub units: usize,
    /// Sum of volume sizes.
    pub volume_bytes: u64,
    /// Sum of present bytes.
    pub present_bytes: u64,
    /// Size of the archive.
    pub archive_bytes: u64,
    /// `presentBytes / archiveBytes`.
    pub compression_ratio: f64,
    /// AMI tags as `{key: value}`.
    pub tags: serde_json::Map<String, serde_json::Value>,
}

/// Reads the summary of the archive at `path` (footer and manifest only).
pub fn summary(path: &Path) -> Result<Summary> {
    let (_, index) = open_archive(path)?;
    let m = index.manifest();
    let present_bytes = m.present_bytes();
    Ok(Summary {
        name: m.image.name.to_string(),
        description: m.image.description.clone(),
        source_image_id: m.image.source_image_id.clone(),
        architecture: m.image.architecture.to_string(),
        boot_mode: m.image.boot_mode.map(|b| b.to_string()),
        root_device_name: m.image.root_device_name.to_string(),
        stored_at: m.stored_at.clone(),
        format_version: m.version,
        disks: m
            .disks
            .iter()
            .map(|d| DiskSummary {
                device_name: d.device_name.to_string(),
                member: d.member.clone(),
                snapshot_id: d.snapshot_id.clone(),
                volume_size: d.volume_size,
                present_bytes: d.present_bytes(),
            })
            .collect(),
        units: m.units.len(),
        volume_bytes: m.disks.iter().map(|d| d.volume_size).sum(),
        present_bytes,
        archive_bytes: index.object_len(),
        compression_ratio: present_bytes as f64 / index.object_len().max(1) as f64,
        tags: m
            .image
            .tags
            .iter()
            .map(|t| (t.key().to_owned(), t.value().into()))
            .collect(),
    })
}
