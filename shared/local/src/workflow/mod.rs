//! The in-process workflow runner: it executes the very state machine
//! definitions the AWS deployment uses (`infra/statemachine/*.asl.json`), with
//! their Task resources mapped to the library's steps, so every local run
//! exercises the deployed workflow.
//!
//! Executions run on worker threads, at most [`RunnerOptions::max_executions`]
//! of them; the rest wait in a queue without a thread. An execution is
//! forgotten when it ends (a long-running server keeps nothing per finished
//! task); [`LocalRunner::wait`] waits for that.

pub mod asl;
pub mod execute;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

use amistore_core::engine::Engine;
use amistore_core::engine::steps::run_step;
use amistore_core::ids::TaskId;
use amistore_core::ports::{ExecutionStatus, WorkflowRunner};
use amistore_core::storage::{BucketName, ObjectKey};
use amistore_core::task::TaskKind;
use serde_json::{Value, json};

use crate::workflow::asl::StateMachine;
use crate::workflow::execute::{Failure, Function, Host, execute};
use crate::{Error, Result};

/// The store state machine, as deployed.
pub const STORE_DEFINITION: &str = include_str!("../../../../infra/statemachine/store.asl.json");
/// The restore state machine, as deployed.
pub const RESTORE_DEFINITION: &str =
    include_str!("../../../../infra/statemachine/restore.asl.json");

/// The Lambda functions the definitions name, by their template placeholders.
pub const FUNCTIONS: [&str; 2] = ["${ChunkTransferFunctionArn}", "${FinalizeFunctionArn}"];

/// How the local runner runs executions.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Cap on any Map's concurrency.
    pub max_map_concurrency: usize,
    /// Multiplies every retry delay (1 honours the definitions; tests use 0).
    pub retry_delay_scale: f64,
    /// Most executions running at once; the rest wait their turn (their tasks
    /// show InProgress at 0%). `None`: no limit.
    pub max_executions: Option<usize>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            max_map_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            retry_delay_scale: 1.0,
            max_executions: None,
        }
    }
}

/// What happened to an execution: `queued`, `running`, or its end (the task's
/// state then: `Completed`, `Failed`, or `InProgress` if it stopped short).
pub type Observer = Arc<dyn Fn(&TaskId, TaskKind, &str) + Send + Sync>;

/// Whether another live process is running a task's execution (tasks in one
/// data directory may be run by several `amistore` processes).
pub type Elsewhere = Arc<dyn Fn(&TaskId) -> bool + Send + Sync>;

/// The executions this runner has started and not yet finished.
#[derive(Default)]
struct Executions {
    /// Queued or running.
    live: HashMap<TaskId, TaskKind>,
    /// Waiting for a worker, oldest first.
    queue: VecDeque<(TaskKind, TaskId)>,
    /// Worker threads alive.
    workers: usize,
}

/// Runs store and restore executions on threads of this process. Clones share
/// the same executions.
#[derive(Clone)]
pub struct LocalRunner(Arc<Shared>);

struct Shared {
    store: StateMachine,
    restore: StateMachine,
    options: RunnerOptions,
    engine: OnceLock<Weak<Engine>>,
    executions: Mutex<Executions>,
    ended: Condvar,
    observer: OnceLock<Observer>,
    elsewhere: OnceLock<Elsewhere>,
}

impl LocalRunner {
    /// Loads the definitions; an unsupported construct in them is an error here.
    pub fn new(options: RunnerOptions) -> Result<Self> {
        let resources: BTreeSet<String> = FUNCTIONS.iter().map(|f| f.to_string()).collect();
        Ok(Self(Arc::new(Shared {
            store: StateMachine::parse(STORE_DEFINITION, &resources)?,
            restore: StateMachine::parse(RESTORE_DEFINITION, &resources)?,
            options,
            engine: OnceLock::new(),
            executions: Mutex::new(Executions::default()),
            ended: Condvar::new(),
            observer: OnceLock::new(),
            elsewhere: OnceLock::new(),
        })))
    }

    /// Tells the runner how to know that another process runs a task (for
    /// [`WorkflowRunner::status`] of a task this runner did not start).
    pub fn set_elsewhere(&self, elsewhere: Elsewhere) {
        let _ = self.0.elsewhere.set(elsewhere);
    }

    fn executions(&self) -> MutexGuard<'_, Executions> {
        // The bookkeeping stays consistent whatever panicked while holding it.
        self.0.executions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs queued executions until none is left, then ends the worker.
    fn work(&self) {
        loop {
            let next = {
                let mut ex = self.executions();
                match ex.queue.pop_front() {
                    Some(next) => next,
                    None => {
                        ex.workers -= 1;
                        return;
                    }
                }
            };
            let (kind, id) = next;
            self.event(&id, kind, "running");
            // A panic in a step is a bug; it must still end the execution, or
            // waiters would wait forever and the task never be swept.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The state machine ends in its Fail state after the fail step
                // has recorded the reason; the task's state tells how it ended.
                let _ = self.run(kind, &id);
            }));
            let state = self
                .0
                .engine
                .get()
                .and_then(Weak::upgrade)
                .and_then(|e| e.task(&id).ok())
                .map_or("unknown", |t| t.state.as_str());
            self.executions().live.remove(&id);
            self.0.ended.notify_all();
            self.event(&id, kind, state);
        }
    }

    /// Reports what happens to executions to `observer` (the server logs it).
    pub fn observe(&self, observer: Observer) {
        let _ = self.0.observer.set(observer);
    }

    fn event(&self, task: &TaskId, kind: TaskKind, what: &str) {
        if let Some(o) = self.0.observer.get() {
            o(task, kind, what);
        }
    }

    /// Connects the runner to the engine whose steps it runs (the engine holds
    /// the runner, so this is set once both exist).
    pub fn attach(&self, engine: &Arc<Engine>) {
        let _ = self.0.engine.set(Arc::downgrade(engine));
    }

    fn host(&self, engine: Arc<Engine>) -> Host {
        let step: Function = {
            let engine = engine.clone();
            Arc::new(move |input: &Value| {
                run_step(&engine, input).map_err(|e| Failure {
                    error: e.name.to_owned(),
                    cause: e.cause,
                })
            })
        };
        let functions: BTreeMap<String, Function> = FUNCTIONS
            .iter()
            .map(|f| (f.to_string(), step.clone()))
            .collect();
        let work = engine.clone();
        Host {
            functions,
            items: Arc::new(move |bucket: &str, key: &str| {
                let read = || -> amistore_core::Result<Value> {
                    let bucket: BucketName = bucket.parse()?;
                    let key: ObjectKey = key.parse()?;
                    let info = work.work.head_object(&bucket, &key)?.ok_or_else(|| {
                        amistore_core::Error::NotFound(
                            format!("{bucket}/{key} does not exist").into(),
                        )
                    })?;
                    let bytes = work.work.get_range(&bucket, &key, 0..info.size, None)?;
                    serde_json::from_slice(&bytes).map_err(|e| {
                        amistore_core::Error::Malformed(amistore_core::Detail::because(
                            key.to_string(),
                            e,
                        ))
                    })
                };
                read().map_err(|e| Failure {
                    error: "States.ItemReaderFailed".into(),
                    cause: e.to_string(),
                })
            }),
            max_map_concurrency: self.0.options.max_map_concurrency.max(1),
            retry_delay_scale: self.0.options.retry_delay_scale,
        }
    }

    /// Waits until the execution of `task` started by this runner, if any, has
    /// ended.
    pub fn wait(&self, task: &TaskId) {
        let ex = self.executions();
        let _ended = self
            .0
            .ended
            .wait_while(ex, |ex| ex.live.contains_key(task))
            .unwrap_or_else(|p| p.into_inner());
    }

    /// Executions queued or running.
    pub fn live(&self) -> usize {
        self.executions().live.len()
    }

    /// Worker threads alive (at most [`RunnerOptions::max_executions`]).
    pub fn workers(&self) -> usize {
        self.executions().workers
    }

    /// Runs an execution on the calling thread.
    pub fn run(&self, kind: TaskKind, task: &TaskId) -> std::result::Result<Value, Failure> {
        let engine = self
            .0
            .engine
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Failure {
                error: "States.Runtime".into(),
                cause: "the runner is not attached to an engine".into(),
            })?;
        let machine = match kind {
            TaskKind::Store => &self.0.store,
            TaskKind::Restore => &self.0.restore,
        };
        execute(
            &self.host(engine),
            machine,
            // As the Step Functions runner starts them: the Map's concurrency
            // comes with the input (MaxConcurrencyPath); the host caps it.
            json!({ "taskId": task, "unitConcurrency": self.0.options.max_map_concurrency }),
            task.as_str(),
        )
    }
}

impl WorkflowRunner for LocalRunner {
    fn start(&self, kind: TaskKind, task: &TaskId) -> amistore_core::Result<()> {
        let mut ex = self.executions();
        if ex.live.contains_key(task) {
            return Ok(());
        }
        ex.live.insert(task.clone(), kind);
        ex.queue.push_back((kind, task.clone()));
        self.event(task, kind, "queued");
        if ex.workers < self.0.options.max_executions.unwrap_or(usize::MAX).max(1) {
            let runner = self.clone();
            match std::thread::Builder::new()
                .name("execution".into())
                .spawn(move || runner.work())
            {
                Ok(_) => ex.workers += 1,
                // No worker now: a later start or a running worker takes it
                // from the queue, unless none is alive.
                Err(e) if ex.workers == 0 => {
                    ex.live.remove(task);
                    ex.queue.retain(|(_, t)| t != task);
                    return Err(Error::io("starting a workflow thread", e));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn status(&self, _kind: TaskKind, task: &TaskId) -> amistore_core::Result<ExecutionStatus> {
        if self.executions().live.contains_key(task) {
            return Ok(ExecutionStatus::Running);
        }
        let elsewhere = self.0.elsewhere.get().is_some_and(|e| e(task));
        Ok(if elsewhere {
            ExecutionStatus::Running
        } else {
            ExecutionStatus::Missing
        })
    }

    /// A thread cannot be stopped from outside; the execution stops by itself at
    /// its next step, which finds the task ended.
    fn stop(&self, _kind: TaskKind, _task: &TaskId, _cause: &str) -> amistore_core::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::execute::Host;
    use amistore_core::engine::steps::ERROR_NAMES;

    fn error_names(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "ErrorEquals" {
                        out.extend(
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|n| n.as_str().map(str::to_owned)),
                        );
                    } else {
                        error_names(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| error_names(i, out)),
            _ => {}
        }
    }

    /// The deployed definition over stand-in functions: plan makes `units`
    /// units, each unit is throttled by the Lambda service `throttled` times
    /// before it runs, finalize and fail record that they ran.
    fn run_throttled(
        definition: &str,
        units: u64,
        throttled: usize,
    ) -> (std::result::Result<Value, Failure>, Vec<String>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let tries: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
        let (c, t) = (calls.clone(), tries.clone());
        let busy = Arc::new(AtomicUsize::new(0));
        let function: Function = Arc::new(move |input: &Value| {
            let step = input["step"].as_str().unwrap_or_default().to_owned();
            c.lock().unwrap().push(step.clone());
            match step.as_str() {
                "store.plan" => {
                    Ok(json!({"units": units, "itemsBucket": "work", "itemsKey": "items"}))
                }
                "store.unit" => {
                    let unit = input["unit"].as_u64().unwrap();
                    let mut tries = t.lock().unwrap();
                    let n = tries.entry(unit).or_default();
                    *n += 1;
                    if *n <= throttled {
                        busy.fetch_add(1, Ordering::Relaxed);
                        return Err(Failure {
                            error: "Lambda.TooManyRequestsException".into(),
                            cause: "Rate Exceeded.".into(),
                        });
                    }
                    Ok(Value::Null)
                }
                _ => Ok(Value::Null),
            }
        });
        let host = Host {
            functions: FUNCTIONS
                .iter()
                .map(|f| (f.to_string(), function.clone()))
                .collect(),
            items: Arc::new(move |_: &str, _: &str| {
                Ok(Value::Array(
                    (0..units).map(|u| json!({"unit": u})).collect(),
                ))
            }),
            max_map_concurrency: 4,
            retry_delay_scale: 0.0,
        };
        let resources = FUNCTIONS.iter().map(|f| f.to_string()).collect();
        let machine = StateMachine::parse(definition, &resources).unwrap();
        let result = execute(
            &host,
            &machine,
            json!({"taskId": "task-1", "unitConcurrency": 16}),
            "t",
        );
        let calls = calls.lock().unwrap().clone();
        (result, calls)
    }

    #[test]
    fn a_queue_of_throttled_units_waits_its_turn_instead_of_failing_the_task() {
        // Two tasks sharing chunk-transfer's concurrency: the second's units
        // are refused by the Lambda service for a good while (here, 40 times
        // each; six tries were all the first definitions allowed).
        for definition in [STORE_DEFINITION, RESTORE_DEFINITION] {
            let store = definition == STORE_DEFINITION;
            let def = if store {
                definition.to_owned()
            } else {
                definition.replace("restore.", "store.")
            };
            let (result, calls) = run_throttled(&def, 5, 40);
            assert!(result.is_ok(), "{result:?}");
            assert!(calls.iter().any(|c| c == "store.finalize"), "{calls:?}");
            assert!(!calls.iter().any(|c| c == "store.fail"), "{calls:?}");
        }
    }

    #[test]
    fn the_definitions_load_and_match_only_errors_that_can_happen() {
        LocalRunner::new(RunnerOptions::default()).unwrap();
        for def in [STORE_DEFINITION, RESTORE_DEFINITION] {
            let mut names = Vec::new();
            error_names(&serde_json::from_str(def).unwrap(), &mut names);
            assert!(names.iter().any(|n| n == "Retryable"));
            for name in names {
                // A step reports one of ERROR_NAMES; the Lambda service and Step
                // Functions report their own, documented names.
                let known = ERROR_NAMES.contains(&name.as_str())
                    || name == "States.ALL"
                    || name == "States.ItemReaderFailed"
                    || [
                        "Lambda.ServiceException",
                        "Lambda.AWSLambdaException",
                        "Lambda.SdkClientException",
                        "Lambda.TooManyRequestsException",
                    ]
                    .contains(&name.as_str());
                assert!(known, "{name} is matched but nothing reports it");
            }
        }
    }
}
