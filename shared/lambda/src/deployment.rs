//! The engine a function runs: the AWS adapters plus settings from the
//! environment the template gives that function, and nothing else.
//!
//! [`Config::from_lookup`] reads exactly [`Function::environment`]'s
//! variables (a test proves it reads no other), and the template check
//! compares that list with what `infra/template.yaml` sets. The NextToken key
//! is not in any environment: the describe function reads it from Secrets
//! Manager at cold start.

use std::path::PathBuf;
use std::sync::Arc;

use amistore_aws::{AwsPorts, AwsSettings, EbsLimits, Overrides, SetupError};
use amistore_core::engine::budget::RequestBudget;
use amistore_core::engine::{Engine, EngineConfig};
use amistore_core::ids::AccountId;
use amistore_core::storage::BucketName;
use amistore_core::task::QuotaLimits;
use sha2::{Digest, Sha256};

use crate::function::Function;

/// How long a task may go without an execution before the sweeper fails it, by
/// default: intake starts the execution right after admitting the task.
pub const DEFAULT_SWEEP_GRACE_MS: i64 = 5 * 60 * 1000;

/// What a function's environment says.
#[derive(Debug, Clone)]
pub struct Config {
    /// The function.
    pub function: Function,
    /// The adapters' settings.
    pub aws: AwsSettings,
    /// Admission limits (functions that start tasks).
    pub limits: QuotaLimits,
    /// The secret keying NextToken MACs (the describe function).
    pub token_secret_arn: Option<String>,
    /// The sweeper's grace for tasks without an execution.
    pub sweep_grace_ms: i64,
    /// The account's EBS block-request budget its units share (chunk transfer).
    pub ebs_budget: Option<RequestBudget>,
}

/// Reads a function's variables, refusing (in debug builds) any it does not
/// declare, so the declared list stays the truth.
struct Env<'a> {
    function: Function,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, name: &'static str) -> Option<String> {
        debug_assert!(
            self.function.environment().contains(&name),
            "{} reads {name}, which Function::environment does not list",
            self.function
        );
        (self.lookup)(name).filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, SetupError> {
        self.get(name).ok_or(SetupError::Missing(name))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, SetupError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|e: T::Err| SetupError::Invalid {
                    name,
                    reason: format!("{v:?}: {e}"),
                })
            })
            .transpose()
    }
}

impl Config {
    /// The configuration of `function` from its environment.
    pub fn from_env(function: Function) -> Result<Self, SetupError> {
        Self::from_lookup(function, &|name| std::env::var(name).ok())
    }

    /// The configuration of `function`, reading its variables through `lookup`.
    pub fn from_lookup(
        function: Function,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let env = Env { function, lookup };
        let work_bucket: BucketName = env
            .parsed("AMISTORE_WORK_BUCKET")?
            .ok_or(SetupError::Missing("AMISTORE_WORK_BUCKET"))?;
        let mut aws = AwsSettings::new(env.required("AMISTORE_TABLE")?, work_bucket);
        aws.account = env.parsed("AMISTORE_ACCOUNT_ID")?;
        let mut limits = QuotaLimits::default();
        if function.starts_tasks() {
            aws.store_machine = Some(env.required("AMISTORE_STORE_STATE_MACHINE")?);
            aws.restore_machine = Some(env.required("AMISTORE_RESTORE_STATE_MACHINE")?);
            limits.store_gib = env
                .parsed("AMISTORE_STORE_LIMIT_GIB")?
                .unwrap_or(limits.store_gib);
            limits.restore_gib = env
                .parsed("AMISTORE_RESTORE_LIMIT_GIB")?
                .unwrap_or(limits.restore_gib);
            let per_task: u32 = env
                .parsed("AMISTORE_UNITS_PER_TASK")?
                .unwrap_or(aws.unit_concurrency);
            let reserved: u32 = env
                .parsed("AMISTORE_RESERVED_UNIT_CONCURRENCY")?
                .unwrap_or(0);
            // One task never asks for more units at once than chunk-transfer
            // may run at all (its reserved concurrency, when one is set).
            aws.unit_concurrency = match reserved {
                0 => per_task,
                r => per_task.min(r),
            }
            .max(1);
        }
        if function == Function::ChunkTransfer {
            let defaults = EbsLimits::default();
            aws.ebs = EbsLimits {
                concurrency: env
                    .parsed("AMISTORE_EBS_CONCURRENCY")?
                    .unwrap_or(defaults.concurrency),
                requests_per_second: env
                    .parsed("AMISTORE_EBS_REQUESTS_PER_SECOND")?
                    .unwrap_or(defaults.requests_per_second),
                ..defaults
            };
        }
        let ebs_budget = match function {
            Function::ChunkTransfer => Some(RequestBudget {
                // EBS's default quota, per API (L-C125AE42, L-AFAE1BE8).
                account_per_second: env
                    .parsed("AMISTORE_EBS_ACCOUNT_REQUESTS_PER_SECOND")?
                    .unwrap_or(1000),
                unit_per_second: aws.ebs.requests_per_second,
            }),
            _ => None,
        };
        let token_secret_arn = match function {
            Function::Describe => Some(env.required("AMISTORE_TOKEN_SECRET_ARN")?),
            _ => None,
        };
        let sweep_grace_ms = match function {
            Function::Sweeper => env
                .parsed::<i64>("AMISTORE_SWEEP_GRACE_SECONDS")?
                .map_or(DEFAULT_SWEEP_GRACE_MS, |s| s * 1000),
            _ => DEFAULT_SWEEP_GRACE_MS,
        };
        Ok(Self {
            function,
            aws,
            limits,
            token_secret_arn,
            sweep_grace_ms,
            ebs_budget,
        })
    }
}

/// The engine a function runs, and what it needs besides.
pub struct Deployment {
    /// The function.
    pub function: Function,
    /// The engine over the AWS adapters.
    pub engine: Arc<Engine>,
    /// The account the functions' role belongs to.
    pub account: AccountId,
    /// The sweeper's grace for tasks without an execution.
    pub sweep_grace_ms: i64,
}

/// Builds `function`'s engine from its environment (once per cold start).
pub async fn connect(function: Function) -> Result<Deployment, SetupError> {
    connect_with(Config::from_env(function)?, Overrides::default()).await
}

/// Builds the engine `config` describes; `overrides` replace the standard
/// AWS configuration's choices (tests point them at an emulator).
pub async fn connect_with(
    mut config: Config,
    overrides: Overrides,
) -> Result<Deployment, SetupError> {
    config.aws.overrides = overrides;
    let ports = AwsPorts::connect(&config.aws, tokio::runtime::Handle::current()).await?;
    let runner: Arc<dyn amistore_core::ports::WorkflowRunner> = match ports.runner.clone() {
        Some(r) => r,
        None => Arc::new(NoWorkflows),
    };
    // NextTokens are MACed with the shared secret; a function that serves no
    // describe gets a key of its own, so it could never accept a token.
    let token_key: [u8; 32] = match &config.token_secret_arn {
        Some(arn) => {
            let secret = ports.read_secret(arn).await?;
            if secret.len() < 16 {
                return Err(SetupError::Invalid {
                    name: "AMISTORE_TOKEN_SECRET_ARN",
                    reason: "the secret is shorter than 16 characters".into(),
                });
            }
            Sha256::digest(secret.as_bytes()).into()
        }
        None => Sha256::digest(amistore_core::ids::unique_token().as_bytes()).into(),
    };
    let mut engine_config = EngineConfig::new(
        config.aws.work_bucket.clone(),
        PathBuf::from("/tmp/amistore-spool"),
        token_key,
    );
    engine_config.limits = config.limits;
    engine_config.ebs_budget = config.ebs_budget;
    let account = ports.account.clone();
    let engine = Arc::new(Engine {
        catalog: ports.images.clone(),
        snapshots: ports.images,
        objects: ports.objects.clone(),
        work: ports.objects,
        tasks: ports.tasks,
        runner,
        config: engine_config,
        progress: None,
        moved: Default::default(),
    });
    Ok(Deployment {
        function: config.function,
        engine,
        account,
        sweep_grace_ms: config.sweep_grace_ms,
    })
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
        Err(amistore_core::Error::InvalidInput(
            format!("this function has no state machines configured, so cannot start {task}")
                .into(),
        ))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;

    fn sample(name: &str) -> String {
        match name {
            "AMISTORE_WORK_BUCKET" => "work-bucket".into(),
            "AMISTORE_ACCOUNT_ID" => "123456789012".into(),
            n if n.ends_with("STATE_MACHINE") => {
                "arn:aws:states:us-east-1:123456789012:stateMachine:m".into()
            }
            "AMISTORE_TOKEN_SECRET_ARN" => "arn:aws:secretsmanager:us-east-1:1:secret:s".into(),
            "AMISTORE_TABLE" => "tasks".into(),
            _ => "7".into(),
        }
    }

    #[test]
    fn each_function_reads_exactly_the_variables_it_declares() {
        for function in Function::ALL {
            let read = Mutex::new(BTreeSet::new());
            let config = Config::from_lookup(function, &|name| {
                read.lock().unwrap().insert(name.to_owned());
                Some(sample(name))
            })
            .unwrap();
            let declared: BTreeSet<String> = function
                .environment()
                .iter()
                .map(|s| s.to_string())
                .collect();
            assert_eq!(read.into_inner().unwrap(), declared, "{function}");
            assert_eq!(config.function, function);
        }
    }

    #[test]
    fn a_task_asks_for_no_more_units_than_chunk_transfer_may_run() {
        let with = |per_task: &'static str, reserved: &'static str| {
            Config::from_lookup(Function::Intake, &move |name| {
                Some(match name {
                    "AMISTORE_UNITS_PER_TASK" => per_task.to_owned(),
                    "AMISTORE_RESERVED_UNIT_CONCURRENCY" => reserved.to_owned(),
                    n => sample(n),
                })
            })
            .unwrap()
            .aws
            .unit_concurrency
        };
        assert_eq!(with("16", "0"), 16, "no reservation: as asked");
        assert_eq!(with("16", "10"), 10, "never more than reserved");
        assert_eq!(with("4", "10"), 4);
    }

    #[test]
    fn missing_and_bad_values_are_named() {
        let err = Config::from_lookup(Function::Describe, &|name| {
            (name != "AMISTORE_TOKEN_SECRET_ARN").then(|| sample(name))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("AMISTORE_TOKEN_SECRET_ARN"),
            "{err}"
        );
        let err = Config::from_lookup(Function::Sweeper, &|name| {
            Some(match name {
                "AMISTORE_SWEEP_GRACE_SECONDS" => "soon".into(),
                n => sample(n),
            })
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("AMISTORE_SWEEP_GRACE_SECONDS"),
            "{err}"
        );
    }
}
