//! Building the adapters from standard AWS configuration (environment,
//! profiles, `AWS_ENDPOINT_URL`, instance and Lambda roles) plus amistore's own
//! settings.

use std::sync::Arc;
use std::time::Duration;

use amistore_core::ids::AccountId;
use amistore_core::storage::BucketName;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use tokio::runtime::Handle;

use crate::bridge::Bridge;
use crate::dynamodb::DynamoTaskStore;
use crate::ebs::EbsLimits;
use crate::ec2::Ec2Images;
use crate::error::SetupError;
use crate::s3::S3ObjectStore;
use crate::sfn::StepFunctionsRunner;

/// amistore's settings on AWS. [`AwsSettings::from_env`] reads them from the
/// environment the template gives each function.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The DynamoDB table (`AMISTORE_TABLE`).
    pub table: String,
    /// The bucket for plans and Map item lists (`AMISTORE_WORK_BUCKET`).
    pub work_bucket: BucketName,
    /// The store state machine's ARN (`AMISTORE_STORE_STATE_MACHINE`); with the
    /// restore one, tasks run on Step Functions.
    pub store_machine: Option<String>,
    /// The restore state machine's ARN (`AMISTORE_RESTORE_STATE_MACHINE`).
    pub restore_machine: Option<String>,
    /// The account the credentials act as (`AMISTORE_ACCOUNT_ID`); asked of STS
    /// when not given.
    pub account: Option<AccountId>,
    /// EBS request limits (`AMISTORE_EBS_CONCURRENCY`,
    /// `AMISTORE_EBS_REQUESTS_PER_SECOND`, `AMISTORE_SNAPSHOT_TIMEOUT_MINUTES`).
    pub ebs: EbsLimits,
    /// Overrides of the standard configuration (tests against an emulator).
    pub overrides: Overrides,
}

/// What may replace the standard AWS configuration's choices. Unset fields
/// keep them (`AWS_ENDPOINT_URL`, `AWS_REGION`, the credential chain).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Endpoint for every service (an emulator's URL).
    pub endpoint_url: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Static access key and secret.
    pub credentials: Option<(String, String)>,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parsed<T: std::str::FromStr>(name: &'static str) -> Result<Option<T>, SetupError>
where
    T::Err: std::fmt::Display,
{
    var(name)
        .map(|v| {
            v.parse().map_err(|e: T::Err| SetupError::Invalid {
                name,
                reason: format!("{v:?}: {e}"),
            })
        })
        .transpose()
}

impl AwsSettings {
    /// Settings for `table` and `work_bucket`, defaults otherwise.
    pub fn new(table: impl Into<String>, work_bucket: BucketName) -> Self {
        Self {
            table: table.into(),
            work_bucket,
            store_machine: None,
            restore_machine: None,
            account: None,
            ebs: EbsLimits::default(),
            overrides: Overrides::default(),
        }
    }

    /// Settings from the environment.
    pub fn from_env() -> Result<Self, SetupError> {
        let table = var("AMISTORE_TABLE").ok_or(SetupError::Missing("AMISTORE_TABLE"))?;
        let work_bucket =
            parsed("AMISTORE_WORK_BUCKET")?.ok_or(SetupError::Missing("AMISTORE_WORK_BUCKET"))?;
        let defaults = EbsLimits::default();
        let ebs = EbsLimits {
            concurrency: parsed("AMISTORE_EBS_CONCURRENCY")?.unwrap_or(defaults.concurrency),
            requests_per_second: parsed("AMISTORE_EBS_REQUESTS_PER_SECOND")?
                .unwrap_or(defaults.requests_per_second),
            snapshot_timeout_minutes: parsed("AMISTORE_SNAPSHOT_TIMEOUT_MINUTES")?
                .unwrap_or(defaults.snapshot_timeout_minutes),
        };
        if !(10..=4320).contains(&ebs.snapshot_timeout_minutes) {
            return Err(SetupError::Invalid {
                name: "AMISTORE_SNAPSHOT_TIMEOUT_MINUTES",
                reason: "EBS takes 10 to 4320 minutes".into(),
            });
        }
        Ok(Self {
            table,
            work_bucket,
            store_machine: var("AMISTORE_STORE_STATE_MACHINE"),
            restore_machine: var("AMISTORE_RESTORE_STATE_MACHINE"),
            account: parsed("AMISTORE_ACCOUNT_ID")?,
            ebs,
            overrides: Overrides::default(),
        })
    }
}

/// The adapters, built once per process.
#[derive(Clone, Debug)]
pub struct AwsPorts {
    /// Images, snapshots and their blocks.
    pub images: Arc<Ec2Images>,
    /// S3.
    pub objects: Arc<S3ObjectStore>,
    /// The task table.
    pub tasks: Arc<DynamoTaskStore>,
    /// Step Functions, when both state machines are configured.
    pub runner: Option<Arc<StepFunctionsRunner>>,
    /// The account the credentials act as.
    pub account: AccountId,
}

impl AwsPorts {
    /// Loads the standard AWS configuration and builds every adapter; the
    /// adapters block on `runtime` (see [`Bridge`]).
    pub async fn connect(settings: &AwsSettings, runtime: Handle) -> Result<Self, SetupError> {
        let o = &settings.overrides;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(url) = &o.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &o.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some((key, secret)) = &o.credentials {
            loader = loader.credentials_provider(aws_sdk_sts::config::Credentials::new(
                key,
                secret,
                None,
                None,
                "amistore-settings",
            ));
        }
        let config = loader
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .load()
            .await;
        let emulated = config.endpoint_url().is_some();
        let account = match &settings.account {
            Some(a) => a.clone(),
            None => {
                let sts = aws_sdk_sts::Client::new(&config);
                let who = sts.get_caller_identity().send().await.map_err(|e| {
                    SetupError::Identity(
                        aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                    )
                })?;
                who.account()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e: amistore_core::Error| SetupError::Identity(e.to_string()))?
            }
        };
        // An endpoint override (an emulator) serves buckets by path, not by host.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(emulated)
                .build(),
        );
        // Block requests: adaptive retry adds client-side rate limiting when EBS
        // throttles, on top of exponential backoff with full jitter.
        let ebs = aws_sdk_ebs::Client::from_conf(
            aws_sdk_ebs::config::Builder::from(&config)
                .retry_config(
                    RetryConfig::adaptive()
                        .with_max_attempts(8)
                        .with_initial_backoff(Duration::from_millis(100))
                        .with_max_backoff(Duration::from_secs(20)),
                )
                .build(),
        );
        let bridge = Bridge::new(runtime);
        let runner = match (&settings.store_machine, &settings.restore_machine) {
            (Some(store), Some(restore)) => Some(Arc::new(StepFunctionsRunner::new(
                aws_sdk_sfn::Client::new(&config),
                bridge.clone(),
                store,
                restore,
            ))),
            _ => None,
        };
        Ok(Self {
            images: Arc::new(Ec2Images::new(
                aws_sdk_ec2::Client::new(&config),
                ebs,
                bridge.clone(),
                account.clone(),
                settings.ebs,
            )),
            objects: Arc::new(S3ObjectStore::new(s3, bridge.clone())),
            tasks: Arc::new(DynamoTaskStore::new(
                aws_sdk_dynamodb::Client::new(&config),
                bridge,
                &settings.table,
            )),
            runner,
            account,
        })
    }
}
