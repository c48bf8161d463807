//! The store workflow's steps. Each is idempotent, so Step Functions (or the
//! local runner) may retry it, and a task interrupted anywhere can be resumed:
//!
//! - plan: list the snapshots' present blocks and cut units. The plan is saved
//!   once and reused by every later attempt, so recorded units stay valid.
//! - unit: encode one unit, cut into parts uploaded while it is encoded (the
//!   unit's own run of part numbers, see [`crate::engine::parts`]), and record
//!   it. A recorded unit is skipped; a retried one is counted once.
//! - finalize: build the manifest and seek table from the unit records, upload
//!   them as the last part, complete the upload, check the object, and mark the
//!   task Completed (releasing its quota).
//! - fail: abort the upload (and remove an object a failed finalize completed),
//!   and mark the task Failed with the reason (releasing its quota).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::archive::plan::MAX_PARTS;
use crate::archive::{ArchiveIndex, ArchivePlan, BlockSource, DiskSource, UnitRecord, encode_unit};
use crate::engine::parts::{Cut, PartTarget, encode_in_parts, parts_per_unit};
use crate::engine::{Engine, FailedBy, SpoolFile, now_ms};
use crate::ids::{AccountId, ImageId, SnapshotId, TaskId};
use crate::ports::{CompletedPart, ObjectReader, SnapshotStore};
use crate::storage::BucketName;
use crate::task::{Ending, Task, TaskKind, TaskState};
use crate::{Detail, Error, Result};

/// Work-store name of a store task's plan.
pub const PLAN: &str = "plan.json";

/// A unit as recorded in the task store: its parts and what the final part
/// needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredUnit {
    /// The unit's parts, in order.
    #[serde(default)]
    pub parts: Vec<CompletedPart>,
    /// ETag of the one part `unit + 1` (records made before units were cut
    /// into several parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The unit's record.
    pub record: UnitRecord,
}

impl StoredUnit {
    /// The unit's parts, whichever way they were recorded.
    fn into_parts(self, unit: u64) -> Result<(Vec<CompletedPart>, UnitRecord)> {
        let parts = match self.etag {
            Some(etag) if self.parts.is_empty() => vec![CompletedPart {
                part_number: first_part(unit, 1)?,
                etag,
            }],
            _ => self.parts,
        };
        Ok((parts, self.record))
    }
}

/// A store task's plan: the archive plan and the snapshots its disks read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorePlan {
    /// The archive.
    pub archive: ArchivePlan,
    /// Snapshot of each disk.
    pub snapshots: Vec<SnapshotId>,
    /// Part numbers each unit owns (plans made before units were cut into
    /// several parts have one).
    #[serde(default = "one_part")]
    pub parts_per_unit: u32,
}

fn one_part() -> u32 {
    1
}

/// Reads blocks of an image's snapshots through the snapshot port.
struct SnapshotBlocks<'a> {
    store: &'a dyn SnapshotStore,
    snapshots: &'a [SnapshotId],
}

impl BlockSource for SnapshotBlocks<'_> {
    fn read_blocks(&self, disk: usize, first_block: u64, buf: &mut [u8]) -> Result<()> {
        let snapshot = self.snapshots.get(disk).ok_or_else(|| {
            Error::InvalidInput(format!("the plan has no snapshot for disk {disk}").into())
        })?;
        self.store.read_blocks(snapshot, first_block, buf)
    }
}

fn upload_of(task: &Task) -> Result<&str> {
    task.upload_id
        .as_deref()
        .ok_or_else(|| Error::IncorrectState(format!("task {} has no upload", task.id).into()))
}

impl Engine {
    fn store_plan(&self, task: &TaskId) -> Result<StorePlan> {
        self.get_work(task, PLAN)?.ok_or_else(|| {
            Error::IncorrectState(format!("task {task} has not been planned").into())
        })
    }

    /// Plans a store task; returns how many units it has.
    pub fn plan_store(&self, id: &TaskId) -> Result<u64> {
        let task = self.running_task(id)?;
        if let Some(plan) = self.get_work::<StorePlan>(id, PLAN)? {
            return Ok(plan.archive.units.len() as u64);
        }
        let image_id = task.image_id.as_ref().ok_or_else(|| {
            Error::IncorrectState(format!("store task {id} names no image").into())
        })?;
        let image = self.catalog.describe_image(&task.account, image_id)?;
        let mut sources = Vec::with_capacity(image.snapshots.len());
        for s in &image.snapshots {
            sources.push(DiskSource {
                device_name: s.device_name.clone(),
                snapshot_id: Some(s.snapshot_id.to_string()),
                volume_size: s.volume_size,
                present: self.snapshots.list_blocks(&task.account, &s.snapshot_id)?,
                tags: s.tags.clone(),
            });
        }
        let mut metadata = image.metadata.clone();
        metadata.source_image_id = Some(image.image_id.to_string());
        metadata.owner_id = Some(image.owner_id.to_string());
        metadata.creation_date = Some(image.creation_date.clone());
        let stored_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(task.started_at_ms) * 1_000_000)
                .map_err(|e| Error::InvalidInput(Detail::because("task start out of range", e)))?;
        let archive = ArchivePlan::with_min_unit_blocks(
            metadata,
            sources,
            stored_at,
            self.config.min_unit_blocks,
        )?
        .with_min_part_size(self.config.min_part_size);
        let units = archive.units.len() as u64;
        let plan = StorePlan {
            parts_per_unit: parts_per_unit(units),
            archive,
            snapshots: image
                .snapshots
                .iter()
                .map(|s| s.snapshot_id.clone())
                .collect(),
        };
        self.put_work(id, PLAN, &plan)?;
        self.tasks.set_units_total(id, units)?;
        Ok(units)
    }

    /// Writes unit `unit` of a store task as part `unit + 1`.
    pub fn store_unit(&self, id: &TaskId, unit: u64) -> Result<()> {
        let task = self.running_task(id)?;
        if self.tasks.unit_recorded(id, unit)? {
            return Ok(());
        }
        let upload = upload_of(&task)?;
        let plan = self.store_plan(id)?;
        let index = usize::try_from(unit)
            .ok()
            .filter(|&u| u < plan.archive.units.len())
            .ok_or_else(|| Error::InvalidInput(format!("task {id} has no unit {unit}").into()))?;
        let source = SnapshotBlocks {
            store: &*self.snapshots,
            snapshots: &plan.snapshots,
        };
        let planned = &plan.archive.units[index];
        if let Some(snapshot) = plan.snapshots.get(planned.disk) {
            self.snapshots.will_read(
                snapshot,
                planned.first_block..planned.first_block + planned.block_count,
            );
        }
        let target = PartTarget {
            objects: &*self.objects,
            bucket: &task.bucket,
            key: &task.key,
            upload,
            first_part: first_part(unit, plan.parts_per_unit)?,
            parts: plan.parts_per_unit,
        };
        let cut = Cut::for_unit(&plan.archive, index, plan.parts_per_unit)?;
        let (record, parts) = encode_in_parts(
            &target,
            cut,
            &self.config.spool_dir,
            &format!("{id}-{unit}"),
            |out| {
                self.within_budget(&task, unit, || {
                    let (_, record) = encode_unit(
                        &plan.archive,
                        index,
                        &source,
                        self.config.unit_threads,
                        out,
                        &mut |bytes| self.report(id, bytes),
                    )?;
                    Ok(record)
                })
            },
        )?;
        let json = serde_json::to_string(&StoredUnit {
            parts,
            etag: None,
            record,
        })
        .map_err(|e| Error::InvalidInput(Detail::because("unit record does not serialise", e)))?;
        self.tasks.record_unit(id, unit, &json)?;
        Ok(())
    }

    /// Completes a store task: final part, CompleteMultipartUpload, checks.
    pub fn finalize_store(&self, id: &TaskId) -> Result<()> {
        let Some(task) = self.claim_completion(id)? else {
            return Ok(());
        };
        let upload = upload_of(&task)?;
        let plan = self.store_plan(id)?;
        let mut parts = Vec::new();
        let mut records = Vec::new();
        for (unit, json) in self.tasks.units(id)? {
            let stored: StoredUnit = serde_json::from_str(&json).map_err(|e| {
                Error::Malformed(Detail::because(
                    format!("record of unit {unit} of task {id} is damaged"),
                    e,
                ))
            })?;
            let (unit_parts, record) = stored.into_parts(unit)?;
            parts.extend(unit_parts);
            records.push(record);
        }
        let last = plan.archive.final_part(&records)?;
        let expected_size: u64 =
            records.iter().map(|r| r.compressed_len).sum::<u64>() + last.bytes.len() as u64;
        let (spool, ()) =
            SpoolFile::write(&self.config.spool_dir, &format!("{id}-final"), |out| {
                std::io::Write::write_all(out, &last.bytes)
                    .map_err(|e| Error::io("writing the final part", e))
            })?;
        let final_number = final_part(records.len() as u64, plan.parts_per_unit)?;
        let completed = self
            .objects
            .upload_part(&task.bucket, &task.key, upload, final_number, &spool.path)
            .and_then(|etag| {
                parts.push(CompletedPart {
                    part_number: final_number,
                    etag,
                });
                self.objects
                    .complete_multipart(&task.bucket, &task.key, upload, &parts)
            });
        if let Err(e) = completed {
            // An earlier attempt may have completed the upload and then failed.
            let done = matches!(
                self.objects.head_object(&task.bucket, &task.key),
                Ok(Some(info)) if info.size == expected_size
            );
            if !done {
                return Err(e);
            }
        }
        // Check what S3 now holds: its size, and that it opens to our manifest.
        let info = self
            .objects
            .head_object(&task.bucket, &task.key)?
            .ok_or_else(|| Error::Transient(format!("{} is not visible yet", task.key).into()))?;
        if info.size != expected_size {
            return Err(Error::Malformed(
                format!(
                    "the completed object is {} bytes; its parts add up to {expected_size}",
                    info.size
                )
                .into(),
            ));
        }
        let reader = ObjectReader::new(&*self.objects, &task.bucket, &task.key, &info);
        let index = ArchiveIndex::open(&reader)?;
        if *index.manifest() != last.manifest {
            return Err(Error::Malformed(
                "the completed object's manifest differs from the one written".into(),
            ));
        }
        self.end(id, Ending::Complete)
    }

    /// Fails a store task: nothing stays in the bucket, the quota is released.
    /// The end is claimed first, so nothing is deleted unless this call holds
    /// it: a finalize that claimed it first keeps its object (unless `by` may
    /// take its claim over). Returns whether this call held the end.
    pub fn fail_store(&self, id: &TaskId, reason: &str, by: FailedBy) -> Result<bool> {
        let Some(task) = self.claim_failure(id, reason, by)? else {
            return Ok(false);
        };
        // A task that died between creating its upload and recording it does not
        // know its id; the key is the task's alone (one store of an image into a
        // bucket runs at a time), so any upload of the key is its.
        let uploads = match &task.upload_id {
            Some(upload) => vec![upload.clone()],
            None => self
                .objects
                .list_multipart_uploads(&task.bucket)?
                .into_iter()
                .filter(|(_, key)| *key == task.key)
                .map(|(upload, _)| upload)
                .collect(),
        };
        for upload in &uploads {
            match self
                .objects
                .abort_multipart(&task.bucket, &task.key, upload)
            {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if task.upload_id.is_some() {
            // A finalize that completed the upload and then failed its checks left
            // an object that must not stay: the key was free when the task began.
            // (Aborting first matters: an aborted upload can no longer complete.)
            self.objects.delete_object(&task.bucket, &task.key)?;
        }
        self.end(id, Ending::Fail)?;
        Ok(true)
    }
}

/// The failure reason of a cancelled task.
pub const CANCELLED: &str = "cancelled";

impl Engine {
    /// Cancels `account`'s in-progress store of `image` (into `bucket`, if
    /// given; the newest such task otherwise): it ends Failed with reason
    /// "cancelled", its upload aborted, so no object appears. Steps still
    /// running see the task has ended and stop.
    pub fn cancel_store(
        &self,
        account: &AccountId,
        image: &ImageId,
        bucket: Option<&BucketName>,
    ) -> Result<Task> {
        let task = self
            .tasks
            .list(account, TaskKind::Store, now_ms())?
            .into_iter()
            .find(|t| {
                t.state == TaskState::InProgress
                    && t.image_id.as_ref() == Some(image)
                    && bucket.is_none_or(|b| t.bucket == *b)
            })
            .ok_or_else(|| {
                Error::NotFound(format!("no store task of image {image} is in progress").into())
            })?;
        if !self.fail_store(&task.id, CANCELLED, FailedBy::Cancel)? {
            let now = self.task(&task.id)?;
            return Err(Error::IncorrectState(
                match (now.state, now.ending()) {
                    (TaskState::InProgress, Some(Ending::Complete)) => format!(
                        "the store of image {image} is completing; it can no longer be cancelled"
                    ),
                    (TaskState::InProgress, _) => {
                        format!("the store of image {image} is already being failed")
                    }
                    (state, _) => format!("the store of image {image} has already ended ({state})"),
                }
                .into(),
            ));
        }
        // The steps would stop by themselves at their next look at the task;
        // stopping the execution saves the units in between.
        self.runner.stop(TaskKind::Store, &task.id, CANCELLED)?;
        self.task(&task.id)
    }
}

/// The first part number of unit `unit` when each unit owns `parts_per_unit`
/// (part numbers start at 1; the final part follows the last unit's).
fn first_part(unit: u64, parts_per_unit: u32) -> Result<u32> {
    run_start(unit, parts_per_unit, parts_per_unit)
        .ok_or_else(|| Error::InvalidInput(format!("unit {unit} is past S3's 10,000 parts").into()))
}

/// The final part's number: the one after the last unit's run.
fn final_part(units: u64, parts_per_unit: u32) -> Result<u32> {
    run_start(units, parts_per_unit, 1).ok_or_else(|| {
        Error::InvalidInput(format!("{units} units are past S3's 10,000 parts").into())
    })
}

/// The first of `len` part numbers starting after `runs` runs of `run`
/// numbers each, if all of them are within S3's 10,000.
fn run_start(runs: u64, run: u32, len: u32) -> Option<u32> {
    let first = runs.checked_mul(u64::from(run))?.checked_add(1)?;
    let last = first.checked_add(u64::from(len.max(1)) - 1)?;
    if last > MAX_PARTS {
        return None;
    }
    u32::try_from(first).ok()
}
