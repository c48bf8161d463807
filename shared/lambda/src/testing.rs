//! Handler tests' world: the engine over local adapters (image library, bucket
//! folders, SQLite) in a temporary data directory, with Step Functions played
//! by the test: [`Workflows`] records the executions intake starts, and the test
//! delivers the state machine's task inputs to the step handlers itself.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use amistore_core::engine::Engine;
use amistore_core::engine::steps::run_step;
use amistore_core::ids::{AccountId, ImageId, TaskId};
use amistore_core::image::{Architecture, ImageSpec};
use amistore_core::ports::{ExecutionStatus, WorkflowRunner};
use amistore_core::storage::BucketName;
use amistore_core::task::TaskKind;
use amistore_local::embedded::{LocalEngine, LocalOptions};

use crate::Function;
use crate::deployment::Deployment;
use crate::step::StepFailure;
use serde_json::json;

/// The account every fixture's caller belongs to.
pub const ACCOUNT: &str = "123456789012";
/// The bucket the fixtures store into.
pub const BUCKET: &str = "amistore-archive";
/// The image id the fixtures name; tests put a real one in its place.
pub const FIXTURE_IMAGE: &str = "ami-0123456789abcdef0";
/// The task id the step fixtures name; tests put a real one in its place.
pub const FIXTURE_TASK: &str = "task-0123456789abcdef0";

/// Executions intake asked for, and which have ended.
#[derive(Default)]
pub struct Workflows {
    started: Mutex<Vec<(TaskKind, TaskId)>>,
    ended: Mutex<HashSet<TaskId>>,
}

impl Workflows {
    pub fn started(&self) -> Vec<(TaskKind, TaskId)> {
        self.started.lock().unwrap().clone()
    }

    /// Marks an execution ended (as if it had been stopped or had timed out).
    pub fn end(&self, task: &TaskId) {
        self.ended.lock().unwrap().insert(task.clone());
    }
}

impl WorkflowRunner for Workflows {
    fn start(&self, kind: TaskKind, task: &TaskId) -> amistore_core::Result<()> {
        self.started.lock().unwrap().push((kind, task.clone()));
        Ok(())
    }

    fn status(&self, _kind: TaskKind, task: &TaskId) -> amistore_core::Result<ExecutionStatus> {
        let started = self.started.lock().unwrap().iter().any(|(_, t)| t == task);
        Ok(match (started, self.ended.lock().unwrap().contains(task)) {
            (false, _) => ExecutionStatus::Missing,
            (true, true) => ExecutionStatus::Ended,
            (true, false) => ExecutionStatus::Running,
        })
    }

    fn stop(&self, _kind: TaskKind, task: &TaskId, _cause: &str) -> amistore_core::Result<()> {
        self.end(task);
        Ok(())
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub local: LocalEngine,
    pub workflows: Arc<Workflows>,
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let workflows = Arc::new(Workflows::default());
        let runner = workflows.clone();
        let options = LocalOptions {
            // Small units: a small image still makes several.
            min_unit_blocks: Some(2),
            ..LocalOptions::default()
        };
        let local = LocalEngine::open_with(&dir.path().join("data"), options, None, |mut p| {
            p.runner = Some(runner);
            p
        })
        .unwrap();
        local
            .buckets
            .create_bucket_for(&BUCKET.parse().unwrap(), &account())
            .unwrap();
        Self {
            dir,
            local,
            workflows,
        }
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.local.engine.clone()
    }

    pub fn bucket(&self) -> BucketName {
        BUCKET.parse().unwrap()
    }

    /// Imports a two-disk image (data, holes, a second small disk), tagged
    /// `tags`, as the fixtures' account.
    pub fn image(&self, name: &str, tags: &[&str]) -> ImageId {
        let mut disks = Vec::new();
        for (i, (device, mib)) in [("/dev/xvda", 6u64), ("/dev/xvdb", 2)].iter().enumerate() {
            let path = self.dir.path().join(format!("{name}-{i}.raw"));
            let mut f = std::fs::File::create(&path).unwrap();
            f.set_len(mib << 20).unwrap();
            // Data in a few places, holes between.
            for at in [0u64, 3 << 20] {
                if at < mib << 20 {
                    use std::io::Seek;
                    f.seek(std::io::SeekFrom::Start(at)).unwrap();
                    let text: Vec<u8> = (0..(700 * 1024u32))
                        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
                        .collect();
                    f.write_all(&text).unwrap();
                }
            }
            disks.push((device.parse().unwrap(), path));
        }
        let spec = ImageSpec {
            name: name.parse().unwrap(),
            description: Some("handler test".into()),
            architecture: Architecture::X86_64,
            boot_mode: None,
            root_device_name: None,
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        };
        self.local
            .library
            .import(&account(), &spec, &disks)
            .unwrap()
            .image_id
    }
}

impl Harness {
    /// `function` over this world's engine, as `main.rs` would build it.
    pub fn deployment(&self, function: Function) -> Deployment {
        Deployment {
            function,
            engine: self.engine(),
            account: account(),
            sweep_grace_ms: 0,
        }
    }

    /// Hands `event` to `function`'s handler, as the Lambda runtime would,
    /// and reads its answer as `T`.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        function: Function,
        event: serde_json::Value,
    ) -> Result<T, StepFailure> {
        let answer = crate::handle(&self.deployment(function), event).await?;
        Ok(serde_json::from_value(answer).expect("the answer has its documented shape"))
    }

    /// What Step Functions would do up to finalize: plan, then every unit.
    pub fn transfer(&self, kind: TaskKind, task: &TaskId) {
        let (k, engine) = (kind.as_str(), self.engine());
        let plan = run_step(
            &engine,
            &json!({"step": format!("{k}.plan"), "taskId": task}),
        )
        .unwrap();
        for unit in 0..plan["units"].as_u64().unwrap() {
            run_step(
                &engine,
                &json!({"step": format!("{k}.unit"), "taskId": task, "unit": unit}),
            )
            .unwrap();
        }
    }

    /// The whole workflow: [`Self::transfer`], then finalize.
    pub fn complete(&self, kind: TaskKind, task: &TaskId) {
        self.transfer(kind, task);
        let k = kind.as_str();
        run_step(
            &self.engine(),
            &json!({"step": format!("{k}.finalize"), "taskId": task}),
        )
        .unwrap();
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

pub fn account() -> AccountId {
    ACCOUNT.parse().unwrap()
}

/// A fixture with the placeholders replaced.
pub fn fixture(text: &str, image: Option<&ImageId>, task: Option<&TaskId>) -> serde_json::Value {
    let mut text = text.to_owned();
    if let Some(i) = image {
        text = text.replace(FIXTURE_IMAGE, i.as_str());
    }
    if let Some(t) = task {
        text = text.replace(FIXTURE_TASK, t.as_str());
    }
    serde_json::from_str(&text).expect("fixture is JSON")
}
