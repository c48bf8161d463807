//! Races between the ways a task can end, written once over the engine and
//! run on every set of adapters (the local ones, and the AWS ones on moto).
//!
//! Finalize, the fail steps, a cancel and the sweeper race each other:
//! Lambda delivers at least once, a user cancels at any moment, a sweep runs
//! on a schedule. Each scenario parks one side on a gate *inside* its side
//! effects (after it has claimed the end), runs the other side to its end,
//! then lets the first go on, and checks what must hold whatever the order:
//!
//! - a Completed store has its object, a Failed one has none;
//! - a restore's image is available if and only if its task Completed;
//! - the quota is released, exactly once.
//!
//! Compiled with the `contract` feature, for adapter crates' tests.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use crate::blocks::BlockRanges;
use crate::engine::intake::{RestoreRequest, StoreRequest};
use crate::engine::steps::run_step;
use crate::engine::{Engine, FailedBy, now_ms};
use crate::ids::{AccountId, ImageId, ResourceState, SnapshotId, TaskId};
use crate::image::{Encryption, ImageMetadata, ImageName, Tag};
use crate::ports::{
    CompletedPart, ExecutionStatus, Image, ImageCatalog, ObjectInfo, ObjectStore, SnapshotInfo,
    SnapshotStore, WorkflowRunner,
};
use crate::storage::{BucketName, BucketPath, ObjectKey};
use crate::task::{Task, TaskKind, TaskState};
use crate::{Error, Result};

/// Gates that park calls of chosen methods until released.
#[derive(Clone, Default)]
pub struct Gates(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    closed: BTreeSet<&'static str>,
    /// Gates that park every caller in a queue, released one at a time:
    /// (tickets handed out, tickets released).
    queues: BTreeMap<&'static str, (usize, usize)>,
    forbidden: BTreeSet<&'static str>,
    waiting: BTreeMap<&'static str, usize>,
}

impl Gates {
    /// From now on, calls of `method` wait at the gate.
    pub fn close(&self, method: &'static str) {
        self.0.0.lock().unwrap().closed.insert(method);
    }

    /// From now on, calls of `method` queue at the gate (several holders of
    /// the same claim may); [`Gates::release_one`] lets them on in order.
    pub fn queue(&self, method: &'static str) {
        self.0.0.lock().unwrap().queues.insert(method, (0, 0));
    }

    /// Waits until `n` calls of `method` have queued.
    pub fn wait_for_queued(&self, method: &'static str, n: usize) {
        let (lock, wake) = &*self.0;
        let (_state, waited) = wake
            .wait_timeout_while(lock.lock().unwrap(), GATE_TIMEOUT, |s| {
                s.queues.get(method).is_none_or(|q| q.0 < n)
            })
            .unwrap();
        assert!(!waited.timed_out(), "{n} calls of {method} never queued");
    }

    /// Lets the next queued call of `method` go on.
    pub fn release_one(&self, method: &'static str) {
        let (lock, wake) = &*self.0;
        if let Some(q) = lock.lock().unwrap().queues.get_mut(method) {
            q.1 += 1;
        }
        wake.notify_all();
    }

    /// Waits until a call of `method` is parked at its gate; panics if none
    /// comes within [`GATE_TIMEOUT`] (the side it belongs to took another way).
    pub fn wait_for_arrival(&self, method: &'static str) {
        let (lock, wake) = &*self.0;
        let (_state, waited) = wake
            .wait_timeout_while(lock.lock().unwrap(), GATE_TIMEOUT, |s| {
                s.waiting.get(method).copied().unwrap_or(0) == 0
            })
            .unwrap();
        assert!(
            !waited.timed_out(),
            "no call of {method} reached its gate in {GATE_TIMEOUT:?}"
        );
    }

    /// Lets the calls of `method` go on.
    pub fn open(&self, method: &'static str) {
        let (lock, wake) = &*self.0;
        lock.lock().unwrap().closed.remove(method);
        wake.notify_all();
    }

    /// From now on, a call of `method` fails the scenario (the side that
    /// holds the task's end is parked; the other must not make this call).
    pub fn forbid(&self, method: &'static str) {
        self.0.0.lock().unwrap().forbidden.insert(method);
    }

    /// Calls of `method` are allowed again.
    pub fn allow(&self, method: &'static str) {
        self.0.0.lock().unwrap().forbidden.remove(method);
    }

    fn pass(&self, method: &'static str) {
        let (lock, wake) = &*self.0;
        let mut state = lock.lock().unwrap();
        if state.forbidden.contains(method) {
            // Open every gate so the parked side finishes and the scenario
            // fails rather than hangs.
            state.closed.clear();
            drop(state);
            wake.notify_all();
            panic!("{method} was called while the other side held the task's end");
        }
        if let Some(q) = state.queues.get_mut(method) {
            let ticket = q.0;
            q.0 += 1;
            wake.notify_all();
            let _released = wake
                .wait_while(state, |s| {
                    s.queues.get(method).is_some_and(|q| q.1 <= ticket)
                })
                .unwrap();
            return;
        }
        if !state.closed.contains(method) {
            return;
        }
        if state.waiting.get(method).copied().unwrap_or(0) > 0 {
            // The other side reached the very side effect the parked one is
            // making: both believe they hold the task's end. Open the gate so
            // the parked side can finish and the scenario fail rather than hang.
            state.closed.remove(method);
            drop(state);
            wake.notify_all();
            panic!("two sides reached {method} at once: both acted as the task's end");
        }
        *state.waiting.entry(method).or_default() += 1;
        wake.notify_all();
        let mut state = wake
            .wait_while(state, |s| s.closed.contains(method))
            .unwrap();
        *state.waiting.entry(method).or_default() -= 1;
    }
}

/// How long a scenario waits for a side to reach its gate.
pub const GATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A port with gates on its side effects.
pub struct Gated<P: ?Sized>(pub Arc<P>, pub Gates);

impl ObjectStore for Gated<dyn ObjectStore> {
    fn bucket_exists(&self, a: &AccountId, b: &BucketName) -> Result<bool> {
        self.0.bucket_exists(a, b)
    }
    fn create_multipart(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        m: &BTreeMap<String, String>,
        t: &[Tag],
    ) -> Result<String> {
        self.0.create_multipart(b, k, m, t)
    }
    fn upload_part(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        u: &str,
        n: u32,
        body: &Path,
    ) -> Result<String> {
        self.0.upload_part(b, k, u, n, body)
    }
    fn complete_multipart(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        u: &str,
        parts: &[CompletedPart],
    ) -> Result<()> {
        self.1.pass("complete_multipart");
        self.0.complete_multipart(b, k, u, parts)
    }
    fn abort_multipart(&self, b: &BucketName, k: &ObjectKey, u: &str) -> Result<()> {
        self.1.pass("abort_multipart");
        self.0.abort_multipart(b, k, u)
    }
    fn list_multipart_uploads(&self, b: &BucketName) -> Result<Vec<(String, ObjectKey)>> {
        self.0.list_multipart_uploads(b)
    }
    fn put_object(&self, b: &BucketName, k: &ObjectKey, body: &[u8]) -> Result<()> {
        self.0.put_object(b, k, body)
    }
    fn delete_object(&self, b: &BucketName, k: &ObjectKey) -> Result<()> {
        self.1.pass("delete_object");
        self.0.delete_object(b, k)
    }
    fn head_object(&self, b: &BucketName, k: &ObjectKey) -> Result<Option<ObjectInfo>> {
        self.0.head_object(b, k)
    }
    fn get_range(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        r: Range<u64>,
        m: Option<&str>,
    ) -> Result<Vec<u8>> {
        self.0.get_range(b, k, r, m)
    }
}

impl ImageCatalog for Gated<dyn ImageCatalog> {
    fn describe_image(&self, a: &AccountId, id: &ImageId) -> Result<Image> {
        self.0.describe_image(a, id)
    }
    fn list_images(&self, a: &AccountId) -> Result<Vec<Image>> {
        self.0.list_images(a)
    }
    fn image_name_taken(&self, a: &AccountId, n: &ImageName) -> Result<bool> {
        self.0.image_name_taken(a, n)
    }
    fn register_image(
        &self,
        a: &AccountId,
        m: &ImageMetadata,
        s: &[SnapshotId],
        t: &str,
    ) -> Result<ImageId> {
        self.0.register_image(a, m, s, t)
    }
    fn find_image_by_token(&self, a: &AccountId, t: &str) -> Result<Option<Image>> {
        self.0.find_image_by_token(a, t)
    }
    fn deregister_image(&self, a: &AccountId, id: &ImageId) -> Result<()> {
        self.1.pass("deregister_image");
        self.0.deregister_image(a, id)
    }
    fn set_image_state(
        &self,
        a: &AccountId,
        id: &ImageId,
        s: ResourceState,
        r: Option<&str>,
    ) -> Result<()> {
        self.1.pass("set_image_state");
        self.0.set_image_state(a, id, s, r)
    }
}

impl SnapshotStore for Gated<dyn SnapshotStore> {
    fn finish_writes(&self, snapshot: &SnapshotId) -> Result<()> {
        self.0.finish_writes(snapshot)
    }
    fn will_read(&self, snapshot: &SnapshotId, blocks: std::ops::Range<u64>) {
        self.0.will_read(snapshot, blocks);
    }
    fn set_request_rate(&self, per_second: u32) {
        self.0.set_request_rate(per_second);
    }
    fn describe_snapshot(&self, a: &AccountId, s: &SnapshotId) -> Result<SnapshotInfo> {
        self.0.describe_snapshot(a, s)
    }
    fn list_blocks(&self, a: &AccountId, s: &SnapshotId) -> Result<BlockRanges> {
        self.0.list_blocks(a, s)
    }
    fn read_blocks(&self, s: &SnapshotId, first: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_blocks(s, first, buf)
    }
    fn start_snapshot(
        &self,
        a: &AccountId,
        size: u64,
        tags: &[Tag],
        e: &Encryption,
        t: &str,
    ) -> Result<SnapshotId> {
        self.0.start_snapshot(a, size, tags, e, t)
    }
    fn find_snapshot_by_token(&self, a: &AccountId, t: &str) -> Result<Option<SnapshotId>> {
        self.0.find_snapshot_by_token(a, t)
    }
    fn write_blocks(&self, s: &SnapshotId, first: u64, data: &[u8]) -> Result<()> {
        self.0.write_blocks(s, first, data)
    }
    fn complete_snapshot(&self, s: &SnapshotId, n: u64) -> Result<()> {
        self.1.pass("complete_snapshot");
        self.0.complete_snapshot(s, n)
    }
    fn delete_snapshot(&self, s: &SnapshotId) -> Result<()> {
        self.1.pass("delete_snapshot");
        self.0.delete_snapshot(s)
    }
}

/// Step Functions played by the test: executions are recorded, never run;
/// the test runs the steps itself. An execution is running until stopped or
/// [`Manual::end`]ed.
#[derive(Default)]
pub struct Manual {
    started: Mutex<Vec<TaskId>>,
    ended: Mutex<BTreeSet<TaskId>>,
}

impl Manual {
    /// Ends `task`'s execution (it stopped, or timed out).
    pub fn end(&self, task: &TaskId) {
        self.ended.lock().unwrap().insert(task.clone());
    }
}

impl WorkflowRunner for Manual {
    fn start(&self, _kind: TaskKind, task: &TaskId) -> Result<()> {
        self.started.lock().unwrap().push(task.clone());
        Ok(())
    }
    fn status(&self, _kind: TaskKind, task: &TaskId) -> Result<ExecutionStatus> {
        let started = self.started.lock().unwrap().contains(task);
        Ok(match (started, self.ended.lock().unwrap().contains(task)) {
            (false, _) => ExecutionStatus::Missing,
            (true, true) => ExecutionStatus::Ended,
            (true, false) => ExecutionStatus::Running,
        })
    }
    fn stop(&self, _kind: TaskKind, task: &TaskId, _cause: &str) -> Result<()> {
        self.end(task);
        Ok(())
    }
}

/// An engine over `base`'s ports with gates on their side effects, and the
/// test playing Step Functions.
pub struct Racer {
    pub engine: Arc<Engine>,
    pub gates: Gates,
    pub runner: Arc<Manual>,
}

impl Racer {
    pub fn over(base: &Engine) -> Self {
        let gates = Gates::default();
        let runner = Arc::new(Manual::default());
        let engine = Arc::new(Engine {
            catalog: Arc::new(Gated(base.catalog.clone(), gates.clone())),
            snapshots: Arc::new(Gated(base.snapshots.clone(), gates.clone())),
            objects: Arc::new(Gated(base.objects.clone(), gates.clone())),
            work: base.work.clone(),
            tasks: base.tasks.clone(),
            runner: runner.clone(),
            config: base.config.clone(),
            progress: None,
            moved: Default::default(),
        });
        Self {
            engine,
            gates,
            runner,
        }
    }

    fn step(&self, name: &str, task: &TaskId, unit: Option<u64>) -> Result<serde_json::Value> {
        let mut input = serde_json::json!({"step": name, "taskId": task});
        if let Some(u) = unit {
            input["unit"] = u.into();
        }
        run_step(&self.engine, &input)
            .map_err(|e| Error::Transient(format!("{}: {}", e.name, e.cause).into()))
    }

    /// Plans `task` and transfers every unit, as the Map would.
    pub fn transfer(&self, kind: TaskKind, task: &TaskId) {
        let k = kind.as_str();
        let plan = self.step(&format!("{k}.plan"), task, None).unwrap();
        for unit in 0..plan["units"].as_u64().unwrap() {
            self.step(&format!("{k}.unit"), task, Some(unit)).unwrap();
        }
    }

    fn finalize(&self, kind: TaskKind, task: &TaskId) -> Result<serde_json::Value> {
        self.step(&format!("{}.finalize", kind.as_str()), task, None)
    }

    fn task(&self, id: &TaskId) -> Task {
        self.engine.task(id).unwrap()
    }
}

/// What must hold of a store task once its racers are done.
fn store_invariants(r: &Racer, task: &TaskId, before_gib: u64) {
    let t = r.task(task);
    let object = r.engine.objects.head_object(&t.bucket, &t.key).unwrap();
    match t.state {
        TaskState::Completed => assert!(object.is_some(), "a Completed store has its object"),
        TaskState::Failed => assert!(object.is_none(), "a Failed store has no object"),
        TaskState::InProgress => panic!("the store never ended: {t:?}"),
    }
    assert_eq!(
        r.engine
            .tasks
            .in_progress_gib(&t.account, TaskKind::Store)
            .unwrap(),
        before_gib,
        "the quota was released once"
    );
}

/// What must hold of a restore task once its racers are done.
fn restore_invariants(r: &Racer, task: &TaskId, before_gib: u64) {
    let t = r.task(task);
    let image = r
        .engine
        .catalog
        .describe_image(&t.account, t.image_id.as_ref().unwrap())
        .unwrap();
    match t.state {
        TaskState::Completed => assert_eq!(image.state, ResourceState::Available),
        TaskState::Failed => assert_eq!(image.state, ResourceState::Failed),
        TaskState::InProgress => panic!("the restore never ended: {t:?}"),
    }
    assert_eq!(
        r.engine
            .tasks
            .in_progress_gib(&t.account, TaskKind::Restore)
            .unwrap(),
        before_gib,
        "the quota was released once"
    );
}

fn start_store(r: &Racer, account: &AccountId, image: &ImageId, bucket: &BucketPath) -> TaskId {
    let task = r
        .engine
        .create_store_task(
            account,
            &StoreRequest {
                image_id: image.clone(),
                bucket: bucket.clone(),
                object_tags: vec![],
            },
        )
        .unwrap();
    r.transfer(TaskKind::Store, &task.id);
    task.id
}

/// Stores `image` into `bucket` to the end, the test playing Step Functions;
/// returns where the archive is.
pub fn stored(
    base: &Engine,
    account: &AccountId,
    image: &ImageId,
    bucket: &BucketPath,
) -> (BucketName, ObjectKey) {
    let r = Racer::over(base);
    let task = start_store(&r, account, image, bucket);
    r.finalize(TaskKind::Store, &task).unwrap();
    let t = r.task(&task);
    assert_eq!(t.state, TaskState::Completed);
    (t.bucket, t.key)
}

/// Cancel against finalize, in both orders, for a store of `image` into
/// `bucket` (which must hold no copy of it yet) by `account`.
pub fn cancel_against_finalize(
    base: &Engine,
    account: &AccountId,
    image: &ImageId,
    bucket: &BucketPath,
) {
    let r = Racer::over(base);
    let gib = r
        .engine
        .tasks
        .in_progress_gib(account, TaskKind::Store)
        .unwrap();

    // 1. The cancel claims the end first and is parked in its clean-up; the
    //    finalize that comes meanwhile must not complete the upload.
    let task = start_store(&r, account, image, bucket);
    r.gates.close("abort_multipart");
    std::thread::scope(|s| {
        let cancel = s.spawn(|| r.engine.cancel_store(account, image, None));
        r.gates.wait_for_arrival("abort_multipart");
        r.gates.forbid("complete_multipart");
        let finalized = r.finalize(TaskKind::Store, &task);
        assert!(
            finalized.is_err(),
            "finalize completed a store being cancelled"
        );
        r.gates.allow("complete_multipart");
        r.gates.open("abort_multipart");
        let cancelled = cancel.join().unwrap().unwrap();
        assert_eq!(cancelled.state, TaskState::Failed);
    });
    store_invariants(&r, &task, gib);
    assert_eq!(r.task(&task).failure_reason.as_deref(), Some("cancelled"));

    // 2. Finalize claims first and is parked completing the upload; the
    //    cancel that comes meanwhile is refused and deletes nothing.
    let task = start_store(&r, account, image, bucket);
    r.gates.close("complete_multipart");
    std::thread::scope(|s| {
        let finalize = s.spawn(|| r.finalize(TaskKind::Store, &task));
        r.gates.wait_for_arrival("complete_multipart");
        r.gates.forbid("abort_multipart");
        r.gates.forbid("delete_object");
        let refused = r.engine.cancel_store(account, image, None).unwrap_err();
        assert!(
            matches!(refused, Error::IncorrectState(ref m) if m.message().contains("completing")),
            "{refused:?}"
        );
        r.gates.allow("abort_multipart");
        r.gates.allow("delete_object");
        r.gates.open("complete_multipart");
        finalize.join().unwrap().unwrap();
    });
    store_invariants(&r, &task, gib);
    assert_eq!(r.task(&task).state, TaskState::Completed);
    // The object stays: a sweep of the finished task changes nothing.
    r.engine.sweep(now_ms(), 0).unwrap();
    store_invariants(&r, &task, gib);
    let t = r.task(&task);
    r.engine.objects.delete_object(&t.bucket, &t.key).unwrap();
}

/// A failure (the sweeper's, for an execution that is gone) against
/// finalize, in both orders, for a restore of the archive at `key`.
pub fn fail_against_finalize_restore(
    base: &Engine,
    account: &AccountId,
    bucket: &BucketName,
    key: &ObjectKey,
    name_prefix: &str,
) {
    let r = Racer::over(base);
    let gib = r
        .engine
        .tasks
        .in_progress_gib(account, TaskKind::Restore)
        .unwrap();
    let start = |n: u32| {
        let task = r
            .engine
            .create_restore_task(
                account,
                &RestoreRequest {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    name: Some(format!("{name_prefix}-{n}").parse().unwrap()),
                    image_tags: vec![],
                    snapshot_tags: vec![],
                },
            )
            .unwrap();
        r.transfer(TaskKind::Restore, &task.id);
        task.id
    };

    // 1. The failure claims first and is parked marking the image failed;
    //    the finalize that comes meanwhile must not make it available.
    let task = start(1);
    r.gates.close("set_image_state");
    std::thread::scope(|s| {
        let fail = s.spawn(|| r.engine.fail_restore(&task, "abandoned", FailedBy::Sweep));
        r.gates.wait_for_arrival("set_image_state");
        r.gates.forbid("complete_snapshot");
        assert!(r.finalize(TaskKind::Restore, &task).is_err());
        r.gates.allow("complete_snapshot");
        r.gates.open("set_image_state");
        assert!(fail.join().unwrap().unwrap(), "the failure held the end");
    });
    restore_invariants(&r, &task, gib);
    assert_eq!(r.task(&task).state, TaskState::Failed);

    // 2. Finalize claims first and is parked completing the snapshots; a
    //    sweep's failure that comes meanwhile (its claim is fresh) must not
    //    fail the image it is making available.
    let task = start(2);
    r.gates.close("complete_snapshot");
    std::thread::scope(|s| {
        let finalize = s.spawn(|| r.finalize(TaskKind::Restore, &task));
        r.gates.wait_for_arrival("complete_snapshot");
        r.runner.end(&task);
        for side_effect in ["set_image_state", "delete_snapshot", "deregister_image"] {
            r.gates.forbid(side_effect);
        }
        let held = r
            .engine
            .fail_restore(&task, "abandoned", FailedBy::Sweep)
            .unwrap();
        assert!(!held, "a sweep took a live finalize's claim over");
        for side_effect in ["set_image_state", "delete_snapshot", "deregister_image"] {
            r.gates.allow(side_effect);
        }
        r.gates.open("complete_snapshot");
        finalize.join().unwrap().unwrap();
    });
    restore_invariants(&r, &task, gib);
    assert_eq!(r.task(&task).state, TaskState::Completed);
}

/// Two failures of one restore at once (another unit's step failing while
/// the first failure is making its side effects): both hold the same claim,
/// and the image shows the reason the task records, the first one.
pub fn two_failures_agree_on_one_reason(
    base: &Engine,
    account: &AccountId,
    bucket: &BucketName,
    key: &ObjectKey,
    name: &str,
) {
    let r = Racer::over(base);
    let task = r
        .engine
        .create_restore_task(
            account,
            &RestoreRequest {
                bucket: bucket.clone(),
                key: key.clone(),
                name: Some(name.parse().unwrap()),
                image_tags: vec![],
                snapshot_tags: vec![],
            },
        )
        .unwrap();
    r.transfer(TaskKind::Restore, &task.id);
    // Both claim while neither has ended; the first marks the image failed
    // and ends the task, then the second marks the image.
    r.gates.queue("set_image_state");
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            r.engine
                .fail_restore(&task.id, "unit 0: the first failure", FailedBy::Workflow)
        });
        r.gates.wait_for_queued("set_image_state", 1);
        let second = s.spawn(|| {
            r.engine
                .fail_restore(&task.id, "unit 2: task is ending", FailedBy::Workflow)
        });
        r.gates.wait_for_queued("set_image_state", 2);
        r.gates.release_one("set_image_state");
        first.join().unwrap().unwrap();
        r.gates.release_one("set_image_state");
        second.join().unwrap().unwrap();
    });
    let t = r.task(&task.id);
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(
        t.failure_reason.as_deref(),
        Some("unit 0: the first failure")
    );
    let image = r
        .engine
        .catalog
        .describe_image(account, t.image_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(image.state, ResourceState::Failed);
    assert_eq!(
        image.state_reason.as_deref(),
        Some("unit 0: the first failure"),
        "the image shows another reason than its task"
    );
}

/// A small deterministic generator (xorshift), for interleavings.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The ways a store can end at once, started together in a random order
/// with random delays over `seeds` seeds: finalize (twice, as at-least-once
/// delivery may), a cancel and a sweep (of the execution, ended or not). The
/// workflow's own fail step runs only after its finalize has failed (Step
/// Functions runs them in turn), so it comes last, if the task is still in
/// progress. Each run checks the store invariants. Returns how many
/// interleavings ran.
pub fn random_store_endings(
    base: &Engine,
    account: &AccountId,
    image: &ImageId,
    bucket: &BucketPath,
    seeds: Range<u64>,
) -> u64 {
    let r = Racer::over(base);
    let gib = r
        .engine
        .tasks
        .in_progress_gib(account, TaskKind::Store)
        .unwrap();
    let mut runs = 0;
    for seed in seeds {
        let mut rng = Seeded::new(seed);
        let task = start_store(&r, account, image, bucket);
        if rng.below(2) == 0 {
            r.runner.end(&task);
        }
        let mut actors: Vec<u64> = (0..4).collect();
        for i in (1..actors.len()).rev() {
            actors.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let delays: Vec<u64> = actors.iter().map(|_| rng.below(3)).collect();
        std::thread::scope(|s| {
            for (actor, delay) in actors.iter().zip(&delays) {
                let (r, task) = (&r, &task);
                s.spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(*delay));
                    // Each may lose: what matters is what holds afterwards.
                    let _ = match actor {
                        0 | 1 => r.finalize(TaskKind::Store, task).map(|_| ()),
                        2 => r.engine.cancel_store(account, image, None).map(|_| ()),
                        _ => r.engine.sweep(now_ms(), 0).map(|_| ()),
                    };
                });
            }
        });
        // Whatever was left in progress (every actor lost), the workflow's
        // fail step ends it, as Step Functions' Catch would.
        if r.task(&task).state == TaskState::InProgress {
            r.engine
                .fail_store(&task, "the workflow failed", FailedBy::Workflow)
                .unwrap();
        }
        store_invariants(&r, &task, gib);
        let t = r.task(&task);
        if t.state == TaskState::Completed {
            r.engine.objects.delete_object(&t.bucket, &t.key).unwrap();
        }
        runs += 1;
    }
    runs
}
