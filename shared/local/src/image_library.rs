//! The local image library: AMIs kept on disk the way EC2 keeps them, each a JSON
//! record plus one sparse raw file per snapshot. It is the local adapter of two
//! ports: the image catalog and the snapshot store.
//!
//! ```text
//! <data-dir>/images/<ami-id>.json      the image record (metadata, snapshots, states)
//! <data-dir>/images/.lock              held while names are checked and records written
//! <data-dir>/snapshots/<snap-id>.raw   the snapshot's volume; holes are unwritten blocks
//! <data-dir>/snapshots/<snap-id>.json  a snapshot not yet part of an image
//! ```
//!
//! Images and snapshots are scoped to an owner account. A restore starts
//! `pending` snapshots, registers a `pending` image over them, writes blocks,
//! completes the snapshots and makes the image `available` (or `failed`).
//! Records are replaced atomically (write, sync, rename).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use amistore_core::archive::manifest::format_time;
use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::ids::{AccountId, ImageId, ResourceState, SnapshotId};
use amistore_core::image::{Encryption, ImageMetadata, ImageName, ImageSpec, Tag};
use amistore_core::ports::{Image, ImageCatalog, Snapshot, SnapshotInfo, SnapshotStore};
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::raw_disk::{RawDisk, SparseFile, copy_sparse, open_image_disks, present_blocks};
use crate::{Detail, Error, Result};

/// An image in the library (the catalog's description is the stored record).
pub type ImageRecord = Image;
/// One snapshot of an image in the library.
pub type SnapshotRecord = Snapshot;

/// A snapshot that no image uses yet: started by a restore, or by an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LooseSnapshot {
    snapshot_id: SnapshotId,
    owner_id: AccountId,
    volume_size: u64,
    state: ResourceState,
    #[serde(default)]
    tags: Vec<Tag>,
    client_token: String,
    /// When it was started (records written before this field have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
}

/// Where a snapshot's record lives.
enum Found {
    Loose(LooseSnapshot),
    InImage(Box<ImageRecord>, usize),
}

impl Found {
    fn owner(&self) -> &AccountId {
        match self {
            Found::Loose(l) => &l.owner_id,
            Found::InImage(i, _) => &i.owner_id,
        }
    }

    fn state(&self) -> ResourceState {
        match self {
            Found::Loose(l) => l.state,
            Found::InImage(i, n) => i.snapshots[*n].state,
        }
    }
}

/// The image library rooted in a data directory.
#[derive(Debug, Clone)]
pub struct ImageLibrary {
    images: PathBuf,
    snapshots: PathBuf,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::InvalidInput(Detail::because("record does not serialise", e)))?;
    crate::private::create(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        // Damaged local state is the server's failure, not the caller's input.
        .map_err(|e| {
            Error::io(
                format!("reading record {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

impl ImageLibrary {
    /// Opens (creating if needed) the library under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let images = data_dir.join("images");
        let snapshots = data_dir.join("snapshots");
        for dir in [&images, &snapshots] {
            crate::private::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Self { images, snapshots })
    }

    /// Where a snapshot's volume lives.
    pub fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.snapshots.join(format!("{id}.raw"))
    }

    fn loose_path(&self, id: &SnapshotId) -> PathBuf {
        self.snapshots.join(format!("{id}.json"))
    }

    fn record_path(&self, id: &ImageId) -> PathBuf {
        self.images.join(format!("{id}.json"))
    }

    /// Runs `f` holding the library's lock, so that checking a name and writing
    /// the record that takes it are one step for every process.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let path = self.images.join(".lock");
        let lock = crate::private::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        f()
    }

    fn all_images(&self) -> Result<Vec<ImageRecord>> {
        let entries = fs::read_dir(&self.images)
            .map_err(|e| Error::io(format!("listing {}", self.images.display()), e))?;
        let mut images = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io(format!("listing {}", self.images.display()), e))?
                .path();
            if path.extension().is_some_and(|x| x == "json") {
                images.push(read_json::<ImageRecord>(&path)?);
            }
        }
        images
            .sort_by(|a, b| (&a.creation_date, &a.image_id).cmp(&(&b.creation_date, &b.image_id)));
        Ok(images)
    }

    fn find_snapshot(&self, id: &SnapshotId) -> Result<Option<Found>> {
        let loose = self.loose_path(id);
        if loose.exists() {
            return Ok(Some(Found::Loose(read_json(&loose)?)));
        }
        for image in self.all_images()? {
            if let Some(n) = image.snapshots.iter().position(|s| s.snapshot_id == *id) {
                return Ok(Some(Found::InImage(Box::new(image), n)));
            }
        }
        Ok(None)
    }

    fn snapshot_of(&self, owner: Option<&AccountId>, id: &SnapshotId) -> Result<Found> {
        self.find_snapshot(id)?
            .filter(|f| owner.is_none_or(|o| f.owner() == o))
            .ok_or_else(|| Error::NotFound(format!("snapshot {id} does not exist").into()))
    }

    /// The loose snapshot `owner` started with `client_token`, for callers
    /// that hold the lock.
    fn loose_by_token(&self, owner: &AccountId, client_token: &str) -> Result<Option<SnapshotId>> {
        let entries = fs::read_dir(&self.snapshots)
            .map_err(|e| Error::io(format!("listing {}", self.snapshots.display()), e))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                let loose: LooseSnapshot = read_json(&path)?;
                if loose.client_token == client_token && loose.owner_id == *owner {
                    return Ok(Some(loose.snapshot_id));
                }
            }
        }
        Ok(None)
    }

    fn blocks_of(&self, id: &SnapshotId) -> Result<BlockRanges> {
        let path = self.snapshot_path(id);
        let file = File::open(&path).map_err(|e| Error::io(format!("opening snapshot {id}"), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading snapshot {id}"), e))?
            .len();
        present_blocks(&file, len).map_err(|e| Error::io(format!("listing blocks of {id}"), e))
    }

    /// Imports raw disk files as a new `available` image owned by `owner`.
    /// Holes are neither read nor stored. On any failure nothing is left behind.
    pub fn import(
        &self,
        owner: &AccountId,
        spec: &ImageSpec,
        disks: &[(amistore_core::image::DeviceName, PathBuf)],
    ) -> Result<ImageRecord> {
        let (metadata, opened) = open_image_disks(spec, disks)?;
        if self.image_name_taken(owner, &metadata.name)? {
            return Err(name_taken(owner, &metadata.name));
        }
        let token = format!("import-{}", amistore_core::ids::unique_token());
        let mut started = Vec::new();
        let imported = (|| {
            for (i, (_, disk)) in opened.iter().enumerate() {
                let id = self.start_snapshot(
                    owner,
                    disk.size,
                    &[],
                    &Encryption::default(),
                    &format!("{token}-{i}"),
                )?;
                started.push(id.clone());
                // Copied beside the snapshot, then moved over its empty volume.
                let tmp = self.snapshots.join(format!(".{id}.importing"));
                let _ = fs::remove_file(&tmp);
                copy_sparse(disk, &tmp)
                    .and_then(|()| {
                        fs::rename(&tmp, self.snapshot_path(&id))
                            .map_err(|e| Error::io(format!("placing snapshot {id}"), e))
                    })
                    .inspect_err(|_| {
                        let _ = fs::remove_file(&tmp);
                    })?;
                self.complete_snapshot(&id, disk.present.present_count())?;
            }
            let image = self.register_image(owner, &metadata, &started, &token)?;
            self.set_image_state(owner, &image, ResourceState::Available, None)?;
            self.describe_image(owner, &image)
        })();
        if imported.is_err() {
            for id in &started {
                let _ = self.delete_snapshot(id);
            }
        }
        imported
    }

    /// Writes an available image's disks into `dir` as sparse raw files named
    /// `disk<i>-<device>.raw` (the archive's member names). Returns their paths.
    pub fn export(
        &self,
        owner: &AccountId,
        id: &ImageId,
        dir: &Path,
        force: bool,
    ) -> Result<Vec<PathBuf>> {
        let record = self.describe_image(owner, id)?;
        if record.state != ResourceState::Available {
            return Err(Error::InvalidInput(
                format!("image {id} is {}, not available", record.state).into(),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut written = Vec::new();
        for (i, snapshot) in record.snapshots.iter().enumerate() {
            let target = dir.join(format!("disk{i}-{}.raw", snapshot.device_name.base()));
            if target.exists() {
                if !force {
                    return Err(crate::output_exists(&target));
                }
                fs::remove_file(&target)
                    .map_err(|e| Error::io(format!("replacing {}", target.display()), e))?;
            }
            // Written under a temporary name so a failed export leaves no half file.
            let tmp = dir.join(format!(".disk{i}.{}.partial", std::process::id()));
            let _ = fs::remove_file(&tmp);
            let copied = RawDisk::open(&self.snapshot_path(&snapshot.snapshot_id))
                .and_then(|disk| copy_sparse(&disk, &tmp))
                .and_then(|()| {
                    fs::rename(&tmp, &target)
                        .map_err(|e| Error::io(format!("renaming to {}", target.display()), e))
                });
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            written.push(target);
        }
        Ok(written)
    }
}

fn name_taken(owner: &AccountId, name: &ImageName) -> Error {
    Error::AlreadyExists(
        format!(
            "an image named {:?} already exists in account {owner}",
            name.as_str()
        )
        .into(),
    )
}

impl ImageCatalog for ImageLibrary {
    fn describe_image(&self, account: &AccountId, id: &ImageId) -> Result<Image> {
        let path = self.record_path(id);
        let record = match path.exists() {
            true => Some(read_json::<ImageRecord>(&path)?),
            false => None,
        };
        record
            .filter(|r| r.owner_id == *account)
            .ok_or_else(|| Error::NotFound(format!("image {id} does not exist").into()))
    }

    /// Every image `account` owns, oldest first.
    fn list_images(&self, account: &AccountId) -> Result<Vec<Image>> {
        let mut images = self.all_images()?;
        images.retain(|i| i.owner_id == *account);
        Ok(images)
    }

    fn image_name_taken(&self, account: &AccountId, name: &ImageName) -> Result<bool> {
        Ok(self
            .list_images(account)?
            .iter()
            .any(|i| i.metadata.name == *name))
    }

    /// Registers a `pending` image over loose snapshots (mapping disk `i` is
    /// `snapshots[i]`), under the library's lock so the name check and the
    /// record that takes the name are one step.
    fn register_image(
        &self,
        account: &AccountId,
        metadata: &ImageMetadata,
        snapshots: &[SnapshotId],
        client_token: &str,
    ) -> Result<ImageId> {
        self.locked(|| {
            let mine = self.list_images(account)?;
            if let Some(same) = mine
                .iter()
                .find(|i| i.client_token.as_deref() == Some(client_token))
            {
                return Ok(same.image_id.clone());
            }
            if mine.iter().any(|i| i.metadata.name == metadata.name) {
                return Err(name_taken(account, &metadata.name));
            }
            let mut records = Vec::with_capacity(snapshots.len());
            for (i, id) in snapshots.iter().enumerate() {
                let Found::Loose(loose) = self.snapshot_of(Some(account), id)? else {
                    return Err(Error::InvalidInput(
                        format!("snapshot {id} already belongs to an image").into(),
                    ));
                };
                let device = metadata
                    .block_device_mappings
                    .iter()
                    .find(|m| m.ebs.as_ref().and_then(|e| e.disk) == Some(i))
                    .ok_or_else(|| {
                        Error::InvalidInput(
                            format!("no block device mapping uses snapshot {id}").into(),
                        )
                    })?;
                records.push(SnapshotRecord {
                    snapshot_id: loose.snapshot_id,
                    device_name: device.device_name.clone(),
                    volume_size: loose.volume_size,
                    state: loose.state,
                    tags: loose.tags,
                });
            }
            let record = ImageRecord {
                image_id: ImageId::fresh(),
                owner_id: account.clone(),
                state: ResourceState::Pending,
                state_reason: None,
                creation_date: format_time(OffsetDateTime::now_utc()),
                metadata: ImageMetadata {
                    owner_id: Some(account.to_string()),
                    creation_date: None,
                    ..metadata.clone()
                },
                snapshots: records,
                client_token: Some(client_token.to_owned()),
            };
            write_json(&self.record_path(&record.image_id), &record)?;
            for id in snapshots {
                remove_if_present(&self.loose_path(id))?;
            }
            Ok(record.image_id)
        })
    }

    fn find_image_by_token(
        &self,
        account: &AccountId,
        client_token: &str,
    ) -> Result<Option<Image>> {
        Ok(self
            .list_images(account)?
            .into_iter()
            .find(|i| i.client_token.as_deref() == Some(client_token)))
    }

    /// Removes an image record and its snapshot files.
    fn deregister_image(&self, account: &AccountId, id: &ImageId) -> Result<()> {
        self.locked(|| {
            let record = self.describe_image(account, id)?;
            if record.state == ResourceState::Pending {
                return Err(Error::IncorrectState(
                    format!(
                        "image {id} is pending (a restore is writing it) and cannot be deregistered"
                    )
                    .into(),
                ));
            }
            for snapshot in &record.snapshots {
                remove_if_present(&self.snapshot_path(&snapshot.snapshot_id))?;
            }
            let path = self.record_path(id);
            fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))
        })
    }

    /// Sets the state of an image and all its snapshots.
    fn set_image_state(
        &self,
        account: &AccountId,
        id: &ImageId,
        state: ResourceState,
        reason: Option<&str>,
    ) -> Result<()> {
        self.locked(|| {
            let mut record = self.describe_image(account, id)?;
            record.state = state;
            record.state_reason = reason.map(str::to_owned);
            for snapshot in &mut record.snapshots {
                snapshot.state = state;
            }
            write_json(&self.record_path(id), &record)
        })
    }
}

impl SnapshotStore for ImageLibrary {
    fn describe_snapshot(
        &self,
        account: &AccountId,
        snapshot: &SnapshotId,
    ) -> Result<SnapshotInfo> {
        Ok(match self.snapshot_of(Some(account), snapshot)? {
            Found::Loose(l) => SnapshotInfo {
                snapshot_id: l.snapshot_id,
                volume_size: l.volume_size,
                state: l.state,
                start_time: l.start_time,
                tags: l.tags,
            },
            Found::InImage(image, n) => {
                let s = &image.snapshots[n];
                SnapshotInfo {
                    snapshot_id: s.snapshot_id.clone(),
                    volume_size: s.volume_size,
                    state: s.state,
                    start_time: Some(image.creation_date.clone()),
                    tags: s.tags.clone(),
                }
            }
        })
    }

    fn list_blocks(&self, account: &AccountId, snapshot: &SnapshotId) -> Result<BlockRanges> {
        let found = self.snapshot_of(Some(account), snapshot)?;
        if found.state() != ResourceState::Available {
            return Err(Error::IncorrectState(
                format!(
                    "snapshot {snapshot} is {}; only completed snapshots can be read",
                    found.state()
                )
                .into(),
            ));
        }
        self.blocks_of(snapshot)
    }

    fn read_blocks(&self, snapshot: &SnapshotId, first_block: u64, buf: &mut [u8]) -> Result<()> {
        let path = self.snapshot_path(snapshot);
        let file =
            File::open(&path).map_err(|e| Error::io(format!("opening snapshot {snapshot}"), e))?;
        file.read_exact_at(buf, first_block * BLOCK_SIZE)
            .map_err(|e| {
                Error::io(
                    format!("reading blocks of {snapshot} from {first_block}"),
                    e,
                )
            })
    }

    /// Starts an empty `pending` snapshot, not yet part of an image; the same
    /// `client_token` returns the same snapshot. Local snapshots are plain
    /// files: `encryption` is not applied to them (the image's mappings still
    /// say how its source was encrypted).
    fn start_snapshot(
        &self,
        account: &AccountId,
        volume_size: u64,
        tags: &[Tag],
        _encryption: &Encryption,
        client_token: &str,
    ) -> Result<SnapshotId> {
        if volume_size == 0 || !volume_size.is_multiple_of(BLOCK_SIZE) {
            return Err(Error::InvalidInput(
                format!(
                    "a snapshot of {volume_size} bytes is not a whole number of 512 KiB blocks"
                )
                .into(),
            ));
        }
        self.locked(|| {
            if let Some(started) = self.loose_by_token(account, client_token)? {
                return Ok(started);
            }
            let loose = LooseSnapshot {
                snapshot_id: SnapshotId::fresh(),
                owner_id: account.clone(),
                volume_size,
                state: ResourceState::Pending,
                tags: tags.to_vec(),
                client_token: client_token.to_owned(),
                start_time: Some(format_time(OffsetDateTime::now_utc())),
            };
            let raw = self.snapshot_path(&loose.snapshot_id);
            SparseFile::create(&raw, volume_size)?.sync()?;
            write_json(&self.loose_path(&loose.snapshot_id), &loose).inspect_err(|_| {
                let _ = fs::remove_file(&raw);
            })?;
            Ok(loose.snapshot_id)
        })
    }

    fn find_snapshot_by_token(
        &self,
        account: &AccountId,
        client_token: &str,
    ) -> Result<Option<SnapshotId>> {
        self.locked(|| self.loose_by_token(account, client_token))
    }

    fn write_blocks(&self, snapshot: &SnapshotId, first_block: u64, data: &[u8]) -> Result<()> {
        if !(data.len() as u64).is_multiple_of(BLOCK_SIZE) {
            return Err(Error::InvalidInput(
                format!(
                    "{} bytes is not a whole number of 512 KiB blocks",
                    data.len()
                )
                .into(),
            ));
        }
        let path = self.snapshot_path(snapshot);
        let file = File::options()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening snapshot {snapshot}"), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading snapshot {snapshot}"), e))?
            .len();
        let end = first_block * BLOCK_SIZE + data.len() as u64;
        if end > len {
            return Err(Error::InvalidInput(format!(
                "blocks {first_block}.. of {} bytes pass the end of snapshot {snapshot} ({len} bytes)",
                data.len()
            ).into()));
        }
        file.write_all_at(data, first_block * BLOCK_SIZE)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(format!("writing blocks of {snapshot}"), e))
    }

    /// Completes a snapshot, checking that exactly `changed_blocks` blocks were
    /// written (as CompleteSnapshot's ChangedBlocksCount is checked).
    fn complete_snapshot(&self, snapshot: &SnapshotId, changed_blocks: u64) -> Result<()> {
        let written = self.blocks_of(snapshot)?.present_count();
        if written != changed_blocks {
            return Err(Error::InvalidInput(format!(
                "snapshot {snapshot} has {written} blocks written, not the {changed_blocks} its completion claims"
            ).into()));
        }
        self.locked(|| match self.snapshot_of(None, snapshot)? {
            Found::Loose(mut loose) => {
                loose.state = ResourceState::Available;
                write_json(&self.loose_path(snapshot), &loose)
            }
            Found::InImage(mut image, n) => {
                image.snapshots[n].state = ResourceState::Available;
                write_json(&self.record_path(&image.image_id), &image)
            }
        })
    }

    /// Deletes a snapshot no image uses.
    fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<()> {
        self.locked(|| match self.find_snapshot(snapshot)? {
            None => Ok(()),
            Some(Found::InImage(image, _)) => Err(Error::InvalidInput(
                format!(
                    "snapshot {snapshot} belongs to image {}; deregister the image instead",
                    image.image_id
                )
                .into(),
            )),
            Some(Found::Loose(_)) => {
                remove_if_present(&self.snapshot_path(snapshot))?;
                remove_if_present(&self.loose_path(snapshot))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_disk::SparseFile;
    use amistore_core::blocks::BLOCK_SIZE;
    use amistore_core::image::Architecture;

    fn spec(name: &str) -> ImageSpec {
        ImageSpec {
            name: name.parse().unwrap(),
            description: None,
            architecture: Architecture::X86_64,
            boot_mode: None,
            root_device_name: None,
            tags: vec!["env=test".parse().unwrap()],
        }
    }

    fn disk(dir: &Path, name: &str, blocks: u64, written: &[u64]) -> PathBuf {
        let path = dir.join(name);
        let f = SparseFile::create(&path, blocks * BLOCK_SIZE).unwrap();
        for &b in written {
            f.write_blocks(b, &vec![b as u8; BLOCK_SIZE as usize])
                .unwrap();
        }
        path
    }

    #[test]
    fn import_list_export_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lib = ImageLibrary::open(&dir.path().join("data")).unwrap();
        let me = AccountId::local_default();
        let a = disk(dir.path(), "a.raw", 8, &[0, 5]);
        let b = disk(dir.path(), "b.raw", 4, &[]);
        let disks = vec![
            ("/dev/xvda".parse().unwrap(), a.clone()),
            ("/dev/xvdb".parse().unwrap(), b.clone()),
        ];
        let image = lib.import(&me, &spec("lib-test"), &disks).unwrap();
        assert_eq!(image.state, ResourceState::Available);
        assert!(
            image
                .snapshots
                .iter()
                .all(|s| s.state == ResourceState::Available)
        );
        assert_eq!(image.metadata.owner_id.as_deref(), Some(me.as_str()));
        assert_eq!(lib.list_images(&me).unwrap(), vec![image.clone()]);
        assert_eq!(lib.describe_image(&me, &image.image_id).unwrap(), image);
        let stored = RawDisk::open(&lib.snapshot_path(&image.snapshots[0].snapshot_id)).unwrap();
        assert_eq!(stored.present.runs(), &[0..1, 5..6], "holes are not stored");

        let out = dir.path().join("out");
        let files = lib.export(&me, &image.image_id, &out, false).unwrap();
        assert_eq!(fs::read(&files[0]).unwrap(), fs::read(&a).unwrap());
        assert_eq!(fs::read(&files[1]).unwrap(), fs::read(&b).unwrap());
        assert_eq!(RawDisk::open(&files[1]).unwrap().present.present_count(), 0);
        assert!(matches!(
            lib.export(&me, &image.image_id, &out, false),
            Err(Error::AlreadyExists(_))
        ));
        lib.export(&me, &image.image_id, &out, true).unwrap();
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            2,
            "no temporary files remain"
        );
    }

    #[test]
    fn names_are_unique_per_account_and_accounts_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let lib = ImageLibrary::open(dir.path()).unwrap();
        let me = AccountId::local_default();
        let other: AccountId = "111122223333".parse().unwrap();
        let a = disk(dir.path(), "a.raw", 2, &[1]);
        let disks = vec![("/dev/xvda".parse().unwrap(), a)];
        let image = lib.import(&me, &spec("same-name"), &disks).unwrap();
        let err = lib.import(&me, &spec("same-name"), &disks).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        lib.import(&other, &spec("same-name"), &disks).unwrap();
        assert!(matches!(
            lib.describe_image(&other, &image.image_id),
            Err(Error::NotFound(_))
        ));
        assert_eq!(lib.list_images(&other).unwrap().len(), 1);

        lib.deregister_image(&me, &image.image_id).unwrap();
        assert!(lib.list_images(&me).unwrap().is_empty());
        assert!(!lib.snapshot_path(&image.snapshots[0].snapshot_id).exists());
    }

    #[test]
    fn failed_imports_leave_nothing_and_pending_images_do_not_export() {
        let dir = tempfile::tempdir().unwrap();
        let lib = ImageLibrary::open(&dir.path().join("data")).unwrap();
        let me = AccountId::local_default();
        let good = disk(dir.path(), "good.raw", 2, &[0]);
        let odd = dir.path().join("odd.raw");
        fs::write(&odd, b"not whole blocks").unwrap();
        let disks = vec![
            ("/dev/xvda".parse().unwrap(), good.clone()),
            ("/dev/xvdb".parse().unwrap(), odd),
        ];
        assert!(lib.import(&me, &spec("broken"), &disks).is_err());
        assert!(lib.list_images(&me).unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("data/snapshots"))
                .unwrap()
                .count(),
            0
        );

        let snap = lib
            .start_snapshot(&me, BLOCK_SIZE, &[], &Encryption::default(), "tok-1")
            .unwrap();
        assert_eq!(
            lib.start_snapshot(&me, BLOCK_SIZE, &[], &Encryption::default(), "tok-1")
                .unwrap(),
            snap,
            "a client token makes starting idempotent"
        );
        let metadata = spec("pending")
            .to_metadata(&[("/dev/xvda".parse().unwrap(), BLOCK_SIZE)])
            .unwrap();
        let pending = lib
            .register_image(&me, &metadata, std::slice::from_ref(&snap), "tok-img")
            .unwrap();
        let pending = lib.describe_image(&me, &pending).unwrap();
        assert_eq!(pending.state, ResourceState::Pending);
        assert_eq!(
            lib.register_image(&me, &metadata, std::slice::from_ref(&snap), "tok-img")
                .unwrap(),
            pending.image_id,
            "registering again with the token returns the image"
        );
        let err = lib
            .export(&me, &pending.image_id, &dir.path().join("x"), false)
            .unwrap_err();
        assert!(err.to_string().contains("pending"), "{err}");
        lib.set_image_state(
            &me,
            &pending.image_id,
            ResourceState::Failed,
            Some("cancelled"),
        )
        .unwrap();
        let failed = lib.describe_image(&me, &pending.image_id).unwrap();
        assert_eq!(failed.state_reason.as_deref(), Some("cancelled"));
    }
}
