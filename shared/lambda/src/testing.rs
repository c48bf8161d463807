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
use amistore_core::ports::{BucketAdmin, ExecutionStatus, ObjectStore, WorkflowRunner};
use amistore_core::storage::BucketName;
use amistore_core::task::TaskKind;
use amistore_local::embedded::{LocalEngine, LocalOptions};

use crate::Function;
use crate::deployment::Deployment;
use crate::step::StepFailure;
use serde_json::json;

/// An HTTP API (2.0) response as API Gateway reads it from a function's
/// output: what the handler tests check, in the wire's own names.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpAnswer {
    /// The status.
    pub status_code: u16,
    /// The headers, by lowercase name.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The document, as text.
    pub body: String,
    /// Whether `body` is base64 (never: the documents are text).
    pub is_base64_encoded: bool,
}

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
    /// A world whose executions run by themselves, in this process (the
    /// deployed state machine files, over the local adapters).
    pub fn running() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = LocalOptions {
            min_unit_blocks: Some(2),
            runner: amistore_local::workflow::RunnerOptions {
                max_map_concurrency: 2,
                retry_delay_scale: 0.0,
                ..Default::default()
            },
            ..LocalOptions::default()
        };
        let local = LocalEngine::open(&dir.path().join("data"), options, None).unwrap();
        BucketAdmin::create_bucket(&local.buckets, &account(), &BUCKET.parse().unwrap()).unwrap();
        Self {
            dir,
            local,
            workflows: Arc::new(Workflows::default()),
        }
    }

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
        BucketAdmin::create_bucket(&local.buckets, &account(), &BUCKET.parse().unwrap()).unwrap();
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

    /// How many multipart uploads are in progress in the bucket.
    pub fn uploads_in_progress(&self) -> usize {
        ObjectStore::list_multipart_uploads(&self.local.buckets, &self.bucket())
            .unwrap()
            .len()
    }

    /// A store task of a new image called `name` into the bucket, admitted
    /// and not yet planned.
    pub fn store_task(&self, name: &str) -> amistore_core::task::Task {
        let image = self.image(name, &[]);
        self.engine()
            .create_store_task(
                &account(),
                &amistore_core::engine::intake::StoreRequest {
                    image_id: image,
                    bucket: BUCKET.parse().unwrap(),
                    object_tags: Vec::new(),
                },
            )
            .unwrap()
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

/// The repository's root.
pub fn repository() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The deployment template as CloudFormation receives it: the file
/// `AMISTORE_TRANSLATED_TEMPLATE` names (scripts/test makes it), or one
/// translated now with the repository's .venv (infra/checks/translate.py).
pub fn translated_template() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("AMISTORE_TRANSLATED_TEMPLATE") {
        return path.into();
    }
    static MADE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let python = repository().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/test (it installs aws-sam-translator), or set AMISTORE_TRANSLATED_TEMPLATE",
            python.display()
        );
        let out = std::env::temp_dir().join(format!(
            "amistore-template-{}.json",
            std::process::id()
        ));
        let status = std::process::Command::new(python)
            .arg(repository().join("infra/checks/translate.py"))
            .arg(repository().join("infra/template.yaml"))
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "translating the template failed");
        out
    })
    .clone()
}

/// API Gateway's HTTP API in front of the intake and describe functions, as
/// the template deploys it: one route per action (`POST /<Action>`; anything
/// else is 404), IAM authorization (SigV4 for `execute-api`, verified against
/// `keys`; a bad or missing signature is 403, as API Gateway answers), and a
/// payload format 2.0 event with the authorizer's context handed to the
/// function whose route it is. Loopback only; stops when dropped.
pub struct ApiGatewayFront {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiGatewayFront {
    /// Starts the front over `engine`; `keys` are (access key, secret, account).
    pub fn start(engine: Arc<Engine>, keys: Vec<(String, String, AccountId)>) -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Some(request)) = server.recv_timeout(std::time::Duration::from_millis(50))
                else {
                    continue;
                };
                front_door(&runtime, &engine, &keys, request);
            }
        });
        Self {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ApiGatewayFront {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn front_door(
    runtime: &tokio::runtime::Runtime,
    engine: &Arc<Engine>,
    keys: &[(String, String, AccountId)],
    mut request: tiny_http::Request,
) {
    use std::io::Read;
    let mut body = Vec::new();
    let _ = request.as_reader().take(1 << 20).read_to_end(&mut body);
    let (path, query) = match request.url().split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (request.url().to_owned(), String::new()),
    };
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_owned(),
                h.value.as_str().to_owned(),
            )
        })
        .collect();
    let method = request.method().as_str().to_owned();
    let json_reply = |status: u16, message: &str| {
        (
            status,
            "application/json".to_owned(),
            serde_json::json!({"message": message}).to_string(),
        )
    };
    let action = path.trim_start_matches('/').to_owned();
    let function = [Function::Intake, Function::Describe]
        .into_iter()
        .find(|f| f.actions().contains(&action.as_str()));
    let (status, content_type, text) = match function {
        _ if method != "POST" => json_reply(404, "Not Found"),
        None => json_reply(404, "Not Found"),
        Some(function) => {
            let signed = amistore_api::sigv4::SignedRequest {
                method: &method,
                path: &path,
                query: &query,
                headers: &headers,
                body: &body,
            };
            let secret = |k: &str| {
                keys.iter()
                    .find(|(a, _, _)| a == k)
                    .map(|(_, s, _)| s.clone())
            };
            match amistore_api::sigv4::verify_for(
                "execute-api",
                &signed,
                secret,
                time::OffsetDateTime::now_utc(),
            ) {
                Err(e) => json_reply(403, &e.message),
                Ok(signer) => {
                    let account = keys
                        .iter()
                        .find(|(a, _, _)| *a == signer.access_key)
                        .map(|(_, _, acct)| acct.clone())
                        .unwrap();
                    let event = serde_json::json!({
                        "version": "2.0",
                        "routeKey": format!("POST {path}"),
                        "rawPath": path,
                        "rawQueryString": query,
                        "headers": headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                        "requestContext": {
                            "requestId": amistore_core::ids::unique_token()[..16],
                            "http": {"method": method},
                            "authorizer": {"iam": {"accountId": account.as_str(), "accessKey": signer.access_key}},
                        },
                        "body": String::from_utf8_lossy(&body),
                        "isBase64Encoded": false,
                    });
                    let deployment = Deployment {
                        function,
                        engine: engine.clone(),
                        account,
                        sweep_grace_ms: 0,
                    };
                    match runtime.block_on(crate::handle(&deployment, event)) {
                        Ok(answer) => (
                            answer["statusCode"].as_u64().unwrap_or(500) as u16,
                            answer["headers"]["content-type"]
                                .as_str()
                                .unwrap_or("text/plain")
                                .to_owned(),
                            answer["body"].as_str().unwrap_or_default().to_owned(),
                        ),
                        Err(e) => json_reply(502, &e.cause),
                    }
                }
            }
        }
    };
    let header =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).unwrap();
    let _ = request.respond(
        tiny_http::Response::from_string(text)
            .with_status_code(status)
            .with_header(header),
    );
}
