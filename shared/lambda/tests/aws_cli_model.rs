//! The stock AWS CLI against the deployed API, through the service model in
//! `infra/cli` (`aws amistore …`, signed for `execute-api` with ordinary IAM
//! credentials), answered by the intake and describe functions behind a local
//! stand-in for API Gateway that verifies the signature and hands the
//! functions the HTTP API events IAM authorization produces. The executions
//! run in process over the local adapters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amistore_lambda::testing::{ApiGatewayFront, BUCKET, Harness, account, repository};
use serde_json::Value;

const KEY: &str = "AKIDAMISTORETEST0001";
const SECRET: &str = "amistore/cli/model/secret/for/tests";

fn aws_cli() -> PathBuf {
    std::env::var("AMISTORE_AWS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repository().join(".venv/bin/aws"))
}

struct Cli {
    home: tempfile::TempDir,
    front: ApiGatewayFront,
    /// Where the model is found: AWS_DATA_PATH, or ~/.aws/models when unset.
    data_path: Option<PathBuf>,
    secret: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        let cli = aws_cli();
        assert!(
            cli.exists(),
            "{} is missing: run scripts/test (it installs the AWS CLI)",
            cli.display()
        );
        let mut command = Command::new(cli);
        command
            .args(args)
            .args(["--endpoint-url", &self.front.url, "--output", "json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", "eu-central-1")
            .env("AWS_MAX_ATTEMPTS", "1");
        if let Some(path) = &self.data_path {
            command.env("AWS_DATA_PATH", path);
        }
        command.output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

fn cli(h: &Harness) -> Cli {
    Cli {
        home: tempfile::tempdir().unwrap(),
        front: ApiGatewayFront::start(h.engine(), vec![(KEY.into(), SECRET.into(), account())]),
        data_path: Some(repository().join("infra/cli")),
        secret: SECRET.into(),
    }
}

#[test]
fn the_stock_aws_cli_stores_waits_describes_and_restores_through_the_model() {
    let h = Harness::running();
    let image = h.image("cli-model-source", &["team=infra"]);
    let cli = cli(&h);

    let stored = cli.json(&[
        "amistore",
        "create-store-image-task",
        "--image-id",
        image.as_str(),
        "--bucket",
        &format!("{BUCKET}/nightly"),
        "--s3-object-tags",
        "Key=team,Value=infra",
    ]);
    let key = stored["ObjectKey"].as_str().unwrap().to_owned();
    assert_eq!(key, format!("nightly/{image}.bin"));
    let waited = cli.run(&[
        "amistore",
        "wait",
        "store-image-task-complete",
        "--image-ids",
        image.as_str(),
    ]);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let described = cli.json(&["amistore", "describe-store-image-tasks"]);
    let task = &described["StoreImageTaskResults"][0];
    assert_eq!(task["StoreTaskState"], "Completed", "{described}");
    assert_eq!(task["ProgressPercentage"], 100);
    assert_eq!(task["S3objectKey"], key.as_str());

    let restored = cli.json(&[
        "amistore",
        "create-restore-image-task",
        "--bucket",
        BUCKET,
        "--object-key",
        &key,
        "--name",
        "cli-model-restored",
        "--tag-specifications",
        "ResourceType=image,Tags=[{Key=restored-by,Value=cli}]",
    ]);
    let new_image = restored["ImageId"].as_str().unwrap().to_owned();
    assert_ne!(new_image, image.as_str());
    let waited = cli.run(&[
        "amistore",
        "wait",
        "restore-image-task-complete",
        "--image-ids",
        &new_image,
    ]);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let described = cli.json(&[
        "amistore",
        "describe-restore-image-tasks",
        "--filters",
        &format!("Name=bucket,Values={BUCKET}"),
    ]);
    assert_eq!(
        described["RestoreImageTaskResults"][0]["RestoreTaskState"], "Completed",
        "{described}"
    );
    let image = h
        .engine()
        .catalog
        .describe_image(&account(), &new_image.parse().unwrap())
        .unwrap();
    assert!(
        image
            .metadata
            .tags
            .contains(&"restored-by=cli".parse().unwrap())
    );

    // Pagination is the model's: one task a page, all of them in the end.
    let paged = cli.json(&["amistore", "describe-store-image-tasks", "--page-size", "1"]);
    assert_eq!(paged["StoreImageTaskResults"].as_array().unwrap().len(), 1);
}

#[test]
fn errors_and_refusals_come_back_as_the_cli_reports_them() {
    let h = Harness::running();
    let cli = cli(&h);
    // An EC2 error code, from the function, as the CLI parses it.
    let out = cli.run(&[
        "amistore",
        "create-store-image-task",
        "--image-id",
        "ami-0123456789abcdef0",
        "--bucket",
        "no-such-bucket",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("InvalidAMIID.NotFound"), "{stderr}");

    // A wrong secret never reaches the function: IAM authorization refuses it.
    let bad = Cli {
        secret: "not-the-secret".into(),
        ..cli
    };
    let out = bad.run(&["amistore", "describe-store-image-tasks"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") || stderr.contains("signature"),
        "{stderr}"
    );

    // `aws ec2` signs for ec2, not execute-api: API Gateway refuses it.
    let cli = Cli {
        secret: SECRET.into(),
        ..bad
    };
    let out = cli.run(&["ec2", "describe-store-image-tasks"]);
    assert!(!out.status.success(), "an ec2-signed request got through");
}

#[test]
fn aws_configure_add_model_installs_it_as_the_docs_say() {
    let h = Harness::running();
    let mut cli = cli(&h);
    cli.data_path = None;
    let model = repository().join("infra/cli/amistore/2016-11-15/service-2.json");
    let added = cli.run(&[
        "configure",
        "add-model",
        "--service-model",
        &format!("file://{}", model.display()),
        "--service-name",
        "amistore",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // The waiters and paginators come beside it (docs/aws.md: copy the folder).
    let installed = cli.home.path().join(".aws/models/amistore/2016-11-15");
    for file in ["waiters-2.json", "paginators-1.json"] {
        std::fs::copy(
            Path::new(&repository())
                .join("infra/cli/amistore/2016-11-15")
                .join(file),
            installed.join(file),
        )
        .unwrap();
    }
    let described = cli.json(&["amistore", "describe-store-image-tasks"]);
    assert_eq!(described["StoreImageTaskResults"], serde_json::json!([]));
}
