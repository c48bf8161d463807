//! The store and restore engine: the steps behind CreateStoreImageTask,
//! CreateRestoreImageTask and DescribeStoreImageTasks, written once over the
//! [ports](crate::ports) and run by every deployment (the local binary, the
//! Lambda functions).
//!
//! - [`intake`]: validate a request, admit it under the quota, create the
//!   multipart upload (store) or the pending image (restore), start the workflow.
//! - [`store`] and [`restore`]: the workflow steps (plan, unit, finalize, fail)
//!   that the state machines in `infra/statemachine/` call through [`steps`].
//! - [`describe`]: the task listings.
//! - [`metadata`]: the S3 metadata of stored objects.

pub mod budget;
pub mod describe;
pub mod intake;
pub mod metadata;
pub mod moved;
pub mod parts;
pub mod restore;
pub mod steps;
pub mod store;
pub mod sweep;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::archive::plan::{MIN_PART_SIZE, MIN_UNIT_PRESENT_BLOCKS};
use crate::ids::{TaskId, unique_token};
use crate::ports::{ImageCatalog, ObjectStore, SnapshotStore, TaskStore, WorkflowRunner};
use crate::storage::{BucketName, ObjectKey};
use crate::task::{Claim, ClaimRequest, Ending, QuotaLimits, Task, TaskState};
use crate::{Detail, Error, Result};

/// How an engine is tuned. The defaults are the seed's and S3's.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// In-progress GiB limits per account.
    pub limits: QuotaLimits,
    /// Bucket in the work store where plans and Map item lists are kept.
    pub work_bucket: BucketName,
    /// Local directory where a unit is written before it is uploaded.
    pub spool_dir: PathBuf,
    /// Compression threads per unit.
    pub unit_threads: usize,
    /// Smallest unit, in present blocks (tests use small units).
    pub min_unit_blocks: u64,
    /// Padding target of every part but the last (S3's 5 MiB).
    pub min_part_size: u64,
    /// Key that makes pagination tokens tamper-evident.
    pub token_key: [u8; 32],
    /// The account's EBS block-request budget that units share (the AWS
    /// deployment's); `None` paces nothing (the local backends).
    pub ebs_budget: Option<budget::RequestBudget>,
}

impl EngineConfig {
    /// Defaults, with plans in `work_bucket` and units spooled in `spool_dir`.
    pub fn new(work_bucket: BucketName, spool_dir: PathBuf, token_key: [u8; 32]) -> Self {
        Self {
            limits: QuotaLimits::default(),
            work_bucket,
            spool_dir,
            unit_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            min_unit_blocks: MIN_UNIT_PRESENT_BLOCKS,
            min_part_size: MIN_PART_SIZE,
            token_key,
            ebs_budget: None,
        }
    }
}

/// How long one step may run (Lambda's 15 minutes, and a minute's margin): a
/// claim older than this, on a task whose execution is gone, was left by a
/// step that died.
pub const STEP_LEASE_MS: i64 = 16 * 60 * 1000;

/// Who fails a task: it decides whether a finalize's claim on the task's end
/// may be taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedBy {
    /// The workflow's own fail step (after a unit or the finalize failed:
    /// the finalize's claim, if any, belongs to a step that has ended).
    Workflow,
    /// Intake, undoing a task it admitted but could not start.
    Intake,
    /// A user's cancel: never takes over a finalize.
    Cancel,
    /// The sweeper, for a task whose execution is gone: takes over claims
    /// older than [`STEP_LEASE_MS`].
    Sweep,
    /// Recovery of a task whose process died: its claims died with it.
    Recovery,
}

impl FailedBy {
    /// The claims older than this (ms since the epoch) may be taken over.
    pub fn overrule_before_ms(self, now_ms: i64) -> Option<i64> {
        match self {
            FailedBy::Workflow | FailedBy::Recovery => Some(i64::MAX),
            FailedBy::Sweep => Some(now_ms - STEP_LEASE_MS),
            FailedBy::Intake | FailedBy::Cancel => None,
        }
    }
}

/// Receives the bytes of present blocks a task has moved.
pub type ProgressSink = Arc<dyn Fn(&TaskId, u64) + Send + Sync>;

/// The engine: ports plus configuration.
pub struct Engine {
    /// Images and their snapshots' descriptions.
    pub catalog: Arc<dyn ImageCatalog>,
    /// Snapshot contents.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// Where archives are stored.
    pub objects: Arc<dyn ObjectStore>,
    /// Where plans are kept between steps (a work bucket).
    pub work: Arc<dyn ObjectStore>,
    /// Tasks, units and quota counters.
    pub tasks: Arc<dyn TaskStore>,
    /// Starts workflows.
    pub runner: Arc<dyn WorkflowRunner>,
    /// Tuning.
    pub config: EngineConfig,
    /// Optional progress reports (the CLI's progress bar).
    pub progress: Option<ProgressSink>,
    /// Bytes moved by the tasks this engine runs (for describe answers).
    pub moved: moved::TaskBytes,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// The task `id`, which must exist.
    pub fn task(&self, id: &TaskId) -> Result<Task> {
        self.tasks.get(id).and_then(|t| {
            t.ok_or_else(|| Error::NotFound(format!("task {id} does not exist").into()))
        })
    }

    /// The task `id`, which must still be in progress with no end claimed: a
    /// step of a task that is ending (a cancelled one, say) must not touch
    /// anything.
    fn running_task(&self, id: &TaskId) -> Result<Task> {
        let task = self.task(id)?;
        if task.state != TaskState::InProgress {
            return Err(Error::IncorrectState(
                format!("task {id} has already ended ({})", task.state).into(),
            ));
        }
        if let Some(ending) = task.ending() {
            return Err(Error::IncorrectState(
                format!("task {id} is ending ({})", ending.as_str()).into(),
            ));
        }
        Ok(task)
    }

    /// Claims the end of task `id` for `ending` (see [`TaskStore::claim_end`]).
    fn claim(
        &self,
        id: &TaskId,
        ending: Ending,
        reason: Option<&str>,
        overrule_before_ms: Option<i64>,
    ) -> Result<Claim> {
        self.tasks.claim_end(
            id,
            &ClaimRequest {
                ending,
                reason,
                overrule_before_ms,
                now_ms: now_ms(),
            },
        )
    }

    /// Claims a finalize's end of task `id`: `None` if it has already
    /// completed (a finalize retried after it succeeded, say because its answer
    /// was lost, succeeds again without doing anything); an error if it is
    /// being failed or has failed.
    fn claim_completion(&self, id: &TaskId) -> Result<Option<Task>> {
        match self.claim(id, Ending::Complete, None, None)? {
            Claim::Held(task) => Ok(Some(task)),
            Claim::Taken(task) if task.state == TaskState::Completed => Ok(None),
            Claim::Taken(task) => Err(Error::IncorrectState(
                format!(
                    "task {id} is not completed: it {}",
                    match task.state {
                        TaskState::InProgress => "is being failed",
                        _ => "has failed",
                    }
                )
                .into(),
            )),
        }
    }

    /// Claims a failure of task `id` for `reason`, taking over a finalize's
    /// claim where `by` may: the task, or `None` if another end holds it.
    fn claim_failure(&self, id: &TaskId, reason: &str, by: FailedBy) -> Result<Option<Task>> {
        let overrule = by.overrule_before_ms(now_ms());
        Ok(
            match self.claim(id, Ending::Fail, Some(reason), overrule)? {
                Claim::Held(task) => Some(task),
                Claim::Taken(_) => None,
            },
        )
    }

    fn work_key(&self, task: &TaskId, name: &str) -> Result<ObjectKey> {
        format!("tasks/{task}/{name}").parse()
    }

    fn put_work(
        &self,
        task: &TaskId,
        name: &str,
        value: &impl serde::Serialize,
    ) -> Result<ObjectKey> {
        let key = self.work_key(task, name)?;
        let json = serde_json::to_vec(value).map_err(|e| {
            Error::InvalidInput(Detail::because(format!("{name} does not serialise"), e))
        })?;
        self.work
            .put_object(&self.config.work_bucket, &key, &json)?;
        Ok(key)
    }

    fn get_work<T: serde::de::DeserializeOwned>(
        &self,
        task: &TaskId,
        name: &str,
    ) -> Result<Option<T>> {
        let key = self.work_key(task, name)?;
        let Some(info) = self.work.head_object(&self.config.work_bucket, &key)? else {
            return Ok(None);
        };
        let bytes = self
            .work
            .get_range(&self.config.work_bucket, &key, 0..info.size, None)?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Malformed(Detail::because(
                format!("{name} of task {task} is damaged"),
                e,
            ))
        })
    }

    /// Ends a task whose end `ending` holds (releasing its quota) and drops
    /// its work objects. A completion overruled meanwhile is an error; a
    /// failure that another fail step finished first is not.
    fn end(&self, id: &TaskId, ending: Ending) -> Result<()> {
        self.moved.forget(id);
        if !self.tasks.finish(id, ending, now_ms())? {
            let task = self.task(id)?;
            if task.state != ending.final_state() {
                return Err(Error::IncorrectState(
                    format!(
                        "task {id} was taken over before it could be {}",
                        ending.final_state()
                    )
                    .into(),
                ));
            }
        }
        self.drop_work(id);
        Ok(())
    }

    /// Removes a task's work objects (best effort: they are only caches).
    fn drop_work(&self, task: &TaskId) {
        for name in [store::PLAN, steps::ITEMS] {
            if let Ok(key) = self.work_key(task, name) {
                let _ = self.work.delete_object(&self.config.work_bucket, &key);
            }
        }
    }

    fn report(&self, task: &TaskId, bytes: u64) {
        self.moved.add(task, bytes);
        if let Some(p) = &self.progress {
            p(task, bytes);
        }
    }
}

/// A file in the spool directory, deleted when dropped.
struct SpoolFile {
    path: PathBuf,
}

impl SpoolFile {
    /// A new, empty spool file in `dir` (made if missing), for its owner only
    /// (it holds a unit of someone's disk), removed when dropped.
    fn create(dir: &Path, name: &str) -> Result<(Self, File)> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{name}.{}.part", &unique_token()[..16]));
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok((Self { path }, file))
    }

    /// Writes `fill`'s output to a new spool file. It is not synced: uploading
    /// it makes the part durable (the object store's job), and a crash before
    /// then loses nothing recorded.
    fn write<T>(
        dir: &Path,
        name: &str,
        fill: impl FnOnce(&mut BufWriter<&File>) -> Result<T>,
    ) -> Result<(Self, T)> {
        let (spool, file) = Self::create(dir, name)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let value = fill(&mut out)?;
        out.flush()
            .map_err(|e| Error::io(format!("writing {}", spool.path.display()), e))?;
        Ok((spool, value))
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
