//! The task commands, embedded: `store-image`, `restore-image` and
//! `describe-store-image-tasks` run the engine in this process over the data
//! directory, with the same workflow definitions the AWS deployment runs.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use amistore_core::archive::ArchiveIndex;
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::engine::describe::{DescribeQuery, describe};
use amistore_core::engine::intake::{RestoreRequest, StoreRequest};
use amistore_core::engine::now_ms;
use amistore_core::ids::{AccountId, ImageId, TaskId};
use amistore_core::image::{ImageName, Tag};
use amistore_core::ports::ObjectReader;
use amistore_core::storage::{BucketName, BucketPath, ObjectKey};
use amistore_core::task::{QuotaLimits, Task, TaskKind, TaskState, iso8601_millis};
use amistore_local::Progress;
use amistore_local::embedded::{LocalEngine, LocalOptions, Recovery};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::progress::Bar;

/// Quota limits: the command line's, else the environment's, else the
/// configuration file's, else EC2's current quotas.
#[derive(Args, Clone, Copy, Default)]
pub struct Limits {
    /// Admit store tasks while fewer GiB than this are in progress
    /// [default: 1200].
    #[arg(
        long,
        help_heading = "Engine options",
        env = "AMISTORE_STORE_LIMIT_GIB",
        value_name = "GIB"
    )]
    store_limit_gib: Option<u64>,
    /// Admit restore tasks while fewer GiB than this are in progress
    /// [default: 600].
    #[arg(
        long,
        help_heading = "Engine options",
        env = "AMISTORE_RESTORE_LIMIT_GIB",
        value_name = "GIB"
    )]
    restore_limit_gib: Option<u64>,
}

#[derive(Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// With --endpoint: wait for the task to end, with a progress bar
    /// (embedded runs always wait).
    #[arg(long)]
    pub wait: bool,
    /// The AMI to store.
    #[arg(long)]
    pub image_id: ImageId,
    /// BUCKET or BUCKET/PATH; the object is PATH/<ami-id>.bin.
    #[arg(long)]
    pub bucket: BucketPath,
    /// Tag for the object, KEY=VALUE (repeatable, at most 10).
    #[arg(long = "s3-object-tag", value_name = "KEY=VALUE")]
    pub object_tags: Vec<Tag>,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// With --endpoint: wait for the task to end, with a progress bar
    /// (embedded runs always wait).
    #[arg(long)]
    pub wait: bool,
    /// Bucket holding the archive.
    #[arg(long)]
    pub bucket: BucketName,
    /// The archive's key, e.g. p1/p2/ami-0123456789abcdef0.bin.
    #[arg(long)]
    pub object_key: ObjectKey,
    /// Name of the new AMI [default: the stored AMI's name].
    #[arg(long)]
    pub name: Option<ImageName>,
    /// Tag for the new image or its snapshots: image:KEY=VALUE or
    /// snapshot:KEY=VALUE (repeatable).
    #[arg(long = "tag-specification", value_name = "image|snapshot:KEY=VALUE", value_parser = parse_tag_spec)]
    pub tags: Vec<(bool, Tag)>,
}

#[derive(Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub backend: Backend,
    /// Show the latest task of this AMI (repeatable, at most 20; filters are then ignored).
    #[arg(long = "image-id")]
    pub image_ids: Vec<ImageId>,
    /// NAME=VALUE[,VALUE…] or Name=NAME,Values=VALUE[,VALUE…]; names: task-state, bucket.
    #[arg(long = "filter", value_parser = parse_filter)]
    pub filters: Vec<(String, Vec<String>)>,
    /// Page size, 1 to 200.
    #[arg(long)]
    pub max_results: Option<u32>,
    /// Token from a previous page.
    #[arg(long)]
    pub next_token: Option<String>,
}

impl Limits {
    /// These limits, with the configuration file's where none was given.
    pub fn or_config(self, config: &crate::config::Config) -> Self {
        Self {
            store_limit_gib: self.store_limit_gib.or(config.store_limit_gib),
            restore_limit_gib: self.restore_limit_gib.or(config.restore_limit_gib),
        }
    }

    /// The limits as the engine takes them.
    pub fn quota(&self) -> QuotaLimits {
        QuotaLimits {
            store_gib: self.store_limit_gib.unwrap_or(1_200),
            restore_gib: self.restore_limit_gib.unwrap_or(600),
        }
    }
}

fn parse_tag_spec(s: &str) -> Result<(bool, Tag)> {
    let (kind, tag) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("{s:?} is not image:KEY=VALUE or snapshot:KEY=VALUE"))?;
    let for_image = match kind {
        "image" => true,
        "snapshot" => false,
        other => bail!("resource type {other:?} is not image or snapshot"),
    };
    Ok((for_image, tag.parse()?))
}

fn parse_filter(s: &str) -> Result<(String, Vec<String>)> {
    let split = |v: &str| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    if let Some(rest) = s.strip_prefix("Name=") {
        let (name, values) = rest
            .split_once(",Values=")
            .ok_or_else(|| anyhow!("filter {s:?} is not Name=NAME,Values=V1,V2"))?;
        return Ok((name.to_owned(), split(values)));
    }
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("filter {s:?} is not NAME=VALUE[,VALUE…]"))?;
    Ok((name.to_owned(), split(values)))
}

/// Opens the embedded engine, failing cleanly any task an earlier process left
/// behind when it died.
/// Which adapters the embedded engine runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The data directory: image library, bucket folders, SQLite.
    Local,
    /// EC2, EBS direct APIs, S3 and DynamoDB (standard AWS configuration).
    Aws,
}

/// What a task command needs to run the engine here (ignored with
/// `--endpoint`, where the server's own settings apply).
#[derive(Args, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub backend: Backend,
}

/// DescribeTaskQuotas' arguments: only where the engine runs.
#[derive(Args)]
pub struct QuotaArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The backend options.
#[derive(Args, Clone, Debug)]
pub struct Backend {
    /// Where images, archives and tasks live.
    #[arg(
        long,
        help_heading = "Engine options",
        env = "AMISTORE_BACKEND",
        value_enum,
        default_value = "local"
    )]
    backend: BackendKind,
    #[cfg(feature = "aws")]
    #[command(flatten)]
    aws: crate::aws_backend::AwsArgs,
}

/// An open engine and the account it acts for.
enum Opened {
    Local(LocalEngine),
    #[cfg(feature = "aws")]
    Aws(crate::aws_backend::AwsEngine),
}

impl Opened {
    fn local(&self) -> &LocalEngine {
        match self {
            Opened::Local(l) => l,
            #[cfg(feature = "aws")]
            Opened::Aws(a) => &a.local,
        }
    }

    fn account(&self) -> AccountId {
        match self {
            Opened::Local(_) => AccountId::local_default(),
            #[cfg(feature = "aws")]
            Opened::Aws(a) => a.account.clone(),
        }
    }
}

/// Whether a command may change the state of tasks it did not start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// It only reads (describe): it changes nothing.
    ReadOnly,
    /// It changes one task or image it names (cancel, deregister), and no
    /// other.
    ChangesOne,
    /// It starts a task: first it fails the tasks of one-shot commands that
    /// died (their quota would otherwise stay in use).
    StartsTasks,
}

fn open(
    data_dir: &Path,
    limits: Limits,
    backend: &Backend,
    bar: Option<&Bar>,
    access: Access,
) -> Result<Opened> {
    let options = LocalOptions {
        limits: limits.quota(),
        ..LocalOptions::default()
    };
    let progress = bar.map(|b| {
        let handle = b.handle();
        Arc::new(move |_: &TaskId, bytes: u64| handle.inc(bytes)) as _
    });
    match backend.backend {
        BackendKind::Local => {
            let local = LocalEngine::open(data_dir, options, progress)?;
            if access == Access::StartsTasks {
                for task in local.recover(Recovery::Fail)? {
                    eprintln!(
                        "amistore: task {task} was interrupted when its command stopped; it is now Failed"
                    );
                }
            }
            Ok(Opened::Local(local))
        }
        #[cfg(feature = "aws")]
        BackendKind::Aws => Ok(Opened::Aws(crate::aws_backend::open(
            &backend.aws,
            data_dir,
            options,
            progress,
        )?)),
        #[cfg(not(feature = "aws"))]
        BackendKind::Aws => bail!(
            "this amistore was built without the AWS adapters; build one with `cargo build --release -p amistore --features aws`"
        ),
    }
}

fn wait_for(local: &LocalEngine, task: &Task) -> Result<Task> {
    let done = local.wait(&task.id)?;
    match done.state {
        TaskState::Completed => Ok(done),
        TaskState::Failed => bail!(
            "task {} failed: {}",
            done.id,
            done.failure_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ),
        TaskState::InProgress => bail!("task {} stopped while still in progress", done.id),
    }
}

pub fn store(
    args: StoreArgs,
    data_dir: &Path,
    limits: Limits,
    backend: &Backend,
    quiet: bool,
) -> Result<ExitCode> {
    let mut bar = Bar::new("storing", quiet);
    let opened = open(data_dir, limits, backend, Some(&bar), Access::StartsTasks)?;
    let (local, account) = (opened.local(), opened.account());
    let image = local
        .engine
        .catalog
        .describe_image(&account, &args.image_id)?;
    let mut present = 0;
    for s in &image.snapshots {
        present += local
            .engine
            .snapshots
            .list_blocks(&account, &s.snapshot_id)?
            .present_count()
            * BLOCK_SIZE;
    }
    let bucket = args.bucket.bucket.clone();
    let task = local
        .engine
        .create_store_task(
            &account,
            &StoreRequest {
                image_id: args.image_id,
                bucket: args.bucket,
                object_tags: args.object_tags,
            },
        )
        .map_err(|e| match e {
            amistore_core::Error::NotFound(m)
                if backend.backend == BackendKind::Local && m.message().starts_with("bucket ") =>
            {
                anyhow!("{m}; create it with `amistore bucket create {bucket}`")
            }
            other => other.into(),
        })?;
    bar.begin(present);
    let done = wait_for(local, &task)?;
    drop(bar);
    println!("{}", done.key);
    Ok(ExitCode::SUCCESS)
}

pub fn restore(
    args: RestoreArgs,
    data_dir: &Path,
    limits: Limits,
    backend: &Backend,
    quiet: bool,
) -> Result<ExitCode> {
    let mut bar = Bar::new("restoring", quiet);
    let opened = open(data_dir, limits, backend, Some(&bar), Access::StartsTasks)?;
    let (local, account) = (opened.local(), opened.account());
    let (image_tags, snapshot_tags): (Vec<_>, Vec<_>) =
        args.tags.into_iter().partition(|(i, _)| *i);
    let named = args.name.is_some();
    let task = local
        .engine
        .create_restore_task(
            &account,
            &RestoreRequest {
                bucket: args.bucket.clone(),
                key: args.object_key.clone(),
                name: args.name,
                image_tags: image_tags.into_iter().map(|(_, t)| t).collect(),
                snapshot_tags: snapshot_tags.into_iter().map(|(_, t)| t).collect(),
            },
        )
        .map_err(|e| match e {
            amistore_core::Error::AlreadyExists(m) if !named => anyhow!(
                "{m}; the restore takes the stored AMI's name unless given another: add --name NAME"
            ),
            other => other.into(),
        })?;
    // The object was opened by intake already; opening it again for the bar's
    // total costs one tail read.
    let objects = local.engine.objects.as_ref();
    if let Ok(Some(info)) = objects.head_object(&args.bucket, &args.object_key)
        && let Ok(index) = ArchiveIndex::open(&ObjectReader::new(
            objects,
            &args.bucket,
            &args.object_key,
            &info,
        ))
    {
        bar.begin(index.manifest().present_bytes());
    }
    let done = wait_for(local, &task).map_err(|e| {
        let damaged = ["is corrupt", "is malformed", "is truncated"]
            .iter()
            .any(|w| e.to_string().contains(w));
        if damaged && backend.backend == BackendKind::Local {
            let path = data_dir
                .join("s3")
                .join(args.bucket.as_str())
                .join(args.object_key.as_str());
            anyhow!(
                "{e}\nthe archive {}/{} is damaged; `amistore archive verify {}` checks every frame",
                args.bucket,
                args.object_key,
                path.display()
            )
        } else {
            e
        }
    })?;
    drop(bar);
    let image = done
        .image_id
        .ok_or_else(|| anyhow!("task {} completed without an image", done.id))?;
    println!("{image}");
    Ok(ExitCode::SUCCESS)
}

/// A task as the AWS CLI prints a describe item of its kind.
pub fn task_json(task: &Task, kind: TaskKind) -> Value {
    let (image, key, state, reason) = match kind {
        TaskKind::Store => (
            "AmiId",
            "S3objectKey",
            "StoreTaskState",
            "StoreTaskFailureReason",
        ),
        TaskKind::Restore => (
            "ImageId",
            "ObjectKey",
            "RestoreTaskState",
            "RestoreTaskFailureReason",
        ),
    };
    let mut item = json!({
        image: task.image_id.as_ref().map(|i| i.as_str()),
        "TaskStartTime": iso8601_millis(task.started_at_ms),
        "Bucket": task.bucket.as_str(),
        key: task.key.as_str(),
        "ProgressPercentage": task.progress_percent(),
        state: task.state.as_str(),
    });
    if let Some(r) = &task.failure_reason {
        item[reason] = json!(r);
    }
    item
}

/// The list a describe of `kind` answers with.
pub fn results_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Store => "StoreImageTaskResults",
        TaskKind::Restore => "RestoreImageTaskResults",
    }
}

/// DescribeStoreImageTasks or DescribeRestoreImageTasks over the data
/// directory.
pub fn describe_tasks(
    args: DescribeArgs,
    kind: TaskKind,
    data_dir: &Path,
    limits: Limits,
    backend: &Backend,
) -> Result<ExitCode> {
    let opened = open(data_dir, limits, backend, None, Access::ReadOnly)?;
    let (local, account) = (opened.local(), opened.account());
    let tasks = local.engine.tasks.list(&account, kind, now_ms())?;
    let page = describe(
        &local.engine.config.token_key,
        &account,
        kind,
        tasks,
        &DescribeQuery {
            image_ids: args.image_ids,
            filters: args.filters,
            max_results: args.max_results,
            next_token: args.next_token,
        },
    )?;
    let mut out = json!({
        results_name(kind): page.tasks.iter().map(|t| task_json(t, kind)).collect::<Vec<_>>(),
    });
    if let Some(token) = page.next_token {
        out["NextToken"] = json!(token);
    }
    crate::output::print_json(&out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub backend: Backend,
    /// The AMI whose store to cancel.
    #[arg(long)]
    pub image_id: ImageId,
    /// The bucket of the store to cancel [default: the AMI's newest store in
    /// progress].
    #[arg(long)]
    pub bucket: Option<BucketName>,
}

/// CancelStoreImageTask over the data directory: the task ends Failed
/// ("cancelled"), its upload aborted; prints the task.
pub fn cancel_store(
    args: CancelArgs,
    data_dir: &Path,
    limits: Limits,
    backend: &Backend,
) -> Result<ExitCode> {
    let opened = open(data_dir, limits, backend, None, Access::ChangesOne)?;
    let (local, account) = (opened.local(), opened.account());
    let task = local
        .engine
        .cancel_store(&account, &args.image_id, args.bucket.as_ref())?;
    crate::output::print_json(
        &json!({ "StoreImageTaskResult": task_json(&task, TaskKind::Store) }),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DeregisterArgs {
    #[command(flatten)]
    pub backend: Backend,
    /// The AMI to deregister (a failed restore's, say, to free its name).
    #[arg(long)]
    pub image_id: ImageId,
}

/// DeregisterImage over the data directory (its snapshots go with it).
pub fn deregister(
    args: DeregisterArgs,
    data_dir: &Path,
    limits: Limits,
    backend: &Backend,
) -> Result<ExitCode> {
    let opened = open(data_dir, limits, backend, None, Access::ChangesOne)?;
    let (local, account) = (opened.local(), opened.account());
    local
        .engine
        .catalog
        .deregister_image(&account, &args.image_id)?;
    Ok(ExitCode::SUCCESS)
}

/// The quota a kind of task counts against, as JSON.
pub fn quota_json(kind: TaskKind, in_progress_gib: u64, limit_gib: u64) -> Value {
    json!({
        "TaskType": kind.as_str(),
        "InProgressGiB": in_progress_gib,
        "LimitGiB": limit_gib,
    })
}

/// The account's in-progress quotas over the data directory.
pub fn describe_quotas(data_dir: &Path, limits: Limits, backend: &Backend) -> Result<ExitCode> {
    let opened = open(data_dir, limits, backend, None, Access::ReadOnly)?;
    let (local, account) = (opened.local(), opened.account());
    let quotas: Vec<Value> = [TaskKind::Store, TaskKind::Restore]
        .into_iter()
        .map(|kind| {
            Ok(quota_json(
                kind,
                local.engine.tasks.in_progress_gib(&account, kind)?,
                local.engine.config.limits.for_kind(kind),
            ))
        })
        .collect::<Result<_>>()?;
    crate::output::print_json(&json!({ "TaskQuotas": quotas }))?;
    Ok(ExitCode::SUCCESS)
}
