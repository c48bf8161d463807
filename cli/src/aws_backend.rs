//! `--backend aws`: the embedded engine over the AWS adapters instead of the
//! data directory's. Images and snapshots are EC2's and EBS's, archives go to
//! S3, tasks live in a DynamoDB table; the workflows still run in this process
//! (the same state machine files). Standard AWS configuration applies
//! (profiles, `AWS_REGION`, `AWS_ENDPOINT_URL` for an emulator).

use std::path::Path;
use std::sync::Arc;

use amistore_aws::{AwsPorts, AwsSettings};
use amistore_core::engine::ProgressSink;
use amistore_core::ids::AccountId;
use amistore_core::storage::BucketName;
use amistore_local::embedded::{LocalEngine, LocalOptions, Ports};
use anyhow::{Context, Result};
use clap::Args;

/// Where the AWS backend keeps its state.
#[derive(Args, Clone, Debug)]
pub struct AwsArgs {
    /// DynamoDB table for tasks (created, with its index and TTL, if missing).
    #[arg(
        long,
        help_heading = "Engine options",
        env = "AMISTORE_TABLE",
        default_value = "amistore-tasks",
        value_name = "NAME"
    )]
    aws_table: String,
    /// S3 bucket for plans between workflow steps (must exist).
    #[arg(
        long,
        help_heading = "Engine options",
        env = "AMISTORE_WORK_BUCKET",
        value_name = "BUCKET"
    )]
    aws_work_bucket: Option<BucketName>,
}

/// The engine over AWS, and the runtime its adapters block on (dropped last).
pub struct AwsEngine {
    /// The engine; the data directory holds only spool files and the token key.
    pub local: LocalEngine,
    /// The account the credentials act as.
    pub account: AccountId,
    _runtime: tokio::runtime::Runtime,
}

/// Connects to AWS (or the emulator `AWS_ENDPOINT_URL` names).
pub fn open(
    args: &AwsArgs,
    data_dir: &Path,
    mut options: LocalOptions,
    progress: Option<ProgressSink>,
) -> Result<AwsEngine> {
    let work = args.aws_work_bucket.clone().context(
        "--backend aws needs a work bucket: pass --aws-work-bucket or set AMISTORE_WORK_BUCKET",
    )?;
    options.work_bucket = Some(work.clone());
    let settings = AwsSettings::new(args.aws_table.clone(), work);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the AWS client runtime")?;
    let ports = runtime
        .block_on(AwsPorts::connect(&settings, runtime.handle().clone()))
        .context("connecting to AWS")?;
    ports
        .tasks
        .ensure_table()
        .with_context(|| format!("preparing table {}", args.aws_table))?;
    let account = ports.account.clone();
    let local = LocalEngine::open_with(data_dir, options, progress, |_| Ports {
        catalog: ports.images.clone(),
        snapshots: ports.images.clone(),
        objects: ports.objects.clone(),
        work: ports.objects.clone() as Arc<dyn amistore_core::ports::ObjectStore>,
        tasks: ports.tasks.clone(),
        runner: None,
    })?;
    Ok(AwsEngine {
        local,
        account,
        _runtime: runtime,
    })
}
