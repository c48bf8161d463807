//! Store and restore tasks as every task store (SQLite locally, DynamoDB on AWS)
//! records them, and the quota rules that admit them.
//!
//! Quota: per account and kind, the sum of the volume sizes (GiB) of tasks in
//! progress. A task is admitted while that sum is *below* the limit (1,200 GiB
//! for stores, 600 GiB for restores by default: EC2's current quotas, which were
//! 600 and 300 until 2023), so one task larger than the limit is
//! admitted when nothing else runs, and then blocks new tasks until it ends.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, ImageId, TaskId};
use crate::storage::{BucketName, ObjectKey};

/// How long tasks stay visible to describe calls.
pub const RETENTION_DAYS: i64 = 31;
/// [`RETENTION_DAYS`] in milliseconds.
pub const RETENTION_MS: i64 = RETENTION_DAYS * 24 * 60 * 60 * 1000;

/// `ms` (milliseconds since the epoch) as EC2 writes timestamps:
/// `2021-01-01T01:01:01.001Z`.
pub fn iso8601_millis(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Whether a task stores an AMI or restores one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// CreateStoreImageTask.
    Store,
    /// CreateRestoreImageTask.
    Restore,
}

impl TaskKind {
    /// Stable lowercase name (also the stored form).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Store => "store",
            TaskKind::Restore => "restore",
        }
    }

    /// Parses [`Self::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        [TaskKind::Store, TaskKind::Restore]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A task's state, spelled as DescribeStoreImageTasks reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Queued or running.
    InProgress,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully (see the failure reason).
    Failed,
}

impl TaskState {
    /// EC2's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::InProgress => "InProgress",
            TaskState::Completed => "Completed",
            TaskState::Failed => "Failed",
        }
    }

    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskState::InProgress,
            TaskState::Completed,
            TaskState::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an in-progress task is to end, once something has claimed its end.
///
/// Finalize, the fail step, a cancel and the sweeper race to end a task
/// (Lambda delivers at least once; a user cancels at any moment). Each first
/// claims the end with a conditional write ([`crate::ports::TaskStore::claim_end`])
/// and only the claimant does anything with side effects (completes the
/// upload, deletes the object, marks the image): the loser does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ending {
    /// Finalize is completing it.
    Complete,
    /// It is being failed (cleaned up, then marked Failed).
    Fail,
}

impl Ending {
    /// Stable lowercase name (also the stored form).
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Fail => "fail",
        }
    }

    /// Parses [`Self::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        [Ending::Complete, Ending::Fail]
            .into_iter()
            .find(|e| e.as_str() == s)
    }

    /// The state a task ends in.
    pub fn final_state(self) -> TaskState {
        match self {
            Ending::Complete => TaskState::Completed,
            Ending::Fail => TaskState::Failed,
        }
    }
}

/// A held claim on a task's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndClaim {
    /// How it ends.
    pub ending: Ending,
    /// Why it fails (a [`Ending::Fail`] claim): the first claimant's words.
    pub reason: Option<String>,
    /// When the claim was made, milliseconds since the epoch.
    pub at_ms: i64,
}

/// What a claimant asks of [`crate::ports::TaskStore::claim_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest<'a> {
    /// The ending wanted.
    pub ending: Ending,
    /// Why it fails (kept only by the claim that wins).
    pub reason: Option<&'a str>,
    /// Take over another ending's claim made before this time (ms): the
    /// workflow's fail step after its finalize failed, a sweeper or a
    /// recovery after the claimant is known gone. `None`: never.
    pub overrule_before_ms: Option<i64>,
    /// Now, milliseconds since the epoch.
    pub now_ms: i64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the end (newly, or again: a claim of the same ending
    /// is re-entered, so a retried step carries on). The task as it now is.
    Held(Task),
    /// Another ending holds it, or the task has ended: the caller must not
    /// touch anything. The task as it is.
    Taken(Task),
}

/// Per-account limits on the GiB of tasks in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// Store tasks are admitted while fewer GiB than this are in progress.
    pub store_gib: u64,
    /// Restore tasks likewise.
    pub restore_gib: u64,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            store_gib: 1_200,
            restore_gib: 600,
        }
    }
}

impl QuotaLimits {
    /// The limit for `kind`.
    pub fn for_kind(&self, kind: TaskKind) -> u64 {
        match kind {
            TaskKind::Store => self.store_gib,
            TaskKind::Restore => self.restore_gib,
        }
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// The task's id.
    pub id: TaskId,
    /// Store or restore.
    pub kind: TaskKind,
    /// The account that asked for it.
    pub account: AccountId,
    /// The AMI stored (store) or being created (restore; set once the new image
    /// is registered, just after admission).
    pub image_id: Option<ImageId>,
    /// The bucket of the archive.
    pub bucket: BucketName,
    /// The archive's key.
    pub key: ObjectKey,
    /// Sum of the AMI's volume sizes: what the task counts against the quota.
    pub size_gib: u64,
    /// The multipart upload a store writes (set just after admission).
    pub upload_id: Option<String>,
    /// Units to transfer (known once the task is planned).
    pub units_total: u64,
    /// Units transferred, counted from the unit records (each once, however
    /// often it was retried; no item that every unit writes holds a count).
    pub units_done: u64,
    /// Current state.
    pub state: TaskState,
    /// Start time, milliseconds since the epoch.
    pub started_at_ms: i64,
    /// End time, if it ended.
    pub ended_at_ms: Option<i64>,
    /// Why it failed, if it did.
    pub failure_reason: Option<String>,
    /// Who claimed its end, while it is still in progress (kept afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<EndClaim>,
    /// The archive a restore reads, as intake found it: every later read is
    /// pinned to it, so a replaced object fails the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourcePin>,
}

/// What pins a restore's source archive: the object's ETag and the digest of
/// the manifest intake read from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourcePin {
    /// The object's ETag.
    pub etag: String,
    /// [`crate::archive::Manifest::digest`] of its manifest.
    pub manifest_digest: String,
}

impl Task {
    /// A new in-progress task, not yet planned.
    pub fn start(
        kind: TaskKind,
        account: AccountId,
        image_id: Option<ImageId>,
        bucket: BucketName,
        key: ObjectKey,
        size_gib: u64,
        now_ms: i64,
    ) -> Self {
        Self {
            id: TaskId::fresh(),
            kind,
            account,
            image_id,
            bucket,
            key,
            size_gib,
            upload_id: None,
            units_total: 0,
            units_done: 0,
            state: TaskState::InProgress,
            started_at_ms: now_ms,
            ended_at_ms: None,
            failure_reason: None,
            claim: None,
            source: None,
        }
    }

    /// The ending claimed, if any.
    pub fn ending(&self) -> Option<Ending> {
        self.claim.as_ref().map(|c| c.ending)
    }

    /// Estimated progress: 100 when completed, otherwise the share of units done
    /// (at most 99 while the final step is still to run).
    pub fn progress_percent(&self) -> u8 {
        match self.state {
            TaskState::Completed => 100,
            _ if self.units_total == 0 => 0,
            _ => (self.units_done.min(self.units_total) * 99 / self.units_total) as u8,
        }
    }

    /// When the task stops being visible (start + 31 days).
    pub fn expires_at_ms(&self) -> i64 {
        self.started_at_ms + RETENTION_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_estimated_from_units() {
        let mut t = Task::start(
            TaskKind::Store,
            AccountId::local_default(),
            Some(ImageId::fresh()),
            "bkt".parse().unwrap(),
            "x.bin".parse().unwrap(),
            8,
            0,
        );
        assert_eq!(t.progress_percent(), 0, "not planned yet");
        t.units_total = 4;
        assert_eq!(t.progress_percent(), 0);
        t.units_done = 2;
        assert_eq!(t.progress_percent(), 49);
        t.units_done = 4;
        assert_eq!(t.progress_percent(), 99, "the final part is still to write");
        t.state = TaskState::Completed;
        assert_eq!(t.progress_percent(), 100);
        assert_eq!(t.expires_at_ms(), RETENTION_MS);
        assert_eq!(TaskState::parse("InProgress"), Some(TaskState::InProgress));
        assert_eq!(TaskKind::parse("restore"), Some(TaskKind::Restore));
        assert_eq!(QuotaLimits::default().for_kind(TaskKind::Store), 1_200);
        assert_eq!(QuotaLimits::default().for_kind(TaskKind::Restore), 600);
        assert_eq!(
            iso8601_millis(1_609_462_861_001),
            "2021-01-01T01:01:01.001Z"
        );
    }
}
