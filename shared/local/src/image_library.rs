//! The local image library: AMIs kept on disk the way EC2 keeps them, each a JSON
//! record plus one sparse raw file per snapshot.
//!
//! ```text
//! <data-dir>/images/<ami-id>.json      the image record (metadata, snapshots, states)
//! <data-dir>/images/.lock              held while names are checked and records written
//! <data-dir>/snapshots/<snap-id>.raw   the snapshot's volume; holes are unwritten blocks
//! ```
//!
//! Images are scoped to an owner account. An image is `pending` from the moment
//! its name is reserved until its snapshots are complete, then `available` (or
//! `failed`). Records are replaced atomically (write, sync, rename).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use amistore_core::archive::manifest::format_time;
use amistore_core::ids::{AccountId, ImageId, ResourceState, SnapshotId};
use amistore_core::image::{DeviceName, ImageMetadata, ImageSpec, Tag};
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::raw_disk::{RawDisk, copy_sparse, open_image_disks};
use crate::{Error, Result};

/// One snapshot of an image in the library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// The snapshot's id.
    pub snapshot_id: SnapshotId,
    /// Device it is mapped to.
    pub device_name: DeviceName,
    /// Volume size in bytes.
    pub volume_size: u64,
    /// Lifecycle state.
    pub state: ResourceState,
    /// Snapshot tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// An image in the library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The image's id.
    pub image_id: ImageId,
    /// Owning account.
    pub owner_id: AccountId,
    /// Lifecycle state.
    pub state: ResourceState,
    /// Why the image failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Registration time (ISO 8601, UTC).
    pub creation_date: String,
    /// Metadata; `blockDeviceMappings[].ebs.disk` indexes `snapshots`.
    pub metadata: ImageMetadata,
    /// The snapshots, in disk order.
    pub snapshots: Vec<SnapshotRecord>,
}

/// The image library rooted in a data directory.
#[derive(Debug, Clone)]
pub struct ImageLibrary {
    images: PathBuf,
    snapshots: PathBuf,
}

impl ImageLibrary {
    /// Opens (creating if needed) the library under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let images = data_dir.join("images");
        let snapshots = data_dir.join("snapshots");
        for dir in [&images, &snapshots] {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Self { images, snapshots })
    }

    /// Where a snapshot's volume lives.
    pub fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.snapshots.join(format!("{id}.raw"))
    }

    fn record_path(&self, id: &ImageId) -> PathBuf {
        self.images.join(format!("{id}.json"))
    }

    /// Runs `f` holding the library's lock, so that checking a name and writing
    /// the record that takes it are one step for every process.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let path = self.images.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        f()
    }

    fn write_record(&self, record: &ImageRecord) -> Result<()> {
        let path = self.record_path(&record.image_id);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::InvalidInput(format!("image record does not serialise: {e}")))?;
        File::create(&tmp)
            .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    fn read_record(path: &Path) -> Result<ImageRecord> {
        let bytes =
            fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidInput(format!("image record {} is damaged: {e}", path.display()))
        })
    }

    /// Every image `owner` owns, oldest first.
    pub fn list(&self, owner: &AccountId) -> Result<Vec<ImageRecord>> {
        let entries = fs::read_dir(&self.images)
            .map_err(|e| Error::io(format!("listing {}", self.images.display()), e))?;
        let mut images = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io(format!("listing {}", self.images.display()), e))?
                .path();
            if path.extension().is_some_and(|x| x == "json") {
                let record = Self::read_record(&path)?;
                if record.owner_id == *owner {
                    images.push(record);
                }
            }
        }
        images
            .sort_by(|a, b| (&a.creation_date, &a.image_id).cmp(&(&b.creation_date, &b.image_id)));
        Ok(images)
    }

    /// The image `id`, if `owner` owns it.
    pub fn get(&self, owner: &AccountId, id: &ImageId) -> Result<ImageRecord> {
        let path = self.record_path(id);
        let record = match path.exists() {
            true => Some(Self::read_record(&path)?),
            false => None,
        };
        record
            .filter(|r| r.owner_id == *owner)
            .ok_or_else(|| Error::NotFound(format!("image {id} does not exist")))
    }

    /// Creates a `pending` image named `metadata.name` with one pending snapshot
    /// per `(device, size, tags)`, unless `owner` already has an image of that name.
    pub fn reserve(
        &self,
        owner: &AccountId,
        metadata: ImageMetadata,
        disks: Vec<(DeviceName, u64, Vec<Tag>)>,
    ) -> Result<ImageRecord> {
        self.locked(|| {
            if self
                .list(owner)?
                .iter()
                .any(|i| i.metadata.name == metadata.name)
            {
                return Err(Error::Duplicate(format!(
                    "an image named {:?} already exists in account {owner}",
                    metadata.name.as_str()
                )));
            }
            let record = ImageRecord {
                image_id: ImageId::fresh(),
                owner_id: owner.clone(),
                state: ResourceState::Pending,
                state_reason: None,
                creation_date: format_time(OffsetDateTime::now_utc()),
                metadata: ImageMetadata {
                    owner_id: Some(owner.to_string()),
                    ..metadata
                },
                snapshots: disks
                    .into_iter()
                    .map(|(device_name, volume_size, tags)| SnapshotRecord {
                        snapshot_id: SnapshotId::fresh(),
                        device_name,
                        volume_size,
                        state: ResourceState::Pending,
                        tags,
                    })
                    .collect(),
            };
            self.write_record(&record)?;
            Ok(record)
        })
    }

    /// Sets the state of an image and all its snapshots.
    pub fn set_state(
        &self,
        owner: &AccountId,
        id: &ImageId,
        state: ResourceState,
        reason: Option<String>,
    ) -> Result<ImageRecord> {
        self.locked(|| {
            let mut record = self.get(owner, id)?;
            record.state = state;
            record.state_reason = reason;
            for snapshot in &mut record.snapshots {
                snapshot.state = state;
            }
            self.write_record(&record)?;
            Ok(record)
        })
    }

    /// Removes an image record and its snapshot files.
    pub fn deregister(&self, owner: &AccountId, id: &ImageId) -> Result<()> {
        self.locked(|| {
            let record = self.get(owner, id)?;
            for snapshot in &record.snapshots {
                let path = self.snapshot_path(&snapshot.snapshot_id);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(format!("removing {}", path.display()), e));
                    }
                    _ => {}
                }
            }
            let path = self.record_path(id);
            fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))
        })
    }

    /// Imports raw disk files as a new `available` image owned by `owner`.
    /// Holes are neither read nor stored. On any failure nothing is left behind.
    pub fn import(
        &self,
        owner: &AccountId,
        spec: &ImageSpec,
        disks: &[(DeviceName, PathBuf)],
    ) -> Result<ImageRecord> {
        let (metadata, opened) = open_image_disks(spec, disks)?;
        let reserved = self.reserve(
            owner,
            metadata,
            opened
                .iter()
                .map(|(d, r)| (d.clone(), r.size, vec![]))
                .collect(),
        )?;
        let copied =
            reserved
                .snapshots
                .iter()
                .zip(&opened)
                .try_for_each(|(snapshot, (_, disk))| {
                    copy_sparse(disk, &self.snapshot_path(&snapshot.snapshot_id))
                });
        match copied {
            Ok(()) => self.set_state(owner, &reserved.image_id, ResourceState::Available, None),
            Err(e) => {
                let _ = self.deregister(owner, &reserved.image_id);
                Err(e)
            }
        }
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
        let record = self.get(owner, id)?;
        if record.state != ResourceState::Available {
            return Err(Error::InvalidInput(format!(
                "image {id} is {}, not available",
                record.state
            )));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut written = Vec::new();
        for (i, snapshot) in record.snapshots.iter().enumerate() {
            let target = dir.join(format!("disk{i}-{}.raw", snapshot.device_name.base()));
            if target.exists() {
                if !force {
                    return Err(Error::OutputExists(target));
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
        assert_eq!(lib.list(&me).unwrap(), vec![image.clone()]);
        assert_eq!(lib.get(&me, &image.image_id).unwrap(), image);
        let stored = RawDisk::open(&lib.snapshot_path(&image.snapshots[0].snapshot_id)).unwrap();
        assert_eq!(stored.present.runs(), &[0..1, 5..6], "holes are not stored");

        let out = dir.path().join("out");
        let files = lib.export(&me, &image.image_id, &out, false).unwrap();
        assert_eq!(fs::read(&files[0]).unwrap(), fs::read(&a).unwrap());
        assert_eq!(fs::read(&files[1]).unwrap(), fs::read(&b).unwrap());
        assert_eq!(RawDisk::open(&files[1]).unwrap().present.present_count(), 0);
        assert!(matches!(
            lib.export(&me, &image.image_id, &out, false),
            Err(Error::OutputExists(_))
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
        assert!(matches!(err, Error::Duplicate(_)), "{err}");
        lib.import(&other, &spec("same-name"), &disks).unwrap();
        assert!(matches!(
            lib.get(&other, &image.image_id),
            Err(Error::NotFound(_))
        ));
        assert_eq!(lib.list(&other).unwrap().len(), 1);

        lib.deregister(&me, &image.image_id).unwrap();
        assert!(lib.list(&me).unwrap().is_empty());
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
        assert!(lib.list(&me).unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("data/snapshots"))
                .unwrap()
                .count(),
            0
        );

        let pending = lib
            .reserve(
                &me,
                spec("pending")
                    .to_metadata(&[("/dev/xvda".parse().unwrap(), BLOCK_SIZE)])
                    .unwrap(),
                vec![],
            )
            .unwrap();
        assert_eq!(pending.state, ResourceState::Pending);
        let err = lib
            .export(&me, &pending.image_id, &dir.path().join("x"), false)
            .unwrap_err();
        assert!(err.to_string().contains("pending"), "{err}");
        let failed = lib
            .set_state(
                &me,
                &pending.image_id,
                ResourceState::Failed,
                Some("cancelled".into()),
            )
            .unwrap();
        assert_eq!(failed.state_reason.as_deref(), Some("cancelled"));
    }
}
