//! The task commands' remote mode (`--endpoint URL`): the same commands, sent to
//! an amistore server (or any EC2-compatible endpoint) instead of run in this
//! process, signed with the usual AWS credentials (`AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else `~/.aws/credentials`
//! under `AWS_PROFILE` or `default`) for `AWS_REGION` / `AWS_DEFAULT_REGION`
//! (default `us-east-1`).

use std::process::ExitCode;
use std::time::Duration;

use amistore_api::client::{ClientCredentials, Endpoint, call};
use amistore_api::xml::{items, text_of};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::progress::Bar;
use crate::task_cmd::{
    CancelArgs, DeregisterArgs, DescribeArgs, RestoreArgs, StoreArgs, quota_json, results_name,
};
use amistore_core::task::TaskKind;
use amistore_local::Progress;

/// A server to send the task commands to.
pub struct Remote {
    endpoint: Endpoint,
    credentials: ClientCredentials,
    region: String,
}

fn from_credentials_file(profile: &str) -> Option<ClientCredentials> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut in_profile = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
        } else if in_profile && let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "aws_access_key_id" => key = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(ClientCredentials {
        access_key: key?,
        secret: secret?,
        session_token: token,
    })
}

impl Remote {
    /// The server at `url`, with credentials and region from the environment.
    pub fn new(url: &str) -> Result<Self> {
        let endpoint = Endpoint::parse(url).map_err(|e| anyhow!(e))?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key), Some(secret)) => ClientCredentials {
                access_key,
                secret,
                session_token: env("AWS_SESSION_TOKEN"),
            },
            _ => {
                let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
                from_credentials_file(&profile).ok_or_else(|| {
                    anyhow!("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile {profile:?} in ~/.aws/credentials")
                })?
            }
        };
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        Ok(Self {
            endpoint,
            credentials,
            region,
        })
    }

    fn call(&self, action: &str, params: Vec<(String, String)>) -> Result<String> {
        call(
            &self.endpoint,
            &self.credentials,
            &self.region,
            action,
            &params,
        )
        .map_err(|e| anyhow!("{}", e.message))
    }

    /// Follows the task of `image` through `describe` until it ends, with a
    /// percentage bar; fails if it failed.
    fn wait(
        &self,
        describe: &str,
        list: &str,
        image: &str,
        state_tag: &str,
        reason_tag: &str,
        bar: &mut Bar,
    ) -> Result<()> {
        bar.begin(100);
        let mut shown = 0u64;
        loop {
            let doc = self.call(describe, vec![("ImageId.1".into(), image.into())])?;
            let item = items(&doc, list)
                .first()
                .map(|s| s.to_string())
                .ok_or_else(|| anyhow!("the server shows no task for {image}"))?;
            let percent: u64 = text_of(&item, "progressPercentage")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            bar.advance(percent.saturating_sub(shown));
            shown = shown.max(percent);
            match text_of(&item, state_tag).as_deref() {
                Some("Completed") => return Ok(()),
                Some("Failed") => bail!(
                    "the task failed: {}",
                    text_of(&item, reason_tag).unwrap_or_else(|| "no reason given".into())
                ),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    pub fn store(&self, args: StoreArgs, wait: bool, quiet: bool) -> Result<ExitCode> {
        let mut params = vec![
            ("ImageId".to_owned(), args.image_id.to_string()),
            ("Bucket".to_owned(), args.bucket.to_string()),
        ];
        for (i, tag) in args.object_tags.iter().enumerate() {
            params.push((format!("S3ObjectTag.{}.Key", i + 1), tag.key().to_owned()));
            params.push((
                format!("S3ObjectTag.{}.Value", i + 1),
                tag.value().to_owned(),
            ));
        }
        let doc = self.call("CreateStoreImageTask", params)?;
        let key = text_of(&doc, "objectKey").context("the answer has no objectKey")?;
        if wait {
            let mut bar = Bar::percent("storing", quiet);
            self.wait(
                "DescribeStoreImageTasks",
                "storeImageTaskResultSet",
                args.image_id.as_str(),
                "storeTaskState",
                "storeTaskFailureReason",
                &mut bar,
            )?;
        }
        println!("{key}");
        Ok(ExitCode::SUCCESS)
    }

    pub fn restore(&self, args: RestoreArgs, wait: bool, quiet: bool) -> Result<ExitCode> {
        let mut params = vec![
            ("Bucket".to_owned(), args.bucket.to_string()),
            ("ObjectKey".to_owned(), args.object_key.to_string()),
        ];
        if let Some(name) = &args.name {
            params.push(("Name".into(), name.to_string()));
        }
        let mut n = 0;
        for (resource, for_image) in [("image", true), ("snapshot", false)] {
            let tags: Vec<_> = args
                .tags
                .iter()
                .filter(|(i, _)| *i == for_image)
                .map(|(_, t)| t)
                .collect();
            if tags.is_empty() {
                continue;
            }
            n += 1;
            params.push((
                format!("TagSpecification.{n}.ResourceType"),
                resource.into(),
            ));
            for (i, tag) in tags.iter().enumerate() {
                params.push((
                    format!("TagSpecification.{n}.Tag.{}.Key", i + 1),
                    tag.key().into(),
                ));
                params.push((
                    format!("TagSpecification.{n}.Tag.{}.Value", i + 1),
                    tag.value().into(),
                ));
            }
        }
        let doc = self.call("CreateRestoreImageTask", params)?;
        let image = text_of(&doc, "imageId").context("the answer has no imageId")?;
        if wait {
            let mut bar = Bar::percent("restoring", quiet);
            self.wait(
                "DescribeRestoreImageTasks",
                "restoreImageTaskResultSet",
                &image,
                "restoreTaskState",
                "restoreTaskFailureReason",
                &mut bar,
            )?;
        }
        println!("{image}");
        Ok(ExitCode::SUCCESS)
    }

    /// DescribeStoreImageTasks or DescribeRestoreImageTasks, printed as the
    /// AWS CLI prints them.
    pub fn describe_tasks(&self, args: DescribeArgs, kind: TaskKind) -> Result<ExitCode> {
        let mut params = Vec::new();
        for (i, id) in args.image_ids.iter().enumerate() {
            params.push((format!("ImageId.{}", i + 1), id.to_string()));
        }
        for (i, (name, values)) in args.filters.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), name.clone()));
            for (j, v) in values.iter().enumerate() {
                params.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
            }
        }
        if let Some(m) = args.max_results {
            params.push(("MaxResults".into(), m.to_string()));
        }
        if let Some(t) = &args.next_token {
            params.push(("NextToken".into(), t.clone()));
        }
        let (action, list) = match kind {
            TaskKind::Store => ("DescribeStoreImageTasks", "storeImageTaskResultSet"),
            TaskKind::Restore => ("DescribeRestoreImageTasks", "restoreImageTaskResultSet"),
        };
        let doc = self.call(action, params)?;
        let results: Vec<Value> = items(&doc, list)
            .iter()
            .map(|item| task_from_xml(item, kind))
            .collect();
        let mut out = json!({ results_name(kind): results });
        if let Some(t) = text_of(&doc, "nextToken") {
            out["NextToken"] = json!(t);
        }
        crate::output::print_json(&out)?;
        Ok(ExitCode::SUCCESS)
    }

    /// CancelStoreImageTask; prints the task.
    pub fn cancel_store(&self, args: CancelArgs) -> Result<ExitCode> {
        let mut params = vec![("ImageId".to_owned(), args.image_id.to_string())];
        if let Some(b) = &args.bucket {
            params.push(("Bucket".into(), b.to_string()));
        }
        let doc = self.call("CancelStoreImageTask", params)?;
        let item = items(&doc, "storeImageTaskResult")
            .first()
            .map(|s| s.to_string())
            .unwrap_or(doc);
        crate::output::print_json(
            &json!({ "StoreImageTaskResult": task_from_xml(&item, TaskKind::Store) }),
        )?;
        Ok(ExitCode::SUCCESS)
    }

    /// DescribeTaskQuotas (amistore's extension).
    pub fn describe_quotas(&self) -> Result<ExitCode> {
        let doc = self.call("DescribeTaskQuotas", vec![])?;
        let quotas: Vec<Value> = items(&doc, "taskQuotaSet")
            .iter()
            .map(|item| {
                let number = |tag: &str| {
                    text_of(item, tag)
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let kind = match text_of(item, "taskType").as_deref() {
                    Some("restore") => TaskKind::Restore,
                    _ => TaskKind::Store,
                };
                quota_json(kind, number("inProgressGiB"), number("limitGiB"))
            })
            .collect();
        crate::output::print_json(&json!({ "TaskQuotas": quotas }))?;
        Ok(ExitCode::SUCCESS)
    }

    /// DeregisterImage.
    pub fn deregister(&self, args: DeregisterArgs) -> Result<ExitCode> {
        self.call(
            "DeregisterImage",
            vec![("ImageId".into(), args.image_id.to_string())],
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A describe item (or a cancel's result) as the AWS CLI prints it.
fn task_from_xml(item: &str, kind: TaskKind) -> Value {
    let (image, key, state, reason) = match kind {
        TaskKind::Store => (
            "amiId",
            "s3objectKey",
            "storeTaskState",
            "storeTaskFailureReason",
        ),
        TaskKind::Restore => (
            "imageId",
            "objectKey",
            "restoreTaskState",
            "restoreTaskFailureReason",
        ),
    };
    let field = |tag: &str| text_of(item, tag);
    let upper = |tag: &str| {
        let mut c = tag.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    let mut v = json!({
        upper(image): field(image),
        "TaskStartTime": field("taskStartTime"),
        "Bucket": field("bucket"),
        upper(key): field(key),
        "ProgressPercentage": field("progressPercentage").and_then(|p| p.parse::<u64>().ok()),
        upper(state): field(state),
    });
    if let Some(r) = field(reason) {
        v[upper(reason)] = json!(r);
    }
    v
}
