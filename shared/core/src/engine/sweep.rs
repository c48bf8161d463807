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

use crate::engine::Engine;
use crate::engine::intake::StoreRequest;
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Tasks failed because their execution was gone.
    pub failed: Vec<TaskId>,
    /// Uploads aborted, as `s3://bucket/key#upload`.
    pub aborted_uploads: Vec<String>,
    /// Counters corrected, as `account/kind: from -> to`.
    pub corrected_counters: Vec<String>,
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
    /// left alone (their execution may not have started yet).
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
            if self.runner.status(task.kind, &task.id)? == ExecutionStatus::Running {
                continue;
            }
            match task.kind {
                TaskKind::Store => self.fail_store(&task.id, ABANDONED)?,
                TaskKind::Restore => self.fail_restore(&task.id, ABANDONED)?,
            }
            report.failed.push(task.id.clone());
            failed.push(task);
        }

        self.abort_orphaned_uploads(&running, &failed, &mut report)?;

        for (account, kind, gib) in counters {
            let expected: u64 = running
                .iter()
                .filter(|t| t.account == account && t.kind == kind)
                .map(|t| t.size_gib)
                .sum();
            if gib != expected && self.tasks.correct_counter(&account, kind, gib, expected)? {
                report
                    .corrected_counters
                    .push(format!("{account}/{}: {gib} -> {expected}", kind.as_str()));
            }
        }
        Ok(report)
    }

    /// Aborts uploads of archive keys that no running task owns: those of the
    /// tasks just failed (an upload created but never recorded, by an intake
    /// that crashed), and second uploads of a running task's key.
    fn abort_orphaned_uploads(
        &self,
        running: &[Task],
        failed: &[&Task],
        report: &mut SweepReport,
    ) -> Result<()> {
        let stores = |t: &&Task| t.kind == TaskKind::Store;
        let buckets: BTreeSet<&BucketName> =
            running.iter().filter(stores).map(|t| &t.bucket).collect();
        for bucket in buckets {
            for (upload, key) in self.objects.list_multipart_uploads(bucket)? {
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
                if orphaned {
                    self.abort_upload(bucket, &key, &upload)?;
                    report
                        .aborted_uploads
                        .push(format!("s3://{bucket}/{key}#{upload}"));
                }
            }
        }
        Ok(())
    }

    fn abort_upload(&self, bucket: &BucketName, key: &ObjectKey, upload: &str) -> Result<()> {
        match self.objects.abort_multipart(bucket, key, upload) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts a store of every available image of `account` tagged
    /// `policy.tag` whose archive is not in `policy.bucket` yet. Returns the
    /// tasks started. Images already being stored are skipped; a full quota
    /// stops the run (the next one continues).
    pub fn apply_archive_policy(
        &self,
        account: &AccountId,
        policy: &ArchivePolicy,
    ) -> Result<Vec<TaskId>> {
        let mut started = Vec::new();
        for image in self.catalog.list_images(account)? {
            let tagged = image.metadata.tags.contains(&policy.tag);
            if !tagged || image.state != ResourceState::Available {
                continue;
            }
            let key = policy.bucket.key_for(&image.image_id);
            if self
                .objects
                .head_object(&policy.bucket.bucket, &key)?
                .is_some()
            {
                continue;
            }
            let request = StoreRequest {
                image_id: image.image_id.clone(),
                bucket: policy.bucket.clone(),
                object_tags: Vec::new(),
            };
            match self.create_store_task(account, &request) {
                Ok(task) => started.push(task.id),
                Err(Error::AlreadyExists(_)) => {}
                Err(Error::LimitExceeded(_)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }
}
