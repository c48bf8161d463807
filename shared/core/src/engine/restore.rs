//! The restore workflow's steps, each idempotent like the store's:
//!
//! - plan: open the archive (its tail only) and count its units.
//! - unit: read one unit with ranged reads, verify it (zstd checksums, hole
//!   frames, its BLAKE3 hash), and write its present blocks, zero ones included,
//!   to the new snapshot. Absent blocks are never written. A unit's blocks are
//!   written before it is recorded, so a retry rewrites the same blocks.
//! - finalize: complete the snapshots and make the image `available`.
//! - fail: mark the image and its snapshots `failed`, with the reason; if the
//!   task died before it registered the image, delete the snapshots it started.

use crate::archive::{ArchiveIndex, Decoded, read_units};
use crate::engine::{Engine, FailedBy};
use crate::ids::{ImageId, ResourceState, TaskId};
use crate::ports::{Image, ObjectInfo, ObjectReader};
use crate::task::{Ending, Task};
use crate::{Error, Result};

/// The client token a restore starts disk `disk`'s snapshot with: idempotent
/// starts, and the way back to snapshots that never joined an image.
pub fn snapshot_token(task: &TaskId, disk: usize) -> String {
    format!("{task}-disk{disk}")
}

impl Engine {
    fn restore_image(&self, task: &Task) -> Result<(ImageId, Image)> {
        let id = task.image_id.clone().ok_or_else(|| {
            Error::IncorrectState(format!("restore task {} has no image yet", task.id).into())
        })?;
        let image = self.catalog.describe_image(&task.account, &id)?;
        Ok((id, image))
    }

    /// Opens the task's archive: the very object intake read (its ETag and its
    /// manifest's digest pinned then), every read conditional on that ETag. A
    /// replaced object fails the restore instead of mixing two archives.
    fn open_source<'a>(
        &'a self,
        task: &'a Task,
        image: &Image,
        info: &'a ObjectInfo,
    ) -> Result<(ObjectReader<'a>, ArchiveIndex)> {
        let replaced = || {
            Error::IncorrectState(format!(
                "s3://{}/{} was replaced since the restore began; restore it again to use the new archive",
                task.bucket, task.key
            ).into())
        };
        if let Some(pin) = &task.source
            && !pin.etag.is_empty()
            && info.etag != pin.etag
        {
            return Err(replaced());
        }
        let reader = ObjectReader::new(&*self.objects, &task.bucket, &task.key, info);
        let index = ArchiveIndex::open(&reader)?;
        if task
            .source
            .as_ref()
            .is_some_and(|pin| pin.manifest_digest != index.manifest().digest())
        {
            return Err(replaced());
        }
        let disks = &index.manifest().disks;
        let fits = disks.len() == image.snapshots.len()
            && disks
                .iter()
                .zip(&image.snapshots)
                .all(|(d, s)| d.volume_size == s.volume_size);
        if !fits {
            return Err(Error::Malformed(
                format!(
                    "{} changed during the restore: its disks no longer match image {}",
                    task.key, image.image_id
                )
                .into(),
            ));
        }
        Ok((reader, index))
    }

    /// The object a restore reads, which must still exist.
    fn source_info(&self, task: &Task) -> Result<ObjectInfo> {
        self.objects
            .head_object(&task.bucket, &task.key)?
            .ok_or_else(|| {
                Error::NotFound(
                    format!(
                        "object {} no longer exists in bucket {}",
                        task.key, task.bucket
                    )
                    .into(),
                )
            })
    }

    /// The present bytes of the archive a restore task reads (what it will
    /// write).
    pub(crate) fn restore_present_bytes(&self, task: &Task) -> Result<u64> {
        let (_, image) = self.restore_image(task)?;
        let info = self.source_info(task)?;
        let (_, index) = self.open_source(task, &image, &info)?;
        Ok(index.manifest().present_bytes())
    }

    /// Plans a restore task; returns how many units it has.
    pub fn plan_restore(&self, id: &TaskId) -> Result<u64> {
        let task = self.running_task(id)?;
        let (_, image) = self.restore_image(&task)?;
        let info = self.source_info(&task)?;
        let (_, index) = self.open_source(&task, &image, &info)?;
        let units = index.manifest().units.len() as u64;
        self.tasks.set_units_total(id, units)?;
        Ok(units)
    }

    /// Restores unit `unit`'s present blocks into the new snapshots.
    pub fn restore_unit(&self, id: &TaskId, unit: u64) -> Result<()> {
        let task = self.running_task(id)?;
        if self.tasks.unit_recorded(id, unit)? {
            return Ok(());
        }
        let (_, image) = self.restore_image(&task)?;
        let info = self.source_info(&task)?;
        let (reader, index) = self.open_source(&task, &image, &info)?;
        let index_of = usize::try_from(unit)
            .ok()
            .filter(|&u| u < index.manifest().units.len())
            .ok_or_else(|| Error::InvalidInput(format!("task {id} has no unit {unit}").into()))?;
        // Blocks are written as frames decode, before the unit's hash is checked
        // at its end. A unit that fails its check fails the task, and a failed
        // image is never made available, so no unverified data is ever served.
        self.within_budget(&task, unit, || {
            let decoded = read_units(
                &index,
                &reader,
                index_of..index_of + 1,
                self.config.unit_threads,
                |decoded| {
                    if let Decoded::Data {
                        disk,
                        first_block,
                        bytes,
                        ..
                    } = decoded
                    {
                        let snapshot = &image.snapshots[disk].snapshot_id;
                        self.snapshots.write_blocks(snapshot, first_block, &bytes)?;
                        self.report(id, bytes.len() as u64);
                    }
                    Ok(())
                },
            );
            // Writes may still be landing: every one is waited for, even after a
            // failure, so none outlives the unit.
            let mut landed = Ok(());
            for s in &image.snapshots {
                if let Err(e) = self.snapshots.finish_writes(&s.snapshot_id) {
                    landed = landed.and(Err(e));
                }
            }
            decoded?;
            landed
        })?;
        self.tasks.record_unit(id, unit, "{}")?;
        Ok(())
    }

    /// Completes a restore: seals the snapshots, makes the image available.
    pub fn finalize_restore(&self, id: &TaskId) -> Result<()> {
        let Some(task) = self.claim_completion(id)? else {
            return Ok(());
        };
        let (image_id, image) = self.restore_image(&task)?;
        let info = self.source_info(&task)?;
        let (_, index) = self.open_source(&task, &image, &info)?;
        let recorded = self.tasks.units(id)?.len();
        let units = index.manifest().units.len();
        if recorded != units {
            return Err(Error::IncorrectState(
                format!("task {id} has restored {recorded} of {units} units").into(),
            ));
        }
        for (disk, snapshot) in index.manifest().disks.iter().zip(&image.snapshots) {
            self.snapshots
                .complete_snapshot(&snapshot.snapshot_id, disk.present.present_count())?;
        }
        self.catalog
            .set_image_state(&task.account, &image_id, ResourceState::Available, None)?;
        self.end(id, Ending::Complete)
    }

    /// Fails a restore task: its image and snapshots become `failed`. Like
    /// [`Engine::fail_store`], it claims the end first and returns whether it
    /// held it.
    pub fn fail_restore(&self, id: &TaskId, reason: &str, by: FailedBy) -> Result<bool> {
        let Some(task) = self.claim_failure(id, reason, by)? else {
            return Ok(false);
        };
        // A second failure of the same task (a retry, or another unit's step
        // failing at the same time) holds the same claim: the reason shown is
        // the claim's, the one the task records, not this caller's.
        let reason = task
            .claim
            .as_ref()
            .and_then(|c| c.reason.clone())
            .unwrap_or_else(|| reason.to_owned());
        // The image may have been registered just before a crash, before the
        // task learnt its id: the registration token finds it.
        let image = match &task.image_id {
            Some(image) => Some(image.clone()),
            None => self
                .catalog
                .find_image_by_token(&task.account, task.id.as_str())?
                .map(|i| i.image_id),
        };
        match image {
            Some(image) => self.catalog.set_image_state(
                &task.account,
                &image,
                ResourceState::Failed,
                Some(&reason),
            )?,
            // No image: intake died after starting some snapshots, and
            // nothing else would ever delete them. A transient error is
            // retried (by the workflow or the next sweep); a permanent refusal
            // must not keep the task, and its quota, in progress for ever.
            None => match self.delete_unregistered_snapshots(&task) {
                Err(e) if e.is_retryable() => return Err(e),
                _ => {}
            },
        }
        self.end(id, Ending::Fail)?;
        Ok(true)
    }

    /// Deletes the snapshots a restore's intake started (one per disk, in
    /// order, so the first token with no snapshot ends the search).
    fn delete_unregistered_snapshots(&self, task: &Task) -> Result<()> {
        for disk in 0.. {
            let token = snapshot_token(&task.id, disk);
            match self
                .snapshots
                .find_snapshot_by_token(&task.account, &token)?
            {
                Some(snapshot) => self.snapshots.delete_snapshot(&snapshot)?,
                None => break,
            }
        }
        Ok(())
    }
}
