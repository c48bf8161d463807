//! The embedded engine: every port's local adapter, rooted in one data
//! directory, wired to the in-process runner.
//!
//! ```text
//! <data-dir>/images/, snapshots/   the image library
//! <data-dir>/s3/<bucket>/<key>     buckets
//! <data-dir>/tasks.db              tasks, units, quota counters (SQLite)
//! <data-dir>/work/amistore-work/   the work bucket: plans and Map item lists
//! <data-dir>/work/spool/           units on their way into a part
//! <data-dir>/work/leases/          one locked file per live amistore process
//! <data-dir>/token.key             the key that makes pagination tokens tamper-evident
//! ```
//!
//! Every process that opens the engine holds a lease (an flock'd file) for its
//! lifetime, and each task it admits records that lease. The kernel drops the
//! lock when the process dies however it dies (`kill -9` included), so
//! [`LocalEngine::recover`] can tell a task whose process is gone from one that
//! is merely slow, and resume it or fail it cleanly.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amistore_core::engine::sweep::SweepReport;
use amistore_core::engine::{Engine, EngineConfig, FailedBy, ProgressSink, now_ms};
use amistore_core::ids::{TaskId, unique_token};
use amistore_core::ports::{ImageCatalog, ObjectStore, SnapshotStore, TaskStore, WorkflowRunner};
use amistore_core::storage::BucketName;
use amistore_core::task::{QuotaLimits, Task, TaskKind};
use rustix::fs::FlockOperation;

use crate::image_library::ImageLibrary;
use crate::object_store::FolderObjectStore;
use crate::task_store::SqliteTaskStore;
use crate::workflow::{LocalRunner, RunnerOptions};
use crate::{Error, Result};

/// The local work bucket's name.
pub const WORK_BUCKET: &str = "amistore-work";

/// How to run the embedded engine.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Quota limits.
    pub limits: QuotaLimits,
    /// Runner settings.
    pub runner: RunnerOptions,
    /// Overrides of the engine's unit sizing (tests use small units).
    pub min_unit_blocks: Option<u64>,
    /// Override of the parts' padding target.
    pub min_part_size: Option<u64>,
    /// The work bucket, when the work store is not the data directory's (the
    /// CLI's AWS backend keeps plans in an S3 bucket).
    pub work_bucket: Option<BucketName>,
    /// What kind of process this is, which decides who recovers its tasks
    /// if it dies (see [`LocalEngine::recover`]).
    pub process: ProcessKind,
}

/// Whether the task owned by lease `owner` was run by a one-shot command
/// (tasks from before leases named their kind were).
fn run_by_a_command(owner: Option<&str>) -> bool {
    !owner.is_some_and(|o| o.starts_with(ProcessKind::Server.lease_prefix()))
}

/// The kinds of process that run tasks over a data directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProcessKind {
    /// A one-shot command (`store-image`, `restore-image`): its tasks die
    /// with it, and the next one-shot command that starts a task fails them.
    #[default]
    Command,
    /// `amistore serve`: its tasks are resumed when a server starts again.
    Server,
}

impl ProcessKind {
    fn lease_prefix(self) -> &'static str {
        match self {
            ProcessKind::Command => "command-",
            ProcessKind::Server => "server-",
        }
    }
}

/// The ports an engine works through; [`LocalEngine::open_with`] lets a caller
/// wrap them (tests inject faults this way).
#[derive(Clone)]
pub struct Ports {
    /// Image catalog.
    pub catalog: Arc<dyn ImageCatalog>,
    /// Snapshot store.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// User buckets.
    pub objects: Arc<dyn ObjectStore>,
    /// Work bucket store.
    pub work: Arc<dyn ObjectStore>,
    /// Task store.
    pub tasks: Arc<dyn TaskStore>,
    /// Workflow runner; `None` runs the state machines in this process. (A
    /// Lambda handler test stands in for Step Functions with a runner that
    /// only records what it was asked to start.)
    pub runner: Option<Arc<dyn WorkflowRunner>>,
}

/// A process's lease on its tasks: a locked file that lives as long as the process.
struct Lease {
    id: String,
    path: PathBuf,
    _file: File,
}

impl Lease {
    fn take(dir: &Path, kind: ProcessKind) -> Result<Self> {
        crate::private::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let id = format!("{}{}", kind.lease_prefix(), &unique_token()[..20]);
        let path = dir.join(format!("{id}.lock"));
        // Locked before it is visible under its name: a recover running in
        // another process must never find it unlocked (and remove it as the
        // lease of a dead process).
        let hidden = dir.join(format!(".{id}.taking"));
        let file = crate::private::create_new(&hidden)
            .map_err(|e| Error::io(format!("creating {}", hidden.display()), e))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .and_then(|()| rustix::fs::rename(&hidden, &path))
            .map_err(|e| {
                let _ = fs::remove_file(&hidden);
                Error::io(format!("taking lease {}", path.display()), e.into())
            })?;
        Ok(Self {
            id,
            path,
            _file: file,
        })
    }

    /// Whether the process holding lease `id` is still alive (a dead one's
    /// lease file is removed).
    fn alive(dir: &Path, id: &str) -> bool {
        let path = dir.join(format!("{id}.lock"));
        let Ok(file) = File::open(&path) else {
            return false;
        };
        let free = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok();
        if free {
            let _ = fs::remove_file(&path);
        }
        !free
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What [`LocalEngine::recover`] does with a task whose process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Run it again from where it stopped (its steps are idempotent).
    Resume,
    /// Fail it cleanly: abort its upload or fail its image, release its quota.
    Fail,
}

/// The reason an interrupted task fails with under [`Recovery::Fail`].
pub const INTERRUPTED: &str =
    "interrupted: the amistore process running the task stopped before it finished";

/// The engine over a data directory.
pub struct LocalEngine {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The image library (for commands that manage it directly).
    pub library: ImageLibrary,
    /// The buckets.
    pub buckets: FolderObjectStore,
    runner: LocalRunner,
    tasks: Arc<SqliteTaskStore>,
    spool: PathBuf,
    leases: PathBuf,
    lease: Lease,
}

fn token_key(path: &Path) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    match fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => {
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        Ok(_) => {
            return Err(Error::InvalidInput(
                format!("{} is damaged (expected 32 bytes)", path.display()).into(),
            ));
        }
        Err(_) => {}
    }
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    crate::private::create(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &key).and_then(|()| f.sync_all()))
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    // Two processes starting at once: the first key to land wins, both use it.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(key)
        }
        Err(_) => {
            let _ = fs::remove_file(&tmp);
            token_key(path)
        }
    }
}

impl LocalEngine {
    /// Opens the engine over `data_dir` (created if missing).
    pub fn open(
        data_dir: &Path,
        options: LocalOptions,
        progress: Option<ProgressSink>,
    ) -> Result<Self> {
        Self::open_with(data_dir, options, progress, |ports| ports)
    }

    /// [`Self::open`], letting `wrap` replace or wrap the ports.
    pub fn open_with(
        data_dir: &Path,
        options: LocalOptions,
        progress: Option<ProgressSink>,
        wrap: impl FnOnce(Ports) -> Ports,
    ) -> Result<Self> {
        crate::private::create_dir_all(data_dir)
            .and_then(|()| crate::private::restrict(data_dir))
            .map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
        let leases = data_dir.join("work/leases");
        let lease = Lease::take(&leases, options.process)?;
        let library = ImageLibrary::open(data_dir)?;
        let buckets = FolderObjectStore::open(data_dir)?;
        let work = FolderObjectStore::at(&data_dir.join("work"))?;
        let local_work: BucketName = WORK_BUCKET.parse()?;
        work.create_bucket(&local_work)?;
        let work_bucket = options.work_bucket.clone().unwrap_or(local_work);
        let tasks = Arc::new(SqliteTaskStore::open(
            &data_dir.join("tasks.db"),
            Some(lease.id.clone()),
        )?);
        let ports = wrap(Ports {
            catalog: Arc::new(library.clone()),
            snapshots: Arc::new(library.clone()),
            objects: Arc::new(buckets.clone()),
            work: Arc::new(work),
            tasks: tasks.clone(),
            runner: None,
        });
        let runner = LocalRunner::new(options.runner.clone())?;
        let spool = data_dir.join("work/spool");
        let mut config = EngineConfig::new(
            work_bucket,
            spool.clone(),
            token_key(&data_dir.join("token.key"))?,
        );
        config.limits = options.limits;
        if let Some(b) = options.min_unit_blocks {
            config.min_unit_blocks = b;
        }
        // Units run side by side, one per CPU, each compressing on one thread:
        // more throughput than fewer units on more threads (no pipeline drains
        // at unit ends, reads and writes overlap), and less memory.
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        config.unit_threads = (cpus / options.runner.max_map_concurrency.max(1)).max(1);
        if let Some(p) = options.min_part_size {
            config.min_part_size = p;
        }
        let engine = Arc::new(Engine {
            catalog: ports.catalog,
            snapshots: ports.snapshots,
            objects: ports.objects,
            work: ports.work,
            tasks: ports.tasks,
            runner: ports.runner.unwrap_or_else(|| Arc::new(runner.clone())),
            config,
            progress,
            moved: Default::default(),
        });
        runner.attach(&engine);
        runner.set_elsewhere({
            let (tasks, leases, own) = (tasks.clone(), leases.clone(), lease.id.clone());
            Arc::new(move |task| match tasks.owner_of(task) {
                Ok(Some(owner)) => owner != own && Lease::alive(&leases, &owner),
                _ => false,
            })
        });
        Ok(Self {
            engine,
            library,
            buckets,
            runner,
            tasks,
            spool,
            leases,
            lease,
        })
    }

    /// Reports what happens to executions (queued, running, their end).
    pub fn observe(&self, observer: crate::workflow::Observer) {
        self.runner.observe(observer);
    }

    /// Waits until the execution of `task` this process started has ended, and
    /// returns the task as it then is.
    pub fn wait(&self, task: &TaskId) -> Result<Task> {
        self.runner.wait(task);
        self.engine.task(task)
    }

    /// Finds in-progress tasks whose process died and resumes or fails them;
    /// returns them. [`Recovery::Resume`] (a server starting) takes every
    /// orphan. [`Recovery::Fail`] (a one-shot command about to start a task)
    /// takes only the orphans of one-shot commands: a stopped server's tasks
    /// wait for the server, which resumes them.
    pub fn recover(&self, how: Recovery) -> Result<Vec<TaskId>> {
        let orphans: Vec<Task> = self
            .tasks
            .in_progress_owners()?
            .into_iter()
            .filter(|(_, owner)| {
                owner
                    .as_deref()
                    .is_none_or(|o| o != self.lease.id && !Lease::alive(&self.leases, o))
            })
            .filter(|(_, owner)| how == Recovery::Resume || run_by_a_command(owner.as_deref()))
            .map(|(task, _)| task)
            .collect();
        for task in &orphans {
            // Units the dead process was spooling.
            remove_matching(&self.spool, &format!("{}-", task.id));
            match how {
                Recovery::Resume => {
                    self.tasks.adopt(&task.id)?;
                    self.runner.start(task.kind, &task.id)?;
                }
                Recovery::Fail => {
                    // The process that held any claim on its end is gone.
                    let by = FailedBy::Recovery;
                    match task.kind {
                        TaskKind::Store => self.engine.fail_store(&task.id, INTERRUPTED, by)?,
                        TaskKind::Restore => self.engine.fail_restore(&task.id, INTERRUPTED, by)?,
                    };
                }
            }
        }
        // Leases of processes that died owning no task.
        if let Ok(entries) = fs::read_dir(&self.leases) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".lock")
                    && id != self.lease.id
                {
                    Lease::alive(&self.leases, id);
                }
                // A process that died while taking its lease.
                if name.starts_with('.')
                    && name.ends_with(".taking")
                    && let Ok(file) = File::open(entry.path())
                    && rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok()
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(orphans.into_iter().map(|t| t.id).collect())
    }
}

/// What [`LocalEngine::maintain`] did.
#[derive(Debug, Default)]
pub struct Maintenance {
    /// Tasks of processes that died, resumed here.
    pub resumed: Vec<TaskId>,
    /// The sweep's report.
    pub sweep: SweepReport,
}

/// How old a task must be before a maintenance pass may fail it: admission
/// and the start of its execution are moments apart.
pub const MAINTENANCE_GRACE_MS: i64 = 60_000;

impl LocalEngine {
    /// What a long-running process does now and then: resumes the tasks of
    /// processes that died, and sweeps (fails the tasks whose execution ended
    /// without ending them, aborts orphaned uploads, corrects the quota
    /// counters). Tasks another live process runs are left to it.
    pub fn maintain(&self, grace_ms: i64) -> Result<Maintenance> {
        let resumed = self.recover(Recovery::Resume)?;
        let sweep = self.engine.sweep(now_ms(), grace_ms)?;
        Ok(Maintenance { resumed, sweep })
    }

    /// Executions this process has queued or running.
    pub fn live_executions(&self) -> usize {
        self.runner.live()
    }

    /// Worker threads this process runs executions on.
    pub fn execution_threads(&self) -> usize {
        self.runner.workers()
    }
}

/// Removes the files in `dir` whose names start with `prefix` (best effort).
fn remove_matching(dir: &Path, prefix: &str) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Another process's recover looks at every lease while this one takes
    /// its own: it must never see the new lease unlocked (it would remove it,
    /// and later treat this live process's tasks as orphans).
    #[test]
    fn a_lease_is_never_seen_unlocked_while_it_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        Lease::take(&leases, ProcessKind::Server).unwrap();
        let stop = AtomicBool::new(false);
        // Stops the scanner however the scope ends (a failed assertion too).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    for entry in fs::read_dir(&leases).unwrap().flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if let Some(id) = name.strip_suffix(".lock") {
                            Lease::alive(&leases, id);
                        }
                    }
                }
            });
            let _stop = Stop(&stop);
            for _ in 0..3000 {
                let lease = Lease::take(&leases, ProcessKind::Command).unwrap();
                assert!(
                    lease.path.exists() && Lease::alive(&leases, &lease.id),
                    "a recover removed a live lease"
                );
            }
        });
    }
}
