//! The sweeper and archive policies: what a schedule runs (EventBridge on AWS).
//!
//! [`Engine::sweep`] fails in-progress tasks whose workflow execution is gone
//! (a crashed intake, a stopped or timed-out execution whose fail step never
//! ran), which releases their quota and aborts their upload or fails their
//! image; aborts uploads a crashed intake left behind; and reconciles the
//! quota counters with the tasks actually in progress.
//!
//! [`Engine::apply_archive_policy`] stores every available image carrying a tag
//! that has no stored copy in a bucket yet.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::engine::intake::StoreRequest;
use crate::engine::{Engine, FailedBy};
use crate::ids::{AccountId, ResourceState, TaskId};
use crate::image::Tag;
use crate::ports::ExecutionStatus;
use crate::storage::{BucketName, BucketPath, ObjectKey};
use crate::task::{Task, TaskKind};
use crate::{Error, Result};

/// The failure reason of a task whose execution is gone.
pub const ABANDONED: &str =
    "abandoned: its workflow execution ended or never started, and the task was still in progress";

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Tasks failed because their execution was gone.
    pub failed: Vec<TaskId>,
    /// Uploads aborted, as `s3://bucket/key#upload`.
    pub aborted_uploads: Vec<String>,
    /// Counters corrected, as `account/kind: from -> to`.
    pub corrected_counters: Vec<String>,
    /// What could not be done, one line each (the sweep went on past them).
    pub errors: Vec<String>,
}

/// What one run of an archive policy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// Store tasks started.
    pub started: Vec<TaskId>,
    /// Images that could not be stored, as `ami-…: why` (the run went on
    /// past each, but for a full quota, which ends the run).
    pub refused: Vec<String>,
}

/// An archive policy: store every image tagged `tag` into `bucket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePolicy {
    /// `Key=Value` the images must carry.
    #[serde(with = "tag_text")]
    pub tag: Tag,
    /// `bucket` or `bucket/path`.
    #[serde(with = "bucket_path_text")]
    pub bucket: BucketPath,
}

mod tag_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::image::Tag;

    pub fn serialize<S: Serializer>(t: &Tag, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}={}", t.key(), t.value()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

mod bucket_path_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::storage::BucketPath;

    pub fn serialize<S: Serializer>(b: &BucketPath, s: S) -> Result<S::Ok, S::Error> {
        let mut text = b.bucket.to_string();
        for seg in &b.path {
            text.push('/');
            text.push_str(seg);
        }
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BucketPath, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Engine {
    /// Sweeps: see the module documentation. Tasks younger than `grace_ms` are
    /// left alone (their execution may not have started yet). One task's,
    /// upload's or counter's failure is recorded in the report and the sweep
    /// goes on: a clean-up that is refused (say, a missing permission) must not
    /// keep every other abandoned task in progress, holding its quota.
    /// An error is returned only when the task store cannot be read at all.
    pub fn sweep(&self, now_ms: i64, grace_ms: i64) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        // Counters first, then tasks: an admission or release after the
        // counters were read changes them, so correcting from the value read
        // cannot undo it (see TaskStore::correct_counter).
        let counters = self.tasks.counters()?;
        let running = self.tasks.in_progress()?;

        let mut failed: Vec<&Task> = Vec::new();
        for task in &running {
            if now_ms - task.started_at_ms < grace_ms {
                continue;
            }
            match self.sweep_task(task) {
                Ok(true) => {
                    report.failed.push(task.id.clone());
                    failed.push(task);
                }
                Ok(false) => {}
                Err(e) => report
                    .errors
                    .push(format!("failing abandoned task {}: {e}", task.id)),
            }
        }

        self.abort_orphaned_uploads(&running, &failed, &mut report);

        for (account, kind, gib) in counters {
            let expected: u64 = running
                .iter()
                .filter(|t| t.account == account && t.kind == kind)
                .map(|t| t.size_gib)
                .sum();
            if gib == expected {
                continue;
            }
            match self.tasks.correct_counter(&account, kind, gib, expected) {
                Ok(true) => report
                    .corrected_counters
                    .push(format!("{account}/{}: {gib} -> {expected}", kind.as_str())),
                Ok(false) => {}
                Err(e) => report.errors.push(format!(
                    "correcting the {} counter of {account}: {e}",
                    kind.as_str()
                )),
            }
        }
        Ok(report)
    }

    /// Fails `task` if its execution is gone; returns whether it did. A task
    /// whose end a live step has claimed (younger than [`STEP_LEASE_MS`]) is
    /// left to it.
    fn sweep_task(&self, task: &Task) -> Result<bool> {
        if self.runner.status(task.kind, &task.id)? == ExecutionStatus::Running {
            return Ok(false);
        }
        match task.kind {
            TaskKind::Store => self.fail_store(&task.id, ABANDONED, FailedBy::Sweep),
            TaskKind::Restore => self.fail_restore(&task.id, ABANDONED, FailedBy::Sweep),
        }
    }

    /// Aborts uploads of archive keys that no running task owns: those of the
    /// tasks just failed (an upload created but never recorded, by an intake
    /// that crashed), and second uploads of a running task's key.
    fn abort_orphaned_uploads(&self, running: &[Task], failed: &[&Task], report: &mut SweepReport) {
        let stores = |t: &&Task| t.kind == TaskKind::Store;
        let buckets: BTreeSet<&BucketName> =
            running.iter().filter(stores).map(|t| &t.bucket).collect();
        for bucket in buckets {
            let uploads = match self.objects.list_multipart_uploads(bucket) {
                Ok(uploads) => uploads,
                Err(e) => {
                    report
                        .errors
                        .push(format!("listing the uploads of bucket {bucket}: {e}"));
                    continue;
                }
            };
            for (upload, key) in uploads {
                let owner =
                    |t: &&Task| t.kind == TaskKind::Store && t.bucket == *bucket && t.key == key;
                let live = running
                    .iter()
                    .filter(|t| !failed.iter().any(|f| f.id == t.id))
                    .find(owner);
                let orphaned = match live {
                    Some(t) => t.upload_id.as_deref().is_some_and(|u| u != upload),
                    None => failed.iter().any(owner),
                };
                if !orphaned {
                    continue;
                }
                let target = format!("s3://{bucket}/{key}#{upload}");
                match self.abort_upload(bucket, &key, &upload) {
                    Ok(()) => report.aborted_uploads.push(target),
                    Err(e) => report.errors.push(format!("aborting {target}: {e}")),
                }
            }
        }
    }

    fn abort_upload(&self, bucket: &BucketName, key: &ObjectKey, upload: &str) -> Result<()> {
        match self.objects.abort_multipart(bucket, key, upload) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts a store of every available image of `account` tagged
    /// `policy.tag` whose archive is not in `policy.bucket` yet. Images already
    /// being stored are skipped quietly; an image that cannot be stored (say,
    /// a paravirtual one, or a snapshot still pending) is reported and the run
    /// goes on with the next; a full quota stops the run (the next continues).
    /// An error is returned only when the images cannot be listed at all.
    pub fn apply_archive_policy(
        &self,
        account: &AccountId,
        policy: &ArchivePolicy,
    ) -> Result<PolicyReport> {
        let mut report = PolicyReport::default();
        for image in self.catalog.list_images(account)? {
            let tagged = image.metadata.tags.contains(&policy.tag);
            if !tagged || image.state != ResourceState::Available {
                continue;
            }
            let key = policy.bucket.key_for(&image.image_id);
            match self.objects.head_object(&policy.bucket.bucket, &key) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    report.refused.push(format!("{}: {e}", image.image_id));
                    continue;
                }
            }
            let request = StoreRequest {
                image_id: image.image_id.clone(),
                bucket: policy.bucket.clone(),
                object_tags: Vec::new(),
            };
            match self.create_store_task(account, &request) {
                Ok(task) => report.started.push(task.id),
                Err(Error::AlreadyExists(_)) => {}
                Err(e @ Error::LimitExceeded(_)) => {
                    report.refused.push(format!("{}: {e}", image.image_id));
                    break;
                }
                Err(e) => report.refused.push(format!("{}: {e}", image.image_id)),
            }
        }
        Ok(report)
    }
}
