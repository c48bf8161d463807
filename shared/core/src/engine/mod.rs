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

pub mod describe;
pub mod intake;
pub mod metadata;
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
use crate::task::{QuotaLimits, Task, TaskState};
use crate::{Error, Result};

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
        self.tasks
            .get(id)
            .and_then(|t| t.ok_or_else(|| Error::NotFound(format!("task {id} does not exist"))))
    }

    /// The task `id`, which must still be in progress: a step of an ended task
    /// (a cancelled one, say) must not touch anything.
    fn running_task(&self, id: &TaskId) -> Result<Task> {
        let task = self.task(id)?;
        if task.state != TaskState::InProgress {
            return Err(Error::IncorrectState(format!(
                "task {id} has already ended ({})",
                task.state
            )));
        }
        Ok(task)
    }

    /// The task `id` for its finalize step: `None` if it has already
    /// completed (a finalize retried after it succeeded, say because its answer
    /// was lost, succeeds again without doing anything); an error if it ended
    /// any other way.
    fn task_to_finalize(&self, id: &TaskId) -> Result<Option<Task>> {
        let task = self.task(id)?;
        match task.state {
            TaskState::Completed => Ok(None),
            TaskState::InProgress => Ok(Some(task)),
            TaskState::Failed => Err(Error::IncorrectState(format!(
                "task {id} has already ended (Failed)"
            ))),
        }
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
        let json = serde_json::to_vec(value)
            .map_err(|e| Error::InvalidInput(format!("{name} does not serialise: {e}")))?;
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
            .get_range(&self.config.work_bucket, &key, 0..info.size)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Malformed(format!("{name} of task {task} is damaged: {e}")))
    }

    /// Ends an in-progress task (releasing its quota) and drops its work objects.
    fn end(&self, id: &TaskId, state: TaskState, reason: Option<&str>) -> Result<()> {
        self.tasks.finish(id, state, reason, now_ms())?;
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
    /// Writes `fill`'s output to a new spool file. It is not synced: uploading
    /// it makes the part durable (the object store's job), and a crash before
    /// then loses nothing recorded.
    fn write<T>(
        dir: &Path,
        name: &str,
        fill: impl FnOnce(&mut BufWriter<&File>) -> Result<T>,
    ) -> Result<(Self, T)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{name}.{}.part", &unique_token()[..16]));
        let file = File::create_new(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let spool = Self { path };
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
