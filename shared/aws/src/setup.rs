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

use crate::audit::{Audit, AuditInterceptor};
use crate::bridge::Bridge;
use crate::error::{AwsCallError, SetupError};
use crate::images::Ec2Images;
use crate::images::ebs_requests::EbsLimits;
use crate::object_store::S3ObjectStore;
use crate::task_store::DynamoTaskStore;
use crate::workflow_runner::StepFunctionsRunner;

/// Credentials and a region as the AWS CLI and SDKs find them, for a client
/// that signs its own requests (the `amistore` CLI's remote mode).
#[derive(Clone)]
pub struct CallerCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
    /// The region the same configuration names, if it names one.
    pub region: Option<String>,
}

impl std::fmt::Debug for CallerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The caller's credentials from the SDK's default chain: the environment,
/// then the shared `config` and `credentials` files under `AWS_PROFILE`
/// (static keys, `credential_process`, IAM Identity Center, assumed roles),
/// web identity, the container's and the instance's roles; and the region
/// from `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile.
pub async fn caller_credentials() -> Result<CallerCredentials, SetupError> {
    use aws_sdk_sts::config::ProvideCredentials;
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let provider = config
        .credentials_provider()
        .ok_or_else(|| SetupError::Credentials("no credentials provider is configured".into()))?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| SetupError::Credentials(e.into()))?;
    Ok(CallerCredentials {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        session_token: credentials.session_token().map(str::to_owned),
        region: config.region().map(|r| r.to_string()),
    })
}

/// amistore's settings on AWS (a Lambda function reads them from the
/// environment the template gives it; the CLI from its flags).
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
    /// EBS request limits.
    pub ebs: EbsLimits,
    /// Most units one execution transfers at once (its Map's concurrency,
    /// passed in the execution's input).
    pub unit_concurrency: u32,
    /// Overrides of the standard configuration (tests against an emulator).
    pub overrides: Overrides,
}

/// What may replace the standard AWS configuration's choices. Unset fields
/// keep them (`AWS_ENDPOINT_URL`, `AWS_REGION`, the credential chain).
#[derive(Clone, Default)]
pub struct Overrides {
    /// Endpoint for every service (an emulator's URL).
    pub endpoint_url: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Static access key and secret.
    pub credentials: Option<(String, String)>,
    /// Receives the IAM permissions every request needs (the tests check
    /// them against the template's roles; see [`crate::audit`]).
    pub audit: Option<Arc<dyn Audit>>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("credentials", &self.credentials.as_ref().map(|(k, _)| k))
            .field("audit", &self.audit.is_some())
            .finish()
    }
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
            unit_concurrency: 16,
            overrides: Overrides::default(),
        }
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
    secrets: aws_sdk_secretsmanager::Client,
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
                let who = sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| SetupError::Identity(AwsCallError::new(e).into()))?;
                who.account()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e: amistore_core::Error| SetupError::Identity(e.into()))?
            }
        };
        let audit = o.audit.as_ref().map(|a| {
            let region = config.region().map(|r| r.to_string()).unwrap_or_default();
            AuditInterceptor::new(a.clone(), &region, account.as_str())
        });
        // Every client, audited when asked: one macro, as the service config
        // builders share no trait.
        macro_rules! client {
            ($sdk:ident, $builder:expr) => {{
                let mut builder = $builder;
                if let Some(a) = &audit {
                    builder = builder.interceptor(a.clone());
                }
                $sdk::Client::from_conf(builder.build())
            }};
        }
        // An endpoint override (an emulator) serves buckets by path, not by host.
        let s3 = client!(
            aws_sdk_s3,
            aws_sdk_s3::config::Builder::from(&config).force_path_style(emulated)
        );
        // Block requests: adaptive retry adds client-side rate limiting when EBS
        // throttles, on top of exponential backoff with full jitter.
        let ebs = client!(
            aws_sdk_ebs,
            aws_sdk_ebs::config::Builder::from(&config).retry_config(
                RetryConfig::adaptive()
                    .with_max_attempts(8)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(20)),
            )
        );
        let bridge = Bridge::new(runtime);
        let runner = match (&settings.store_machine, &settings.restore_machine) {
            (Some(store), Some(restore)) => Some(Arc::new(StepFunctionsRunner::new(
                client!(aws_sdk_sfn, aws_sdk_sfn::config::Builder::from(&config)),
                bridge.clone(),
                store,
                restore,
                settings.unit_concurrency,
            ))),
            _ => None,
        };
        Ok(Self {
            images: Arc::new(Ec2Images::new(
                client!(aws_sdk_ec2, aws_sdk_ec2::config::Builder::from(&config)),
                ebs,
                bridge.clone(),
                account.clone(),
                settings.ebs,
            )),
            objects: Arc::new(S3ObjectStore::new(s3, bridge.clone())),
            tasks: Arc::new(DynamoTaskStore::new(
                client!(
                    aws_sdk_dynamodb,
                    aws_sdk_dynamodb::config::Builder::from(&config)
                ),
                bridge,
                &settings.table,
            )),
            runner,
            secrets: client!(
                aws_sdk_secretsmanager,
                aws_sdk_secretsmanager::config::Builder::from(&config)
            ),
            account,
        })
    }

    /// A secret's string value (Secrets Manager GetSecretValue).
    pub async fn read_secret(&self, arn: &str) -> Result<String, SetupError> {
        let out = self
            .secrets
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| SetupError::Secret {
                arn: arn.to_owned(),
                source: AwsCallError::new(e).into(),
            })?;
        out.secret_string.ok_or_else(|| SetupError::Secret {
            arn: arn.to_owned(),
            source: "it holds no string".into(),
        })
    }
}
