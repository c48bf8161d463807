//! The deployment on moto, each function with only its own role's rights.
//!
//! moto checks no IAM. So here every function is built as its `main.rs`
//! builds it (`Config` from exactly its environment, the AWS adapters), each
//! with SDK clients whose every request is recorded with the permissions IAM
//! evaluates for it ([`amistore_aws::audit`]). The test plays API Gateway
//! (HTTP API 2.0 events with the IAM authorizer's context) and Step Functions
//! (the deployed state machine files, executed in process, Task states
//! invoking the chunk-transfer and finalize functions; the state machine
//! roles' own requests — invoking the functions, the Distributed Map's item
//! reader and child executions — recorded as Step Functions makes them). At
//! the end of each scenario, every recorded request is evaluated against its
//! principal's policies from the translated template, with the world's names
//! substituted (`infra/checks/roles.py`), by a real IAM evaluator
//! (`infra/checks/iam-check.mjs`, @cloud-copilot/iam-simulate). A request its
//! role does not allow fails the test, naming the function, action and
//! resource.
//!
//! Where AWS itself calls KMS on the caller's behalf (S3 for an SSE-KMS
//! bucket, EBS for an encrypted snapshot), the permissions it needs from the
//! caller are added as the services' documentation says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use amistore_aws::testing::{Aws, SeedDisk, moto_endpoint};
use amistore_aws::{Audit, Overrides, Permission};
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::ids::{ImageId, ResourceState, TaskId, unique_token};
use amistore_core::image::{Encryption, GIB};
use amistore_core::ports::{ImageCatalog, TaskStore};
use amistore_core::task::{TaskKind, TaskState};
use amistore_lambda::Function;
use amistore_lambda::deployment::{Config, Deployment, connect_with};
use amistore_lambda::testing::{repository, translated_template};
use amistore_local::workflow::asl::StateMachine;
use amistore_local::workflow::execute::{Failure, Function as TaskFn, Host, execute};
use amistore_local::workflow::{FUNCTIONS, RESTORE_DEFINITION, STORE_DEFINITION};
use serde_json::{Value, json};

/// Every request of one world, and what AWS does with KMS on the side.
#[derive(Default)]
struct AuditLog {
    records: Mutex<Vec<Value>>,
    /// Buckets encrypted by default with a KMS key (SSE-KMS), and the key.
    sse_kms: Mutex<HashMap<String, String>>,
    /// Snapshots encrypted under a KMS key, and the key.
    encrypted: Mutex<HashMap<String, String>>,
}

impl AuditLog {
    fn push(&self, principal: &str, p: &Permission) {
        self.records.lock().unwrap().push(json!({
            "principal": principal,
            "call": p.call,
            "action": p.action,
            "resource": p.resource,
            "context": p.context,
        }));
    }

    /// What S3 and EBS ask KMS for with the caller's credentials.
    fn kms_on_the_side(&self, p: &Permission) -> Vec<Permission> {
        let kms = |action: &str, key: &str| Permission {
            call: p.call.clone(),
            action: action.into(),
            resource: key.into(),
            context: BTreeMap::new(),
        };
        let mut out = Vec::new();
        if let Some(object) = p.resource.strip_prefix("arn:aws:s3:::") {
            let bucket = object.split('/').next().unwrap_or_default();
            if let Some(key) = self.sse_kms.lock().unwrap().get(bucket) {
                // SSE-KMS: writes need a data key (and a multipart upload
                // decrypts it for every part); reads decrypt it.
                match p.action.as_str() {
                    "s3:PutObject" => {
                        out.push(kms("kms:GenerateDataKey", key));
                        out.push(kms("kms:Decrypt", key));
                    }
                    "s3:GetObject" => out.push(kms("kms:Decrypt", key)),
                    _ => {}
                }
            }
        }
        if p.action.starts_with("ebs:") && p.action != "ebs:StartSnapshot" {
            let snapshot = p.resource.rsplit('/').next().unwrap_or_default();
            if let Some(key) = self.encrypted.lock().unwrap().get(snapshot) {
                out.push(kms("kms:Decrypt", key));
            }
        }
        out
    }
}

/// One function's or state machine's requests.
struct Principal {
    log: Arc<AuditLog>,
    name: &'static str,
}

impl Audit for Principal {
    fn record(&self, permission: Permission) {
        for side in self.log.kms_on_the_side(&permission) {
            self.log.push(self.name, &side);
        }
        self.log.push(self.name, &permission);
    }
}

/// A deployment on moto: the resources the template would create, named as
/// it names them, and each function built from exactly its environment.
struct Cloud {
    aws: Aws,
    log: Arc<AuditLog>,
    world: String,
    stack_id: String,
    archive: String,
    kms_key: Option<String>,
    machines: BTreeMap<&'static str, (String, String)>,
    secret: String,
    functions: HashMap<Function, Arc<Deployment>>,
}

impl Cloud {
    /// A deployment in `region` (moto keeps EC2 state per region: each suite
    /// that lists every image of the account takes a region of its own), whose
    /// archive bucket is SSE-KMS and whose `KmsKeyArns` names a key when
    /// `kms` is set.
    fn new(region: &str, kms: bool) -> Self {
        let aws = Aws::connect_in(region);
        aws.ports.tasks.ensure_table().unwrap();
        let world = unique_token()[..10].to_owned();
        let archive = format!("archive-{world}");
        aws.create_bucket(&archive);
        aws.create_bucket(aws.settings.work_bucket.as_str());
        let account = aws.ports.account.to_string();
        let uuid = {
            let t = unique_token();
            format!(
                "{}-{}-{}-{}-{}",
                &t[..8],
                &t[8..12],
                &t[12..16],
                &t[16..20],
                &t[20..32]
            )
        };
        let stack_id =
            format!("arn:aws:cloudformation:{region}:{account}:stack/amistore-{world}/{uuid}");
        let log = Arc::new(AuditLog::default());
        let kms_key = kms.then(|| format!("arn:aws:kms:{region}:{account}:key/{uuid}"));
        if let Some(key) = &kms_key {
            log.sse_kms
                .lock()
                .unwrap()
                .insert(archive.clone(), key.clone());
        }
        // The state machines, named as the template names them.
        let mut machines = BTreeMap::new();
        for (logical, kind, definition) in [
            ("StoreStateMachine", "store", STORE_DEFINITION),
            ("RestoreStateMachine", "restore", RESTORE_DEFINITION),
        ] {
            let name = format!("amistore-{kind}-{uuid}");
            let arn = aws.create_state_machine(&name, definition);
            machines.insert(logical, (name, arn));
        }
        let secret = aws.create_secret(&format!("token-{world}"), &unique_token()[..48]);
        let mut cloud = Self {
            aws,
            log,
            world,
            stack_id,
            archive,
            kms_key,
            machines,
            secret,
            functions: HashMap::new(),
        };
        for function in Function::ALL {
            let deployment = cloud.function(function);
            cloud.functions.insert(function, Arc::new(deployment));
        }
        cloud
    }

    /// What the template would put in `function`'s environment here.
    fn environment(&self, name: &str) -> Option<String> {
        let s = &self.aws.settings;
        Some(match name {
            "AMISTORE_TABLE" => s.table.clone(),
            "AMISTORE_WORK_BUCKET" => s.work_bucket.to_string(),
            "AMISTORE_ACCOUNT_ID" => self.aws.ports.account.to_string(),
            "AMISTORE_STORE_STATE_MACHINE" => self.machines["StoreStateMachine"].1.clone(),
            "AMISTORE_RESTORE_STATE_MACHINE" => self.machines["RestoreStateMachine"].1.clone(),
            "AMISTORE_TOKEN_SECRET_ARN" => self.secret.clone(),
            "AMISTORE_SWEEP_GRACE_SECONDS" => "0".into(),
            "AMISTORE_STORE_LIMIT_GIB" => "1200".into(),
            "AMISTORE_RESTORE_LIMIT_GIB" => "600".into(),
            "AMISTORE_UNITS_PER_TASK" => "16".into(),
            "AMISTORE_RESERVED_UNIT_CONCURRENCY" => "0".into(),
            "AMISTORE_EBS_REQUESTS_PER_SECOND" => "60".into(),
            "AMISTORE_EBS_ACCOUNT_REQUESTS_PER_SECOND" => "1000".into(),
            "AMISTORE_EBS_CONCURRENCY" => "32".into(),
            _ => return None,
        })
    }

    fn function(&self, function: Function) -> Deployment {
        let config = Config::from_lookup(function, &|name| self.environment(name)).unwrap();
        let overrides = Overrides {
            endpoint_url: Some(moto_endpoint().to_owned()),
            region: Some(self.aws.region()),
            credentials: Some(("testing".into(), "testing".into())),
            audit: Some(Arc::new(Principal {
                log: self.log.clone(),
                name: function.logical_id(),
            })),
        };
        let mut deployment = self
            .aws
            .runtime
            .block_on(connect_with(config, overrides))
            .unwrap();
        // Small units, so a small image makes several.
        if let Some(engine) = Arc::get_mut(&mut deployment.engine) {
            engine.config.min_unit_blocks = 2;
            engine.config.min_part_size = 5 << 20;
        }
        deployment
    }

    fn deployment(&self, function: Function) -> &Deployment {
        &self.functions[&function]
    }

    /// API Gateway: an IAM-authorised HTTP API (2.0) request on the action's
    /// route, with `params` as the form body.
    fn api(&self, function: Function, action: &str, params: &[(&str, &str)]) -> (u16, String) {
        let mut body = format!("Action={action}&Version=2016-11-15");
        for (k, v) in params {
            body.push_str(&format!("&{k}={}", form(v)));
        }
        let event = json!({
            "version": "2.0",
            "routeKey": format!("POST /{action}"),
            "rawPath": format!("/{action}"),
            "rawQueryString": "",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
            "requestContext": {
                "requestId": unique_token()[..12],
                "http": {"method": "POST"},
                "authorizer": {"iam": {"accountId": self.aws.ports.account.as_str(),
                                       "userArn": "arn:aws:iam::123456789012:user/ops"}}
            },
            "body": body,
            "isBase64Encoded": false
        });
        let answer = self
            .aws
            .runtime
            .block_on(amistore_lambda::handle(self.deployment(function), event))
            .unwrap();
        (
            answer["statusCode"].as_u64().unwrap() as u16,
            answer["body"].as_str().unwrap().to_owned(),
        )
    }

    /// Step Functions: runs task `task`'s execution of the deployed state
    /// machine to its end, then marks it ended.
    fn run_execution(&self, kind: TaskKind, task: &TaskId) {
        let logical = match kind {
            TaskKind::Store => "StoreStateMachine",
            TaskKind::Restore => "RestoreStateMachine",
        };
        let arn = self.machines[logical].1.clone();
        let definition = match kind {
            TaskKind::Store => STORE_DEFINITION,
            TaskKind::Restore => RESTORE_DEFINITION,
        };
        let resources = FUNCTIONS.iter().map(|f| f.to_string()).collect();
        let machine = StateMachine::parse(definition, &resources).unwrap();
        let record = |action: &str, resource: String| {
            self.log.push(
                logical,
                &Permission {
                    call: "StepFunctions".into(),
                    action: action.into(),
                    resource,
                    context: BTreeMap::new(),
                },
            );
        };
        // A Distributed Map runs its items as child executions of the same
        // state machine, which its role starts, describes and stops.
        record("states:StartExecution", arn.clone());
        let child = arn.replace(":stateMachine:", ":execution:") + "/TransferUnits:child";
        record("states:DescribeExecution", child.clone());
        record("states:StopExecution", child);
        let mut functions = BTreeMap::new();
        for (placeholder, function) in [
            ("${ChunkTransferFunctionArn}", Function::ChunkTransfer),
            ("${FinalizeFunctionArn}", Function::Finalize),
        ] {
            let deployment = self.functions[&function].clone();
            let handle = self.aws.runtime.handle().clone();
            let log = self.log.clone();
            let region = self.aws.region();
            let account = self.aws.ports.account.to_string();
            let invoke: TaskFn = Arc::new(move |input: &Value| {
                log.push(
                    logical,
                    &Permission {
                        call: "StepFunctions.Invoke".into(),
                        action: "lambda:InvokeFunction".into(),
                        resource: format!(
                            "arn:aws:lambda:{region}:{account}:function:{}",
                            physical_function(function)
                        ),
                        context: BTreeMap::new(),
                    },
                );
                handle
                    .block_on(amistore_lambda::handle(&deployment, input.clone()))
                    .map_err(|e| Failure {
                        error: e.name.to_owned(),
                        cause: json!({"errorType": e.name, "errorMessage": e.cause}).to_string(),
                    })
            });
            functions.insert(placeholder.to_owned(), invoke);
        }
        let s3 = self.aws.s3.clone();
        let handle = self.aws.runtime.handle().clone();
        let log = self.log.clone();
        let host = Host {
            functions,
            items: Arc::new(move |bucket: &str, key: &str| {
                log.push(
                    logical,
                    &Permission {
                        call: "StepFunctions.ItemReader".into(),
                        action: "s3:GetObject".into(),
                        resource: format!("arn:aws:s3:::{bucket}/{key}"),
                        context: BTreeMap::new(),
                    },
                );
                let bytes = handle
                    .block_on(async {
                        let out = s3.get_object().bucket(bucket).key(key).send().await?;
                        Ok::<_, Box<dyn std::error::Error>>(out.body.collect().await?.to_vec())
                    })
                    .map_err(|e| Failure {
                        error: "States.ItemReaderFailed".into(),
                        cause: e.to_string(),
                    })?;
                serde_json::from_slice(&bytes).map_err(|e| Failure {
                    error: "States.ItemReaderFailed".into(),
                    cause: e.to_string(),
                })
            }),
            max_map_concurrency: 3,
            retry_delay_scale: 0.0,
        };
        let _ = execute(
            &host,
            &machine,
            json!({"taskId": task, "unitConcurrency": 3}),
            task.as_str(),
        );
        self.aws.end_execution(&format!(
            "{}:{task}",
            arn.replace(":stateMachine:", ":execution:")
        ));
    }

    // The test looks at the world through clients of its own: what it reads
    // is no function's request.

    fn task(&self, id: &TaskId) -> amistore_core::task::Task {
        self.aws.ports.tasks.get(id).unwrap().unwrap()
    }

    /// The newest task of `kind`.
    fn newest(&self, kind: TaskKind) -> TaskId {
        let now = amistore_core::engine::now_ms();
        let account = &self.aws.ports.account;
        self.aws
            .ports
            .tasks
            .list(account, kind, now)
            .unwrap()
            .remove(0)
            .id
    }

    fn image(&self, id: &ImageId) -> amistore_core::ports::Image {
        let account = &self.aws.ports.account;
        self.aws.ports.images.describe_image(account, id).unwrap()
    }

    fn seed(&self, name: &str, tags: &[&str]) -> ImageId {
        let encryption = self
            .kms_key
            .clone()
            .map_or(Encryption::Unencrypted, Encryption::Key);
        let disks = [
            SeedDisk {
                device: "/dev/xvda",
                bytes: 12 * BLOCK_SIZE,
                blocks: vec![
                    (0, noise(1)),
                    (1, noise(2)),
                    (5, vec![0; BLOCK_SIZE as usize]),
                    (11, noise(3)),
                ],
            },
            SeedDisk {
                device: "/dev/xvdb",
                bytes: GIB,
                blocks: vec![(7, noise(4)), (2047, noise(5))],
            },
        ];
        let (image, snapshots) =
            self.aws
                .seed_image(&format!("{name}-{}", self.world), &disks, &encryption, tags);
        if let Some(key) = &self.kms_key {
            let mut encrypted = self.log.encrypted.lock().unwrap();
            for s in snapshots {
                encrypted.insert(s.to_string(), key.clone());
            }
        }
        image
    }

    /// Evaluates every request recorded so far against the roles, and keeps
    /// the records for the suite's coverage report.
    fn check_iam(&self) {
        let dir = std::env::var("AMISTORE_IAM_AUDIT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repository().join("target/iam-audit"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut resources = json!({
            "TasksTable": {
                "Ref": self.aws.settings.table,
                "Arn": format!("arn:aws:dynamodb:{}:{}:table/{}", self.aws.region(),
                               self.aws.ports.account, self.aws.settings.table),
            },
            "WorkBucket": {
                "Ref": self.aws.settings.work_bucket.as_str(),
                "Arn": format!("arn:aws:s3:::{}", self.aws.settings.work_bucket),
            },
            "TokenSecret": {"Ref": self.secret},
        });
        for (logical, (name, arn)) in &self.machines {
            resources[*logical] = json!({"Ref": arn, "Name": name, "Arn": arn});
        }
        for function in Function::ALL {
            resources[function.logical_id()] = json!({
                "Ref": physical_function(function),
                "Arn": format!("arn:aws:lambda:{}:{}:function:{}", self.aws.region(),
                               self.aws.ports.account, physical_function(function)),
            });
        }
        let world = json!({
            "region": self.aws.region(),
            "account": self.aws.ports.account.as_str(),
            "stackId": self.stack_id,
            "parameters": {
                "ArchiveBuckets": self.archive,
                "KmsKeyArns": self.kms_key.clone().unwrap_or_default(),
            },
            "resources": resources,
        });
        let world_path = dir.join(format!("{}.world.json", self.world));
        std::fs::write(&world_path, world.to_string()).unwrap();
        let records_path = dir.join(format!("{}.jsonl", self.world));
        let lines: Vec<String> = self
            .log
            .records
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        assert!(!lines.is_empty(), "nothing was recorded");
        std::fs::write(&records_path, lines.join("\n") + "\n").unwrap();

        let roles = Command::new(repository().join(".venv/bin/python"))
            .arg(repository().join("infra/checks/roles.py"))
            .arg(translated_template())
            .arg(&world_path)
            .output()
            .unwrap();
        assert!(
            roles.status.success(),
            "roles.py: {}",
            String::from_utf8_lossy(&roles.stderr)
        );
        let roles_path = dir.join(format!("{}.roles.json", self.world));
        std::fs::write(&roles_path, &roles.stdout).unwrap();
        let script = repository().join("infra/checks/iam-check.mjs");
        assert!(
            repository()
                .join("infra/node_modules/@cloud-copilot/iam-simulate")
                .exists(),
            "infra/node_modules is missing: run scripts/test (or `npm ci` in infra/)"
        );
        let checked = Command::new("node")
            .arg(&script)
            .arg("check")
            .arg(&roles_path)
            .arg(&records_path)
            .output()
            .expect("node runs the IAM check");
        let report = String::from_utf8_lossy(&checked.stdout);
        assert!(
            checked.status.success(),
            "requests the roles do not allow:\n{report}{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        println!("{report}");
    }
}

/// The physical name a function gets (any will do: policies reach the
/// functions by their names).
fn physical_function(function: Function) -> String {
    format!("amistore-{}", function.name())
}

fn form(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..BLOCK_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn between<'a>(body: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = body
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {body}"))
        + open.len();
    &body[start..start + body[start..].find('<').unwrap()]
}

#[test]
fn a_store_and_a_restore_need_only_what_their_roles_allow() {
    // Encrypted snapshots under a customer managed key, and an SSE-KMS bucket.
    let cloud = Cloud::new("ca-central-1", true);
    let image = cloud.seed("iam-source", &["team=infra"]);
    let bucket_path = format!("{}/nightly", cloud.archive);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateStoreImageTask",
        &[
            ("ImageId", image.as_str()),
            ("Bucket", &bucket_path),
            ("S3ObjectTag.1.Key", "team"),
            ("S3ObjectTag.1.Value", "infra"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let key = between(&body, "objectKey").to_owned();
    let store = cloud.newest(TaskKind::Store);
    cloud.run_execution(TaskKind::Store, &store);
    let stored = cloud.task(&store);
    assert_eq!(
        stored.state,
        TaskState::Completed,
        "{:?}",
        stored.failure_reason
    );

    let (status, body) = cloud.api(
        Function::Describe,
        "DescribeStoreImageTasks",
        &[("MaxResults", "5")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(between(&body, "storeTaskState"), "Completed");

    let name = format!("iam-restored-{}", cloud.world);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateRestoreImageTask",
        &[
            ("Bucket", &cloud.archive),
            ("ObjectKey", &key),
            ("Name", &name),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let restored: ImageId = between(&body, "imageId").parse().unwrap();
    let restore = cloud.newest(TaskKind::Restore);
    cloud.run_execution(TaskKind::Restore, &restore);
    let task = cloud.task(&restore);
    assert_eq!(
        task.state,
        TaskState::Completed,
        "{:?}",
        task.failure_reason
    );
    let (status, body) = cloud.api(Function::Describe, "DescribeRestoreImageTasks", &[]);
    assert_eq!(status, 200, "{body}");

    // The restored snapshots are encrypted under the source's key.
    let image = cloud.image(&restored);
    assert_eq!(image.state, ResourceState::Available);
    for m in &image.metadata.block_device_mappings {
        let ebs = m.ebs.as_ref().unwrap();
        assert_eq!(
            (ebs.encrypted, ebs.kms_key_id.as_deref()),
            (true, cloud.kms_key.as_deref()),
            "{}",
            m.device_name
        );
    }
    cloud.check_iam();
}

#[test]
fn failures_and_cancels_clean_up_with_only_what_their_roles_allow() {
    let cloud = Cloud::new("sa-east-1", false);
    // A cancelled store: intake aborts the upload and stops the execution.
    let image = cloud.seed("iam-cancelled", &[]);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateStoreImageTask",
        &[("ImageId", image.as_str()), ("Bucket", &cloud.archive)],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cloud.api(
        Function::Intake,
        "CancelStoreImageTask",
        &[("ImageId", image.as_str())],
    );
    assert_eq!(status, 200, "{body}");
    let cancelled = cloud.newest(TaskKind::Store);
    assert_eq!(
        cloud.task(&cancelled).failure_reason.as_deref(),
        Some("cancelled")
    );

    // A store whose unit fails: the unit's fail step, then the workflow's,
    // abort the upload and delete whatever was written.
    let doomed = cloud.seed("iam-doomed", &[]);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateStoreImageTask",
        &[("ImageId", doomed.as_str()), ("Bucket", &cloud.archive)],
    );
    assert_eq!(status, 200, "{body}");
    let store = cloud.newest(TaskKind::Store);
    // Its upload disappears under its units: each UploadPart fails.
    let upload = cloud.task(&store).upload_id.unwrap();
    cloud
        .aws
        .runtime
        .block_on(
            cloud
                .aws
                .s3
                .abort_multipart_upload()
                .bucket(&cloud.archive)
                .key(cloud.task(&store).key.as_str())
                .upload_id(upload)
                .send(),
        )
        .unwrap();
    cloud.run_execution(TaskKind::Store, &store);
    let failed = cloud.task(&store);
    assert_eq!(failed.state, TaskState::Failed);
    assert!(
        failed
            .failure_reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("unit "),
        "{failed:?}"
    );

    // A restore of a replaced (damaged) archive: its image ends failed.
    let image = cloud.seed("iam-restore-source", &[]);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateStoreImageTask",
        &[("ImageId", image.as_str()), ("Bucket", &cloud.archive)],
    );
    assert_eq!(status, 200, "{body}");
    let key = between(&body, "objectKey").to_owned();
    let store = cloud.newest(TaskKind::Store);
    cloud.run_execution(TaskKind::Store, &store);
    assert_eq!(cloud.task(&store).state, TaskState::Completed);
    let mut bytes = cloud.aws.get_object(&cloud.archive, &key);
    bytes[1000] ^= 0x5a;
    cloud
        .aws
        .runtime
        .block_on(
            cloud
                .aws
                .s3
                .put_object()
                .bucket(&cloud.archive)
                .key(&key)
                .body(bytes.into())
                .send(),
        )
        .unwrap();
    let name = format!("iam-damaged-{}", cloud.world);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateRestoreImageTask",
        &[
            ("Bucket", &cloud.archive),
            ("ObjectKey", &key),
            ("Name", &name),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let restore = cloud.newest(TaskKind::Restore);
    cloud.run_execution(TaskKind::Restore, &restore);
    let task = cloud.task(&restore);
    assert_eq!(task.state, TaskState::Failed);
    let image = cloud.image(task.image_id.as_ref().unwrap());
    assert_eq!(image.state, ResourceState::Failed);
    cloud.check_iam();
}

#[test]
fn the_sweeper_and_the_archive_policy_need_only_what_their_role_allows() {
    let cloud = Cloud::new("ap-northeast-1", false);
    // moto keeps its state across runs: a tag of this world's own.
    let tag = format!("backup={}", cloud.world);
    let image = cloud.seed("iam-abandoned", &[tag.as_str()]);
    let (status, body) = cloud.api(
        Function::Intake,
        "CreateStoreImageTask",
        &[("ImageId", image.as_str()), ("Bucket", &cloud.archive)],
    );
    assert_eq!(status, 200, "{body}");
    let abandoned = cloud.newest(TaskKind::Store);
    // Its execution ends without it (stopped, timed out).
    let (_, arn) = &cloud.machines["StoreStateMachine"];
    cloud.aws.end_execution(&format!(
        "{}:{abandoned}",
        arn.replace(":stateMachine:", ":execution:")
    ));
    let sweep = json!({
        "version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": cloud.aws.ports.account.as_str(), "time": "2026-11-30T12:00:00Z",
        "region": cloud.aws.region(), "resources": [], "detail": {}
    });
    let swept = cloud
        .aws
        .runtime
        .block_on(amistore_lambda::handle(
            cloud.deployment(Function::Sweeper),
            sweep,
        ))
        .unwrap();
    assert_eq!(swept["sweep"]["failed"], json!([abandoned]), "{swept}");
    assert_eq!(cloud.task(&abandoned).state, TaskState::Failed);

    let policy =
        json!({"archivePolicy": {"tag": tag, "bucket": format!("{}/policy", cloud.archive)}});
    let ran = cloud
        .aws
        .runtime
        .block_on(amistore_lambda::handle(
            cloud.deployment(Function::Sweeper),
            policy,
        ))
        .unwrap();
    assert_eq!(
        ran["policy"]["started"].as_array().unwrap().len(),
        1,
        "{ran}"
    );
    let started = cloud.newest(TaskKind::Store);
    cloud.run_execution(TaskKind::Store, &started);
    assert_eq!(cloud.task(&started).state, TaskState::Completed);
    cloud.check_iam();
}
