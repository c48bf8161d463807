//! The engine a function runs: the AWS adapters plus settings from the
//! environment the template sets.

use std::path::PathBuf;
use std::sync::Arc;

use amistore_aws::{AwsPorts, AwsSettings, SetupError};
use amistore_core::engine::{Engine, EngineConfig};
use amistore_core::task::QuotaLimits;
use sha2::{Digest, Sha256};

/// The engine and the account the functions run in.
pub struct Deployment {
    /// The engine over the AWS adapters.
    pub engine: Arc<Engine>,
    /// The account the functions' role belongs to.
    pub account: amistore_core::ids::AccountId,
}

/// Builds the engine from the environment: the [`AwsSettings`] variables, plus
/// `AMISTORE_STORE_LIMIT_GIB`, `AMISTORE_RESTORE_LIMIT_GIB` (quotas),
/// `AMISTORE_TOKEN_SECRET` (keys NextToken MACs; every function must share it)
/// and `AMISTORE_UNIT_THREADS`.
pub async fn connect() -> Result<Deployment, SetupError> {
    let settings = AwsSettings::from_env()?;
    let ports = AwsPorts::connect(&settings, tokio::runtime::Handle::current()).await?;
    let runner: Arc<dyn amistore_core::ports::WorkflowRunner> = match ports.runner.clone() {
        Some(r) => r,
        None => Arc::new(NoWorkflows),
    };
    let secret = std::env::var("AMISTORE_TOKEN_SECRET")
        .ok()
        .filter(|s| s.len() >= 16)
        .ok_or(SetupError::Missing(
            "AMISTORE_TOKEN_SECRET (16 characters or more)",
        ))?;
    let mut config = EngineConfig::new(
        settings.work_bucket.clone(),
        PathBuf::from("/tmp/amistore-spool"),
        Sha256::digest(secret.as_bytes()).into(),
    );
    let defaults = QuotaLimits::default();
    config.limits = QuotaLimits {
        store_gib: number("AMISTORE_STORE_LIMIT_GIB")?.unwrap_or(defaults.store_gib),
        restore_gib: number("AMISTORE_RESTORE_LIMIT_GIB")?.unwrap_or(defaults.restore_gib),
    };
    if let Some(threads) = number("AMISTORE_UNIT_THREADS")? {
        config.unit_threads = threads.max(1) as usize;
    }
    let account = ports.account.clone();
    let engine = Arc::new(Engine {
        catalog: ports.images.clone(),
        snapshots: ports.images,
        objects: ports.objects.clone(),
        work: ports.objects,
        tasks: ports.tasks,
        runner,
        config,
        progress: None,
    });
    Ok(Deployment { engine, account })
}

fn number(name: &'static str) -> Result<Option<u64>, SetupError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e| SetupError::Invalid {
            name,
            reason: format!("{v:?}: {e}"),
        }),
        _ => Ok(None),
    }
}

/// The runner of a function that starts no workflows (the steps, describe):
/// asking it to start one is a configuration error, not a silent no-op.
struct NoWorkflows;

impl amistore_core::ports::WorkflowRunner for NoWorkflows {
    fn start(
        &self,
        _kind: amistore_core::task::TaskKind,
        task: &amistore_core::ids::TaskId,
    ) -> amistore_core::Result<()> {
        Err(amistore_core::Error::InvalidInput(format!(
            "this function has no state machines configured, so cannot start {task}"
        )))
    }

    fn status(
        &self,
        _kind: amistore_core::task::TaskKind,
        _task: &amistore_core::ids::TaskId,
    ) -> amistore_core::Result<amistore_core::ports::ExecutionStatus> {
        Err(amistore_core::Error::InvalidInput(
            "this function has no state machines configured".into(),
        ))
    }

    fn stop(
        &self,
        kind: amistore_core::task::TaskKind,
        task: &amistore_core::ids::TaskId,
        _cause: &str,
    ) -> amistore_core::Result<()> {
        self.start(kind, task)
    }
}
