//! Intake: the synchronous part of CreateStoreImageTask and
//! CreateRestoreImageTask. It checks everything a request can be refused for,
//! admits the task under the quota in one atomic write, prepares what the
//! workflow writes into (a multipart upload; a pending image with pending
//! snapshots), and starts the workflow. It reads at most an object's tail, so it
//! answers fast.
//!
//! A request that is refused changes nothing. Once admitted, a failure fails the
//! task through the same path a workflow failure takes, so quota is released and
//! nothing is left half-made.

use time::OffsetDateTime;

use crate::archive::ArchiveIndex;
use crate::archive::manifest::format_time;
use crate::engine::metadata::object_metadata;
use crate::engine::restore::snapshot_token;
use crate::engine::{Engine, FailedBy, now_ms};
use crate::ids::{AccountId, ImageId, ResourceState};
use crate::image::{EbsMapping, ImageName, Tag, VirtualizationType, check_unique_tag_keys};
use crate::ports::ObjectReader;
use crate::storage::{BucketName, BucketPath, ObjectKey};
use crate::task::{SourcePin, Task, TaskKind, TaskState};
use crate::{Detail, Error, Result};

/// S3 allows at most this many tags on an object.
pub const MAX_OBJECT_TAGS: usize = 10;

/// CreateStoreImageTask, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRequest {
    /// The AMI to store.
    pub image_id: ImageId,
    /// `bucket` or `bucket/path…`.
    pub bucket: BucketPath,
    /// Tags for the object.
    pub object_tags: Vec<Tag>,
}

/// CreateRestoreImageTask, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// Bucket holding the archive.
    pub bucket: BucketName,
    /// The archive's key.
    pub key: ObjectKey,
    /// Name of the new AMI; the stored name by default.
    pub name: Option<ImageName>,
    /// Tags for the new AMI (added to the stored AMI's tags, winning on a clash).
    pub image_tags: Vec<Tag>,
    /// Tags for every new snapshot (likewise).
    pub snapshot_tags: Vec<Tag>,
}

/// `base` with `extra` applied: an extra tag replaces a base tag of the same key.
pub fn merge_tags(base: &[Tag], extra: &[Tag]) -> Vec<Tag> {
    base.iter()
        .filter(|t| !extra.iter().any(|e| e.key() == t.key()))
        .chain(extra)
        .cloned()
        .collect()
}

impl Engine {
    /// Creates a store task; returns it (its key is the object's).
    pub fn create_store_task(&self, account: &AccountId, req: &StoreRequest) -> Result<Task> {
        if req.object_tags.len() > MAX_OBJECT_TAGS {
            return Err(Error::InvalidInput(
                format!(
                    "{} object tags given; S3 allows {MAX_OBJECT_TAGS}",
                    req.object_tags.len()
                )
                .into(),
            ));
        }
        check_unique_tag_keys(&req.object_tags)?;
        let image = self.catalog.describe_image(account, &req.image_id)?;
        let id = &image.image_id;
        if image.owner_id != *account {
            return Err(Error::InvalidInput(
                format!(
                    "image {id} is owned by account {}; only your own images can be stored",
                    image.owner_id
                )
                .into(),
            ));
        }
        if image.state != ResourceState::Available {
            return Err(Error::IncorrectState(
                format!(
                    "image {id} is {}; only available images can be stored",
                    image.state
                )
                .into(),
            ));
        }
        if image.metadata.virtualization_type == VirtualizationType::Paravirtual {
            return Err(Error::InvalidInput(
                format!("image {id} is paravirtual; paravirtual (PV) images cannot be stored")
                    .into(),
            ));
        }
        let root = &image.metadata.root_device_name;
        let ebs_root =
            image.metadata.block_device_mappings.iter().any(|m| {
                m.device_name == *root && m.ebs.as_ref().is_some_and(|e| e.disk.is_some())
            });
        if !ebs_root || image.snapshots.is_empty() {
            return Err(Error::InvalidInput(format!(
                "image {id} is not EBS-backed (its root device {root} has no EBS snapshot); only EBS-backed images can be stored"
            ).into()));
        }
        if let Some(s) = image
            .snapshots
            .iter()
            .find(|s| s.state != ResourceState::Available)
        {
            return Err(Error::IncorrectState(
                format!("snapshot {} of image {id} is {}", s.snapshot_id, s.state).into(),
            ));
        }
        let bucket = &req.bucket.bucket;
        if !self.objects.bucket_exists(account, bucket)? {
            return Err(Error::NotFound(
                format!("bucket {bucket} does not exist").into(),
            ));
        }
        let key = req.bucket.key_for(id);
        let now = now_ms();
        self.refuse_second_copy(account, id, bucket, &key, now)?;

        let started = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
            .map_err(|e| Error::InvalidInput(Detail::because("clock out of range", e)))?;
        let metadata = object_metadata(&image, &format_time(started));
        let task = Task::start(
            TaskKind::Store,
            account.clone(),
            Some(id.clone()),
            bucket.clone(),
            key,
            image.size_gib(),
            now,
        );
        self.tasks.admit(&task, self.config.limits.store_gib)?;

        let prepared = self
            .objects
            .create_multipart(bucket, &task.key, &metadata, &req.object_tags)
            .and_then(|upload| {
                self.tasks.set_upload(&task.id, &upload).inspect_err(|_| {
                    // The task does not know this upload, so its failure path cannot abort it.
                    let _ = self.objects.abort_multipart(bucket, &task.key, &upload);
                })
            })
            .and_then(|()| self.runner.start(TaskKind::Store, &task.id));
        match prepared {
            Ok(()) => self.task(&task.id),
            Err(e) => {
                let _ =
                    self.fail_store(&task.id, &format!("could not start: {e}"), FailedBy::Intake);
                Err(e)
            }
        }
    }

    /// "You can't create multiple copies of an AMI in the same S3 bucket": refuses
    /// while the bucket holds a copy made by a store of the last 31 days, or an
    /// object at the target key. (A store in progress is refused atomically by
    /// admission.)
    fn refuse_second_copy(
        &self,
        account: &AccountId,
        image: &ImageId,
        bucket: &BucketName,
        key: &ObjectKey,
        now: i64,
    ) -> Result<()> {
        let mut keys = vec![key.clone()];
        keys.extend(
            self.tasks
                .list(account, TaskKind::Store, now)?
                .into_iter()
                .filter(|t| {
                    t.state == TaskState::Completed
                        && t.image_id.as_ref() == Some(image)
                        && t.bucket == *bucket
                })
                .map(|t| t.key),
        );
        for existing in keys {
            if self.objects.head_object(bucket, &existing)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "bucket {bucket} already holds a copy of image {image} ({existing}); an AMI can be stored once per bucket"
                ).into()));
            }
        }
        Ok(())
    }

    /// Creates a restore task; returns it (its image is the new AMI, `pending`).
    pub fn create_restore_task(&self, account: &AccountId, req: &RestoreRequest) -> Result<Task> {
        check_unique_tag_keys(&req.image_tags)?;
        check_unique_tag_keys(&req.snapshot_tags)?;
        if !self.objects.bucket_exists(account, &req.bucket)? {
            return Err(Error::NotFound(
                format!("bucket {} does not exist", req.bucket).into(),
            ));
        }
        let info = self
            .objects
            .head_object(&req.bucket, &req.key)?
            .ok_or_else(|| {
                Error::NotFound(
                    format!("object {} does not exist in bucket {}", req.key, req.bucket).into(),
                )
            })?;
        let reader = ObjectReader::new(&*self.objects, &req.bucket, &req.key, &info);
        let index = ArchiveIndex::open(&reader)?;
        let manifest = index.manifest();
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| manifest.image.name.clone());
        if self.catalog.image_name_taken(account, &name)? {
            return Err(Error::AlreadyExists(
                format!(
                    "an image named {:?} already exists in account {account}",
                    name.as_str()
                )
                .into(),
            ));
        }
        let size_gib = manifest
            .disks
            .iter()
            .map(|d| d.volume_size.div_ceil(crate::image::GIB))
            .sum();
        let mut task = Task::start(
            TaskKind::Restore,
            account.clone(),
            None,
            req.bucket.clone(),
            req.key.clone(),
            size_gib,
            now_ms(),
        );
        // Every later read is of this object, or the restore fails.
        task.source = Some(SourcePin {
            etag: info.etag.clone(),
            manifest_digest: manifest.digest(),
        });
        self.tasks.admit(&task, self.config.limits.restore_gib)?;

        let mut snapshots = Vec::with_capacity(manifest.disks.len());
        let prepared = (|| {
            for (i, disk) in manifest.disks.iter().enumerate() {
                // Each new snapshot is encrypted as its source disk was.
                let encryption = manifest
                    .image
                    .block_device_mappings
                    .iter()
                    .filter_map(|m| m.ebs.as_ref())
                    .find(|e| e.disk == Some(i))
                    .map(EbsMapping::encryption)
                    .unwrap_or_default();
                snapshots.push(self.snapshots.start_snapshot(
                    account,
                    disk.volume_size,
                    &merge_tags(&disk.tags, &req.snapshot_tags),
                    &encryption,
                    &snapshot_token(&task.id, i),
                )?);
            }
            let mut metadata = manifest.image.clone();
            metadata.name = name.clone();
            metadata.tags = merge_tags(&manifest.image.tags, &req.image_tags);
            metadata.owner_id = None;
            metadata.creation_date = None;
            let image = self
                .catalog
                .register_image(account, &metadata, &snapshots, task.id.as_str())
                .inspect_err(|_| {
                    // Not part of an image yet: nobody else would ever clean them up.
                    for s in &snapshots {
                        let _ = self.snapshots.delete_snapshot(s);
                    }
                })?;
            self.tasks.set_image(&task.id, &image)?;
            self.runner.start(TaskKind::Restore, &task.id)
        })();
        match prepared {
            Ok(()) => self.task(&task.id),
            Err(e) => {
                let _ =
                    self.fail_restore(&task.id, &format!("could not start: {e}"), FailedBy::Intake);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_tags_win_over_stored_ones() {
        let base: Vec<Tag> = vec!["a=1".parse().unwrap(), "b=2".parse().unwrap()];
        let extra: Vec<Tag> = vec!["b=3".parse().unwrap(), "c=4".parse().unwrap()];
        let merged: Vec<String> = merge_tags(&base, &extra)
            .iter()
            .map(|t| format!("{}={}", t.key(), t.value()))
            .collect();
        assert_eq!(merged, ["a=1", "b=3", "c=4"]);
    }
}
