//! End to end with the stock AWS CLI (`awscli` from PyPI, which `scripts/test`
//! installs into `.venv`) against `amistore serve`: store, wait, describe,
//! restore, wait for the image, and EC2's errors with their HTTP statuses.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn aws_cli() -> PathBuf {
    let path = std::env::var_os("AMISTORE_AWS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/aws"));
    assert!(
        path.exists(),
        "the AWS CLI is not at {} (scripts/test installs it; or set AMISTORE_AWS_CLI)",
        path.display()
    );
    path
}

/// `amistore serve` on a free loopback port, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    port: u16,
    config: PathBuf,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["serve", "--listen", &listen, "--data-dir", s(data)])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Client-side parameter validation off, so that requests the server
        // must refuse (a missing ImageId, MaxResults 0) reach it.
        let config = data.with_file_name(format!("aws-config-{port}"));
        std::fs::write(&config, "[default]\nparameter_validation = false\n").unwrap();
        Self {
            child,
            port,
            config,
        }
    }

    /// Runs `aws ec2 ARGS` signed with `secret` for access key `test`.
    fn aws_as(&self, secret: &str, args: &[&str]) -> Output {
        self.aws_with("test", secret, args)
    }

    /// Runs `aws ec2 ARGS` signed with `key` and `secret`.
    fn aws_with(&self, key: &str, secret: &str, args: &[&str]) -> Output {
        self.aws_service("ec2", key, secret, args)
    }

    /// Runs `aws SERVICE ARGS` signed with `key` and `secret`.
    fn aws_service(&self, service: &str, key: &str, secret: &str, args: &[&str]) -> Output {
        Command::new(aws_cli())
            .args([
                "--endpoint-url",
                &format!("http://127.0.0.1:{}", self.port),
                "--output",
                "json",
                service,
            ])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", &self.config)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.aws_as("test", args);
        assert!(
            out.status.success(),
            "aws ec2 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `aws ebs ARGS` as the default account; its JSON answer.
    fn ebs<A: AsRef<str>>(&self, args: &[A]) -> Value {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let out = self.aws_service("ebs", "test", "test", &args);
        assert!(
            out.status.success(),
            "aws ebs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `aws ebs ARGS`, which must fail with `code`; its message.
    fn ebs_fails<A: AsRef<str>>(&self, args: &[A], code: &str) -> String {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let out = self.aws_service("ebs", "test", "test", &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "aws ebs {args:?} should fail");
        assert!(
            stderr.contains(&format!("An error occurred ({code})")),
            "aws ebs {args:?}: expected {code}: {stderr}"
        );
        stderr
    }

    fn wait(&self, args: &[&str]) {
        let out = self.aws_as("test", args);
        assert!(
            out.status.success(),
            "aws ec2 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a call that must fail with `code` and HTTP `status`.
    fn fails_with(&self, secret: &str, args: &[&str], code: &str, status: u16) {
        self.fails_as("test", secret, args, code, status);
    }

    /// Runs a call signed with `key` that must fail with `code` and HTTP `status`.
    fn fails_as(&self, key: &str, secret: &str, args: &[&str], code: &str, status: u16) {
        let mut with_debug = args.to_vec();
        with_debug.push("--debug");
        let out = self.aws_with(key, secret, &with_debug);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "aws ec2 {args:?} should fail");
        assert!(
            stderr.contains(&format!("An error occurred ({code})")),
            "aws ec2 {args:?}: expected {code}: {}",
            stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        );
        assert!(
            stderr.contains(&format!("\"POST / HTTP/1.1\" {status}")),
            "aws ec2 {args:?}: expected HTTP {status}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A data directory with a one-disk image named `name` and the given buckets
/// (`NAME` or `NAME:OWNER`); returns the image files, the data directory and the AMI id.
fn one_disk_world(name: &str, buckets: &[&str]) -> (Image, PathBuf, String) {
    let image = make_image();
    let data = image.dir.path().join("data");
    let disk = format!("/dev/xvda={}", image.disks[0].1.display());
    let ami = ok_in(
        &["image", "import", "--name", name, "--disk", &disk],
        Some(&data),
    )
    .trim()
    .to_owned();
    for b in buckets {
        let mut args = vec!["bucket", "create"];
        match b.split_once(':') {
            Some((bucket, owner)) => args.extend([bucket, "--owner", owner]),
            None => args.push(b),
        }
        ok_in(&args, Some(&data));
    }
    (image, data, ami)
}

#[test]
fn the_aws_cli_stores_waits_describes_restores_and_waits_for_the_image() {
    let image = make_image();
    let data = image.dir.path().join("data");
    let local = |args: &[&str]| ok_in(args, Some(&data)).trim().to_owned();
    let mut import = vec!["image", "import", "--name", "aws cli source"];
    let disks = image.disk_args();
    import.extend(disks.iter().map(String::as_str));
    let ami = local(&import);
    for b in ["bucket-a", "bucket-b", "bucket-c"] {
        local(&["bucket", "create", b]);
    }
    let server = Server::start(&data, &[]);

    let created = server.json(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "bucket-a/p1/p2",
    ]);
    let key = created["ObjectKey"].as_str().unwrap().to_owned();
    assert_eq!(key, format!("p1/p2/{ami}.bin"));
    server.wait(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    for b in ["bucket-b", "bucket-c"] {
        server.json(&["create-store-image-task", "--image-id", &ami, "--bucket", b]);
        server.wait(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    }

    let results = |v: &Value| v["StoreImageTaskResults"].as_array().unwrap().clone();
    let latest = results(&server.json(&["describe-store-image-tasks", "--image-ids", &ami]));
    assert_eq!(latest.len(), 1, "only the latest task of the AMI");
    assert_eq!(latest[0]["Bucket"], "bucket-c");
    assert_eq!(latest[0]["StoreTaskState"], "Completed");
    assert_eq!(latest[0]["ProgressPercentage"], 100);
    let completed = results(&server.json(&[
        "describe-store-image-tasks",
        "--filters",
        "Name=task-state,Values=Completed",
    ]));
    assert_eq!(completed.len(), 3);
    let in_a = results(&server.json(&[
        "describe-store-image-tasks",
        "--filters",
        "Name=bucket,Values=bucket-a",
    ]));
    assert_eq!(in_a.len(), 1);
    assert_eq!(in_a[0]["S3objectKey"], key.as_str());
    // The CLI follows NextToken page by page (MaxResults=1 per page).
    let paged = results(&server.json(&["describe-store-image-tasks", "--page-size", "1"]));
    let buckets: Vec<&str> = paged
        .iter()
        .map(|t| t["Bucket"].as_str().unwrap())
        .collect();
    assert_eq!(
        buckets,
        ["bucket-c", "bucket-b", "bucket-a"],
        "newest first, across pages"
    );
    let one = server.json(&[
        "describe-store-image-tasks",
        "--max-results",
        "1",
        "--no-paginate",
    ]);
    assert_eq!(results(&one).len(), 1);
    assert!(one["NextToken"].is_string());

    let restored = server.json(&[
        "create-restore-image-task",
        "--bucket",
        "bucket-a",
        "--object-key",
        &key,
        "--name",
        "aws cli restored",
    ]);
    let new = restored["ImageId"].as_str().unwrap().to_owned();
    server.wait(&["wait", "image-available", "--image-ids", &new]);
    let images = server.json(&["describe-images", "--image-ids", &new]);
    assert_eq!(images["Images"][0]["State"], "available");
    assert_eq!(images["Images"][0]["Name"], "aws cli restored");
    assert_eq!(
        images["Images"][0]["BlockDeviceMappings"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let snapshot = images["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_owned();
    let snaps = server.json(&["describe-snapshots", "--snapshot-ids", &snapshot]);
    assert_eq!(snaps["Snapshots"][0]["State"], "completed");
    // EC2's timestamps carry milliseconds; an untagged resource has no Tags.
    for stamp in [
        &images["Images"][0]["CreationDate"],
        &snaps["Snapshots"][0]["StartTime"],
    ] {
        let stamp = stamp.as_str().unwrap();
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{stamp} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
        );
    }
    assert!(
        snaps["Snapshots"][0].get("Tags").is_none(),
        "an untagged snapshot shows Tags: {}",
        snaps["Snapshots"][0]
    );

    // Every parameter the CLI sends for these actions is understood: the
    // owner and restorable-by scopes, filters, and pages (the CLI follows
    // NextToken itself, so one item per page still lists them all).
    let all_images = server.json(&["describe-images"]);
    let count = all_images["Images"].as_array().unwrap().len();
    assert!(count >= 2, "{all_images}");
    for args in [
        &["describe-images", "--page-size", "1"][..],
        &[
            "describe-images",
            "--owners",
            "self",
            "--include-deprecated",
            "--include-disabled",
        ],
        &["describe-images", "--executable-users", "self"],
    ] {
        let listed = server.json(args);
        assert_eq!(
            listed["Images"].as_array().unwrap().len(),
            count,
            "{args:?}: {listed}"
        );
    }
    let none = server.json(&["describe-images", "--executable-users", "all"]);
    assert_eq!(none["Images"].as_array().unwrap().len(), 0, "{none}");
    let named = server.json(&[
        "describe-images",
        "--filters",
        "Name=name,Values=aws cli restored",
        "Name=block-device-mapping.snapshot-id,Values=snap-*",
    ]);
    assert_eq!(named["Images"][0]["ImageId"], new.as_str(), "{named}");
    let all_snaps = server.json(&["describe-snapshots", "--owner-ids", "self"]);
    let snap_count = all_snaps["Snapshots"].as_array().unwrap().len();
    assert!(snap_count >= 3, "{all_snaps}");
    for args in [
        &["describe-snapshots"][..],
        &["describe-snapshots", "--page-size", "5"],
        &["describe-snapshots", "--restorable-by-user-ids", "self"],
        &[
            "describe-snapshots",
            "--filters",
            "Name=status,Values=completed",
        ],
    ] {
        let listed = server.json(args);
        assert_eq!(
            listed["Snapshots"].as_array().unwrap().len(),
            snap_count,
            "{args:?}: {listed}"
        );
    }
    let one = server.json(&[
        "describe-snapshots",
        "--filters",
        &format!("Name=snapshot-id,Values={snapshot}"),
    ]);
    assert_eq!(one["Snapshots"].as_array().unwrap().len(), 1, "{one}");

    let out = image.dir.path().join("exported");
    let files = local(&["image", "export", &new, "--out", s(&out)]);
    for ((_, src), got) in image.disks.iter().zip(files.lines()) {
        same_file(src, Path::new(got));
        assert_eq!(layout(Path::new(got)), layout(src));
    }
    let out = server.aws_as("test", &["deregister-image", "--image-id", &new]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = server.aws_as("test", &["describe-images", "--image-ids", &new]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("(InvalidAMIID.NotFound)"));
}

#[test]
fn the_aws_cli_sees_ec2_error_codes_and_statuses() {
    let (_image, data, ami) = one_disk_world("errors source", &["bucket-a", "bucket-b"]);
    let server = Server::start(&data, &[]);
    let created = server.json(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "bucket-a",
    ]);
    server.wait(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    let key = created["ObjectKey"].as_str().unwrap().to_owned();

    for (args, code, status) in [
        (
            vec![
                "create-store-image-task",
                "--image-id",
                &ami,
                "--bucket",
                "bucket-a",
                "--dry-run",
            ],
            "DryRunOperation",
            412,
        ),
        (
            vec!["describe-store-image-tasks", "--dry-run"],
            "DryRunOperation",
            412,
        ),
        (
            vec![
                "create-restore-image-task",
                "--bucket",
                "bucket-a",
                "--object-key",
                &key,
                "--dry-run",
            ],
            "DryRunOperation",
            412,
        ),
        (
            vec![
                "create-store-image-task",
                "--image-id",
                "ami-xyz",
                "--bucket",
                "bucket-a",
            ],
            "InvalidAMIID.Malformed",
            400,
        ),
        (
            vec![
                "create-store-image-task",
                "--image-id",
                "ami-0123456789abcdef0",
                "--bucket",
                "bucket-a",
            ],
            "InvalidAMIID.NotFound",
            400,
        ),
        (
            // The CLI's own check wants --image-id; JSON input goes past it.
            vec![
                "create-store-image-task",
                "--cli-input-json",
                r#"{"Bucket": "bucket-a"}"#,
            ],
            "MissingParameter",
            400,
        ),
        (
            vec![
                "create-store-image-task",
                "--image-id",
                &ami,
                "--bucket",
                "no-such-bucket",
            ],
            "InvalidParameterValue",
            400,
        ),
        (
            vec![
                "describe-store-image-tasks",
                "--image-ids",
                &ami,
                "--max-results",
                "5",
                "--no-paginate",
            ],
            "InvalidParameterCombination",
            400,
        ),
        (
            vec![
                "describe-store-image-tasks",
                "--max-results",
                "0",
                "--no-paginate",
            ],
            "InvalidParameterValue",
            400,
        ),
        (
            vec![
                "describe-store-image-tasks",
                "--next-token",
                "not-a-token",
                "--no-paginate",
            ],
            "InvalidNextToken",
            400,
        ),
        (
            vec![
                "create-restore-image-task",
                "--bucket",
                "bucket-a",
                "--object-key",
                &key,
            ],
            "InvalidAMIName.Duplicate",
            400,
        ),
        (
            vec![
                "create-restore-image-task",
                "--bucket",
                "bucket-a",
                "--object-key",
                &key,
                "--name",
                "x*",
            ],
            "InvalidAMIName.Malformed",
            400,
        ),
        (vec!["describe-instances"], "InvalidAction", 400),
    ] {
        server.fails_with("test", &args, code, status);
    }
    server.fails_with(
        "wrong-secret",
        &["describe-store-image-tasks"],
        "AuthFailure",
        401,
    );
    drop(server);

    // The quota: no store is admitted while 0 GiB or more are in progress.
    let server = Server::start(&data, &["--store-limit-gib", "0"]);
    server.fails_with(
        "test",
        &[
            "create-store-image-task",
            "--image-id",
            &ami,
            "--bucket",
            "bucket-b",
        ],
        "ResourceLimitExceeded",
        400,
    );
}

#[test]
fn serving_beyond_loopback_needs_configured_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails_in(&["serve", "--listen", "0.0.0.0:0"], Some(dir.path()));
    assert!(err.contains("without --credentials"), "{err}");
}

#[test]
fn two_accounts_never_see_or_touch_each_others_tasks_images_buckets_or_tokens() {
    let (image, data, ami) = one_disk_world(
        "account a image",
        &["bucket-a", "bucket-a2", "bucket-b:111122223333"],
    );
    let creds = image.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "# two accounts\nKEYA secret-a 000000000000\nKEYB secret-b 111122223333\nKEYR secret-r 000000000000 read-only\n",
    )
    .unwrap();
    let server = Server::start(&data, &["--credentials", s(&creds)]);
    let a = |args: &[&str]| server.aws_with("KEYA", "secret-a", args);
    let b = |args: &[&str]| server.aws_with("KEYB", "secret-b", args);
    let json = |out: Output| -> Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let error = |out: Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // The default test/test key is not configured here.
    assert!(
        error(server.aws_as("test", &["describe-store-image-tasks"])).contains("(AuthFailure)")
    );
    let created = json(a(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "bucket-a",
    ]));
    let key = created["ObjectKey"].as_str().unwrap().to_owned();
    json(a(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "bucket-a2",
    ]));
    let out = a(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    assert!(out.status.success(), "{}", error(out));

    // B sees no task, no image, and cannot use A's image, bucket or token.
    let tasks = json(b(&["describe-store-image-tasks"]));
    assert!(
        tasks["StoreImageTaskResults"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let images = json(b(&["describe-images"]));
    assert!(images["Images"].as_array().unwrap().is_empty());
    assert!(
        error(b(&[
            "create-store-image-task",
            "--image-id",
            &ami,
            "--bucket",
            "bucket-b"
        ]))
        .contains("(InvalidAMIID.NotFound)")
    );
    assert!(
        error(b(&[
            "create-restore-image-task",
            "--bucket",
            "bucket-a",
            "--object-key",
            &key,
            "--name",
            "stolen"
        ]))
        .contains("bucket bucket-a does not exist")
    );
    let page = json(a(&["describe-store-image-tasks", "--max-results", "1"]));
    let token = page["NextToken"].as_str().unwrap().to_owned();
    assert!(
        error(b(&[
            "describe-store-image-tasks",
            "--max-results",
            "1",
            "--next-token",
            &token
        ]))
        .contains("(InvalidNextToken)")
    );
    let next = json(a(&[
        "describe-store-image-tasks",
        "--max-results",
        "1",
        "--next-token",
        &token,
    ]));
    assert_eq!(
        next["StoreImageTaskResults"].as_array().unwrap().len(),
        1,
        "A's own token works"
    );
    // A read-only key of A's account describes, and may do nothing else.
    let r = server.aws_with("KEYR", "secret-r", &["describe-store-image-tasks"]);
    assert_eq!(
        json(r)["StoreImageTaskResults"].as_array().unwrap().len(),
        2
    );
    server.fails_as(
        "KEYR",
        "secret-r",
        &[
            "create-store-image-task",
            "--image-id",
            &ami,
            "--bucket",
            "bucket-a2",
            "--dry-run",
        ],
        "UnauthorizedOperation",
        403,
    );
    // Nor can A store into B's bucket.
    assert!(
        error(a(&[
            "create-store-image-task",
            "--image-id",
            &ami,
            "--bucket",
            "bucket-b"
        ]))
        .contains("bucket bucket-b does not exist")
    );
}

#[test]
fn the_amistore_cli_drives_a_server_with_endpoint() {
    let (image, data, ami) = one_disk_world("client source", &["bucket-a"]);
    let server = Server::start(&data, &[]);
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    // No data directory: everything goes through the server.
    let client = |secret: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["--endpoint", &endpoint])
            .args(args)
            .env_remove("AMISTORE_DATA_DIR")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let ok = |out: Output| -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let key = ok(client(
        "test",
        &[
            "store-image",
            "--image-id",
            &ami,
            "--bucket",
            "bucket-a/p1",
            "--wait",
        ],
    ));
    assert_eq!(key, format!("p1/{ami}.bin"));
    let tasks: Value = serde_json::from_str(&ok(client(
        "test",
        &["describe-store-image-tasks", "--image-id", &ami],
    )))
    .unwrap();
    assert_eq!(
        tasks["StoreImageTaskResults"][0]["StoreTaskState"],
        "Completed"
    );
    assert_eq!(tasks["StoreImageTaskResults"][0]["ProgressPercentage"], 100);
    let new = ok(client(
        "test",
        &[
            "restore-image",
            "--bucket",
            "bucket-a",
            "--object-key",
            &key,
            "--name",
            "client copy",
            "--tag-specification",
            "image:via=client",
            "--wait",
        ],
    ));
    assert!(new.starts_with("ami-"), "{new}");
    let images = server.json(&["describe-images", "--image-ids", &new]);
    assert_eq!(images["Images"][0]["State"], "available");
    assert_eq!(images["Images"][0]["Tags"][0]["Key"], "via");
    let out = image.dir.path().join("exported");
    let files = ok_in(&["image", "export", &new, "--out", s(&out)], Some(&data));
    same_file(&image.disks[0].1, Path::new(files.lines().next().unwrap()));

    // The restore's task, then the image deregistered (its name is free
    // again), all through the server, then the same locally.
    let restores: Value = serde_json::from_str(&ok(client(
        "test",
        &["describe-restore-image-tasks", "--image-id", &new],
    )))
    .unwrap();
    let r = &restores["RestoreImageTaskResults"][0];
    assert_eq!(r["RestoreTaskState"], "Completed", "{restores}");
    assert_eq!(r["ObjectKey"], key.as_str(), "{restores}");
    ok(client("test", &["deregister-image", "--image-id", &new]));
    let gone = server.aws_as("test", &["describe-images", "--image-ids", &new]);
    assert!(!gone.status.success());
    let again = ok(client(
        "test",
        &[
            "restore-image",
            "--bucket",
            "bucket-a",
            "--object-key",
            &key,
            "--name",
            "client copy",
            "--wait",
        ],
    ));
    let local_restores: Value = serde_json::from_str(&ok_in(
        &["describe-restore-image-tasks", "--image-id", &again],
        Some(&data),
    ))
    .unwrap();
    assert_eq!(
        local_restores["RestoreImageTaskResults"][0]["RestoreTaskState"],
        "Completed"
    );
    ok_in(&["deregister-image", "--image-id", &again], Some(&data));
    assert!(
        !server
            .aws_as("test", &["describe-images", "--image-ids", &again])
            .status
            .success()
    );
    // Nothing to cancel: EC2's IncorrectState, through the server and here.
    let nothing = client("test", &["cancel-store-image-task", "--image-id", &ami]);
    assert!(!nothing.status.success());
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("no store task"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );
    let nothing = amistore_in(
        &["cancel-store-image-task", "--image-id", &ami],
        Some(&data),
    );
    assert!(!nothing.status.success());

    let denied = client("wrong", &["describe-store-image-tasks"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("AuthFailure"));
    // https:// speaks TLS (to this plain-HTTP server, it cannot agree on it);
    // anything else is refused before a connection.
    let remote = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["--endpoint", url, "describe-store-image-tasks"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap()
    };
    let https = remote(&format!("https://127.0.0.1:{}", server.port));
    assert!(!https.status.success());
    let err = String::from_utf8_lossy(&https.stderr);
    assert!(err.contains("cannot reach https://127.0.0.1"), "{err}");
    let ftp = remote("ftp://127.0.0.1");
    let err = String::from_utf8_lossy(&ftp.stderr);
    assert!(err.contains("must start with http:// or https://"), "{err}");
}

/// Counts of a TLS front's handshakes: completed, and refused by the client.
#[derive(Default)]
struct Handshakes {
    completed: AtomicUsize,
    refused: AtomicUsize,
}

/// A TLS front on a free loopback port, with a certificate for 127.0.0.1 that
/// no public authority signed (self-signed): it ends TLS and passes the bytes
/// to the plain-HTTP server on `backend`. It lives as long as the test process.
fn tls_front(backend: u16, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> (u16, Arc<Handshakes>) {
    use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handshakes = Arc::new(Handshakes::default());
    let counts = handshakes.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counts) = (acceptor.clone(), counts.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        counts.refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    counts.completed.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut plain) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
    });
    (port, handshakes)
}

#[test]
fn the_amistore_cli_reaches_a_server_over_tls_with_a_trusted_private_certificate() {
    let (image, data, ami) = one_disk_world("tls source", &["bucket-a"]);
    let server = Server::start(&data, &[]);
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (port, handshakes) = tls_front(server.port, &cert);
    let bundle = image.dir.path().join("ca.pem");
    std::fs::write(&bundle, cert.cert.pem()).unwrap();
    let endpoint = format!("https://127.0.0.1:{port}");
    let client = |env: &[(&str, &Path)], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["--endpoint", &endpoint])
            .args(args)
            .env_remove("AMISTORE_DATA_DIR")
            .env_remove("AWS_CA_BUNDLE")
            .envs(env.iter().copied())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Without the bundle, the certificate is refused: no public authority signed it.
    let untrusted = client(&[], &["describe-store-image-tasks"]);
    assert!(!untrusted.status.success());
    let err = stderr(&untrusted);
    assert!(
        err.contains(&format!("cannot reach https://127.0.0.1:{port}"))
            && err.contains("invalid peer certificate"),
        "{err}"
    );
    assert_eq!(handshakes.completed.load(Ordering::SeqCst), 0);
    assert!(handshakes.refused.load(Ordering::SeqCst) >= 1);

    // With it (the flag, or AWS_CA_BUNDLE as the AWS CLI reads it), a store
    // runs to its end through TLS and describe sees it.
    let bundle_arg = bundle.to_str().unwrap();
    let stored = client(
        &[],
        &[
            "--ca-bundle",
            bundle_arg,
            "store-image",
            "--image-id",
            &ami,
            "--bucket",
            "bucket-a",
            "--wait",
        ],
    );
    assert!(stored.status.success(), "{}", stderr(&stored));
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim(),
        format!("{ami}.bin")
    );
    let described = client(
        &[("AWS_CA_BUNDLE", bundle.as_path())],
        &["describe-store-image-tasks", "--image-id", &ami],
    );
    assert!(described.status.success(), "{}", stderr(&described));
    let tasks: Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(
        tasks["StoreImageTaskResults"][0]["StoreTaskState"],
        "Completed"
    );
    assert!(handshakes.completed.load(Ordering::SeqCst) >= 2);

    // A bundle that holds no certificate is named, not silently ignored.
    let not_pem = image.dir.path().join("not-a-bundle.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let refused = client(
        &[("AWS_CA_BUNDLE", not_pem.as_path())],
        &["describe-store-image-tasks"],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not-a-bundle.pem: the CA bundle holds no certificate"),
        "{}",
        stderr(&refused)
    );
    let missing = client(
        &[("AWS_CA_BUNDLE", Path::new("/nonexistent/ca.pem"))],
        &["describe-store-image-tasks"],
    );
    assert!(
        stderr(&missing).contains("reading the CA bundle /nonexistent/ca.pem"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn a_store_in_progress_is_cancelled_through_the_server_or_from_the_data_directory() {
    let image = make_image();
    let data = image.dir.path().join("data");
    // 20 MiB of data at 2 MiB/s: the stores are still running when cancelled.
    let disk = image.dir.path().join("slow.raw");
    std::fs::write(&disk, bytes(20 << 20, 9)).unwrap();
    let ami = ok_in(
        &[
            "image",
            "import",
            "--name",
            "slow",
            "--disk",
            &format!("/dev/xvda={}", disk.display()),
        ],
        Some(&data),
    )
    .trim()
    .to_owned();
    for b in ["bucket-a", "bucket-b"] {
        ok_in(&["bucket", "create", b], Some(&data));
    }
    let server = Server::start(&data, &["--max-bandwidth", "2"]);
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let client = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["--endpoint", &endpoint])
            .args(args)
            .env_remove("AMISTORE_DATA_DIR")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap()
    };
    for (bucket, through_server) in [("bucket-a", true), ("bucket-b", false)] {
        let started = client(&["store-image", "--image-id", &ami, "--bucket", bucket]);
        assert!(
            started.status.success(),
            "{}",
            String::from_utf8_lossy(&started.stderr)
        );
        // The quota in use shows the store, through the server.
        let quotas: Value =
            serde_json::from_slice(&client(&["describe-task-quotas"]).stdout).unwrap();
        assert_eq!(quotas["TaskQuotas"][0]["TaskType"], "store", "{quotas}");
        assert_eq!(quotas["TaskQuotas"][0]["InProgressGiB"], 1, "{quotas}");
        assert_eq!(quotas["TaskQuotas"][0]["LimitGiB"], 1200, "{quotas}");
        let args = [
            "cancel-store-image-task",
            "--image-id",
            &ami,
            "--bucket",
            bucket,
        ];
        // From the data directory, another process's (the server's) task is
        // cancelled the same way: the end is claimed in the shared database.
        let out = if through_server {
            client(&args)
        } else {
            amistore_in(&args, Some(&data))
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cancelled: Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &cancelled["StoreImageTaskResult"];
        assert_eq!(t["StoreTaskState"], "Failed", "{cancelled}");
        assert_eq!(t["StoreTaskFailureReason"], "cancelled", "{cancelled}");
        assert!(
            !data
                .join("s3")
                .join(bucket)
                .join(format!("{ami}.bin"))
                .exists()
        );
    }
    // And back to 0, seen from the data directory.
    let quotas: Value =
        serde_json::from_str(&ok_in(&["describe-task-quotas"], Some(&data))).unwrap();
    for q in quotas["TaskQuotas"].as_array().unwrap() {
        assert_eq!(q["InProgressGiB"], 0, "{quotas}");
    }
    assert_eq!(quotas["TaskQuotas"][1]["LimitGiB"], 600, "{quotas}");
}

#[test]
fn a_server_stopped_with_sigterm_resumes_its_task_at_the_next_start() {
    let image = make_image();
    let data = image.dir.path().join("data");
    // 20 MiB of data at 2 MiB/s: the store is still running when the server stops.
    let disk = image.dir.path().join("slow.raw");
    std::fs::write(&disk, bytes(20 << 20, 5)).unwrap();
    let ami = ok_in(
        &[
            "image",
            "import",
            "--name",
            "slow source",
            "--disk",
            &format!("/dev/xvda={}", disk.display()),
        ],
        Some(&data),
    )
    .trim()
    .to_owned();
    ok_in(&["bucket", "create", "bucket-a"], Some(&data));
    let server = Server::start(&data, &["--max-bandwidth", "2"]);
    server.json(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "bucket-a",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let tasks = server.json(&["describe-store-image-tasks"]);
    assert_eq!(
        tasks["StoreImageTaskResults"][0]["StoreTaskState"],
        "InProgress"
    );
    drop(server); // SIGTERM, and wait for the exit

    // Between the two runs, the one-shot commands leave the server's task to
    // the server: a describe changes nothing, and another store (which fails
    // the tasks of dead one-shot commands) does not fail it either.
    let state = |data: &Path| -> Value {
        let out = ok_in(
            &["describe-store-image-tasks", "--image-id", &ami],
            Some(data),
        );
        serde_json::from_str::<Value>(&out).unwrap()["StoreImageTaskResults"][0]["StoreTaskState"]
            .clone()
    };
    let described = amistore_in(&["describe-store-image-tasks"], Some(&data));
    assert!(
        !String::from_utf8_lossy(&described.stderr).contains("now Failed"),
        "a describe failed the server's task"
    );
    assert_eq!(state(&data), "InProgress");
    let other = image.dir.path().join("other.raw");
    std::fs::write(&other, bytes(1 << 20, 7)).unwrap();
    let other_ami = ok_in(
        &[
            "image",
            "import",
            "--name",
            "other",
            "--disk",
            &format!("/dev/xvda={}", other.display()),
        ],
        Some(&data),
    )
    .trim()
    .to_owned();
    ok_in(
        &[
            "store-image",
            "--image-id",
            &other_ami,
            "--bucket",
            "bucket-a",
        ],
        Some(&data),
    );
    assert_eq!(
        state(&data),
        "InProgress",
        "a one-shot store failed the server's task"
    );

    let server = Server::start(&data, &[]);
    server.wait(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    let tasks = server.json(&["describe-store-image-tasks", "--image-ids", &ami]);
    assert_eq!(
        tasks["StoreImageTaskResults"][0]["StoreTaskState"],
        "Completed"
    );
    let object = data.join("s3/bucket-a").join(format!("{ami}.bin"));
    assert!(sh("zstd -q -t \"$1\"", &[&object]));
}

/// The EBS direct APIs and RegisterImage, with the stock AWS CLI as a user of
/// AWS would call them: `aws ebs` writes a snapshot block by block (with
/// EBS's checksums), `aws ec2 register-image` makes it an AMI, which stores
/// and restores byte-identical; the restored snapshot reads back through
/// `aws ebs list-snapshot-blocks` / `get-snapshot-block`, and
/// `list-changed-blocks` finds no difference from the original.
#[test]
fn the_aws_cli_writes_a_snapshot_with_ebs_direct_apis_that_registers_stores_and_restores() {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 512 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok_in(&["bucket", "create", "ebs-bucket"], Some(&data));
    let server = Server::start(&data, &[]);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);

    // A 1 GiB volume: blocks 0, 1 and 5 hold data, block 7 is written zeros,
    // the rest is never written.
    let blocks: Vec<(u64, Vec<u8>)> = vec![
        (0, bytes(BLOCK as u64, 1)),
        (1, vec![0x5a; BLOCK]),
        (5, bytes(BLOCK as u64, 2)),
        (7, vec![0; BLOCK]),
    ];
    let mut expected = vec![0u8; 1 << 30];
    for (index, block) in &blocks {
        let at = *index as usize * BLOCK;
        expected[at..at + BLOCK].copy_from_slice(block);
    }
    let expected_path = dir.path().join("expected.raw");
    std::fs::write(&expected_path, &expected).unwrap();
    drop(expected);

    let started = server.ebs(&[
        "start-snapshot",
        "--volume-size",
        "1",
        "--description",
        "written with aws ebs",
        "--tags",
        "Key=made-by,Value=aws-ebs",
        "--timeout",
        "60",
    ]);
    assert_eq!(started["Status"], "pending", "{started}");
    assert_eq!(started["BlockSize"], 524288);
    assert_eq!(started["VolumeSize"], 1);
    assert_eq!(started["OwnerId"], "000000000000");
    let snapshot = started["SnapshotId"].as_str().unwrap().to_owned();

    let block_file = dir.path().join("block");
    let put = |index: u64, block: &[u8], checksum: &str| {
        std::fs::write(&block_file, block).unwrap();
        vec![
            "put-snapshot-block".to_owned(),
            "--snapshot-id".into(),
            snapshot.clone(),
            "--block-index".into(),
            index.to_string(),
            "--block-data".into(),
            block_file.display().to_string(),
            "--data-length".into(),
            "524288".into(),
            "--checksum".into(),
            checksum.to_owned(),
            "--checksum-algorithm".into(),
            "SHA256".into(),
        ]
    };
    // A block whose data does not match its checksum is refused, and a
    // block past the volume's end too.
    let wrong = put(2, &blocks[0].1, &b64(&Sha256::digest(b"other data")));
    let message = server.ebs_fails(&wrong, "ValidationException");
    assert!(
        message.contains("does not match its x-amz-Checksum"),
        "{message}"
    );
    let past = put(2048, &blocks[0].1, &b64(&Sha256::digest(&blocks[0].1)));
    server.ebs_fails(&past, "ValidationException");

    let mut digests = Vec::new();
    for (index, block) in &blocks {
        let digest = Sha256::digest(block);
        let answer = server.ebs(&put(*index, block, &b64(&digest)));
        assert_eq!(answer["Checksum"], b64(&digest), "{answer}");
        digests.extend_from_slice(&digest);
    }
    // Reading a pending snapshot and completing it with a wrong count fail.
    server.ebs_fails(
        &["list-snapshot-blocks", "--snapshot-id", &snapshot],
        "ValidationException",
    );
    server.ebs_fails(
        &[
            "complete-snapshot",
            "--snapshot-id",
            &snapshot,
            "--changed-blocks-count",
            "3",
        ],
        "ValidationException",
    );
    let completed = server.ebs(&[
        "complete-snapshot",
        "--snapshot-id",
        &snapshot,
        "--changed-blocks-count",
        "4",
        "--checksum",
        &b64(&Sha256::digest(&digests)),
        "--checksum-algorithm",
        "SHA256",
        "--checksum-aggregation-method",
        "LINEAR",
    ]);
    assert_eq!(completed["Status"], "completed");
    let late = put(3, &blocks[0].1, &b64(&Sha256::digest(&blocks[0].1)));
    let message = server.ebs_fails(&late, "ValidationException");
    assert!(message.contains("only while it is pending"), "{message}");

    let listed = server.ebs(&["list-snapshot-blocks", "--snapshot-id", &snapshot]);
    let indexes: Vec<u64> = listed["Blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["BlockIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 5, 7]);
    let token = listed["Blocks"][2]["BlockToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let read_back = dir.path().join("read-back");
    let got = server.ebs(&[
        "get-snapshot-block",
        "--snapshot-id",
        &snapshot,
        "--block-index",
        "5",
        "--block-token",
        &token,
        s(&read_back),
    ]);
    assert_eq!(std::fs::read(&read_back).unwrap(), blocks[2].1);
    assert_eq!(got["Checksum"], b64(&Sha256::digest(&blocks[2].1)));
    assert_eq!(got["DataLength"], 524288);
    server.ebs_fails(
        &[
            "get-snapshot-block",
            "--snapshot-id",
            &snapshot,
            "--block-index",
            "1",
            "--block-token",
            &token,
            s(&read_back),
        ],
        "ValidationException",
    );

    let registered = server.json(&[
        "register-image",
        "--name",
        "made with aws ebs",
        "--architecture",
        "x86_64",
        "--virtualization-type",
        "hvm",
        "--ena-support",
        "--boot-mode",
        "uefi",
        "--root-device-name",
        "/dev/xvda",
        "--block-device-mappings",
        &format!("DeviceName=/dev/xvda,Ebs={{SnapshotId={snapshot},VolumeType=gp3}}"),
        "--tag-specifications",
        "ResourceType=image,Tags=[{Key=source,Value=ebs-direct}]",
    ]);
    let ami = registered["ImageId"].as_str().unwrap().to_owned();
    let described = server.json(&["describe-images", "--image-ids", &ami]);
    let image = &described["Images"][0];
    assert_eq!(image["State"], "available", "{image}");
    assert_eq!(image["BootMode"], "uefi");
    assert_eq!(
        image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"],
        snapshot.as_str()
    );
    assert_eq!(image["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"], 1);
    // A snapshot belongs to one image; a pending one cannot be registered.
    let again = server.aws_as(
        "test",
        &[
            "register-image",
            "--name",
            "twice",
            "--root-device-name",
            "/dev/xvda",
            "--block-device-mappings",
            &format!("DeviceName=/dev/xvda,Ebs={{SnapshotId={snapshot}}}"),
        ],
    );
    assert!(!again.status.success());

    server.json(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "ebs-bucket",
    ]);
    server.wait(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    let restored = server.json(&[
        "create-restore-image-task",
        "--bucket",
        "ebs-bucket",
        "--object-key",
        &format!("{ami}.bin"),
        "--name",
        "restored from ebs",
    ]);
    let new = restored["ImageId"].as_str().unwrap().to_owned();
    server.wait(&["wait", "image-available", "--image-ids", &new]);
    let out = dir.path().join("export");
    let files = ok_in(&["image", "export", &new, "--out", s(&out)], Some(&data));
    let disk = PathBuf::from(files.lines().next().unwrap().trim());
    same_file(&disk, &expected_path);

    // The restored snapshot reads back through the EBS direct APIs, block
    // for block the original.
    let images = server.json(&["describe-images", "--image-ids", &new]);
    let copy = images["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = server.ebs(&[
        "list-changed-blocks",
        "--first-snapshot-id",
        &snapshot,
        "--second-snapshot-id",
        &copy,
    ]);
    assert_eq!(changed["ChangedBlocks"], serde_json::json!([]), "{changed}");
    let all = server.ebs(&["list-changed-blocks", "--second-snapshot-id", &copy]);
    let present: Vec<u64> = all["ChangedBlocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["BlockIndex"].as_u64().unwrap())
        .collect();
    assert!(
        present.iter().all(|i| [0, 1, 5, 7].contains(i)) && present.contains(&5),
        "{all}"
    );
}

/// What the EBS direct APIs refuse: another account's snapshot (not found),
/// a read-only key's writes, what a local library cannot do (encryption,
/// incremental snapshots), and a completion whose aggregated checksum does
/// not match the blocks (the snapshot is deleted: it cannot be trusted).
#[test]
fn the_ebs_direct_apis_keep_accounts_apart_and_refuse_what_they_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "KEYA secret-a 000000000000\nKEYB secret-b 111122223333\nKEYR secret-r 000000000000 read-only\n",
    )
    .unwrap();
    let server = Server::start(&data, &["--credentials", s(&creds)]);
    let as_key = |key: &str, secret: &str, args: &[&str]| {
        let out = server.aws_service("ebs", key, secret, args);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let a = |args: &[&str]| as_key("KEYA", "secret-a", args);
    let b = |args: &[&str]| as_key("KEYB", "secret-b", args);
    let r = |args: &[&str]| as_key("KEYR", "secret-r", args);
    let failed = |(ok, _, err): (bool, String, String), code: &str| {
        assert!(
            !ok && err.contains(&format!("({code})")),
            "expected {code}: {err}"
        );
        err
    };

    for refused in [
        &["start-snapshot", "--volume-size", "1", "--encrypted"][..],
        &[
            "start-snapshot",
            "--volume-size",
            "1",
            "--parent-snapshot-id",
            "snap-0123456789abcdef0",
        ],
        &["start-snapshot", "--volume-size", "0"],
        &["start-snapshot", "--volume-size", "65537"],
        &[
            "start-snapshot",
            "--volume-size",
            "1",
            "--tags",
            "Key=amistore:task,Value=x",
        ],
    ] {
        failed(a(refused), "ValidationException");
    }
    failed(
        r(&["start-snapshot", "--volume-size", "1"]),
        "AccessDeniedException",
    );

    let (ok, out, err) = a(&["start-snapshot", "--volume-size", "1"]);
    assert!(ok, "{err}");
    let started: Value = serde_json::from_str(&out).unwrap();
    let snapshot = started["SnapshotId"].as_str().unwrap().to_owned();
    let block = dir.path().join("block");
    std::fs::write(&block, vec![9u8; 512 * 1024]).unwrap();
    let checksum = {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(vec![9u8; 512 * 1024]))
    };
    let put = [
        "put-snapshot-block",
        "--snapshot-id",
        &snapshot,
        "--block-index",
        "0",
        "--block-data",
        s(&block),
        "--data-length",
        "524288",
        "--checksum",
        &checksum,
        "--checksum-algorithm",
        "SHA256",
    ];
    failed(b(&put), "ResourceNotFoundException");
    failed(r(&put), "AccessDeniedException");
    let (ok, _, err) = a(&put);
    assert!(ok, "{err}");
    // A short block is refused whatever its checksum says.
    let short = dir.path().join("short");
    std::fs::write(&short, [9u8; 4096]).unwrap();
    let mut short_put = put;
    short_put[6] = s(&short);
    short_put[8] = "4096";
    failed(a(&short_put), "ValidationException");

    let message = failed(
        a(&[
            "complete-snapshot",
            "--snapshot-id",
            &snapshot,
            "--changed-blocks-count",
            "1",
            "--checksum",
            &checksum,
            "--checksum-algorithm",
            "SHA256",
            "--checksum-aggregation-method",
            "LINEAR",
        ]),
        "ValidationException",
    );
    assert!(message.contains("is deleted"), "{message}");
    failed(
        a(&["list-snapshot-blocks", "--snapshot-id", &snapshot]),
        "ResourceNotFoundException",
    );
    failed(
        a(&["list-snapshot-blocks", "--snapshot-id", "not-a-snapshot"]),
        "ValidationException",
    );
}

/// The S3 subset with the stock AWS CLI: `aws s3 mb` makes a bucket a store
/// task writes to, `aws s3 ls` lists buckets and archives (with prefixes),
/// `aws s3api head-object` shows the archive's metadata, `aws s3 cp` downloads
/// it in ranges (it is larger than one answer may be) byte-identical, and
/// `aws s3 rm` deletes it. Another account sees none of it.
#[test]
fn the_aws_cli_reaches_buckets_and_archives_through_s3() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("root.raw");
    std::fs::write(&disk, bytes(20 << 20, 7)).unwrap();
    let ami = ok_in(
        &[
            "image",
            "import",
            "--name",
            "s3 source",
            "--disk",
            &format!("/dev/xvda={}", disk.display()),
        ],
        Some(&data),
    )
    .trim()
    .to_owned();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "test test 000000000000\nKEYB secret-b 111122223333\nKEYR secret-r 000000000000 read-only\n",
    )
    .unwrap();
    let server = Server::start(&data, &["--credentials", s(&creds)]);
    let s3 = |key: &str, secret: &str, args: &[&str]| {
        let out = server.aws_service("s3", key, secret, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| {
        let (ok, out, err) = s3("test", "test", args);
        assert!(ok, "aws s3 {args:?}: {err}");
        out
    };
    let s3api = |args: &[&str]| server.aws_service("s3api", "test", "test", args);

    ok(&["mb", "s3://archives"]);
    let (made, _, err) = s3("KEYB", "secret-b", &["mb", "s3://archives"]);
    assert!(!made && err.contains("BucketAlreadyExists"), "{err}");
    let (made, _, err) = s3("KEYR", "secret-r", &["mb", "s3://reader-bucket"]);
    assert!(!made && err.contains("AccessDenied"), "{err}");
    assert!(ok(&["ls"]).contains("archives"));
    let (_, theirs, _) = s3("KEYB", "secret-b", &["ls"]);
    assert!(!theirs.contains("archives"), "{theirs}");

    server.json(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "archives/nightly/2026",
    ]);
    server.wait(&["wait", "store-image-task-complete", "--image-ids", &ami]);
    let key = format!("nightly/2026/{ami}.bin");
    let top = ok(&["ls", "s3://archives/"]);
    assert!(top.contains("PRE nightly/"), "{top}");
    let all = ok(&["ls", "s3://archives/", "--recursive"]);
    assert!(all.contains(&key), "{all}");
    let (listed, _, err) = s3("KEYB", "secret-b", &["ls", "s3://archives/"]);
    assert!(!listed && err.contains("AccessDenied"), "{err}");

    let head = s3api(&["head-object", "--bucket", "archives", "--key", &key]);
    assert!(
        head.status.success(),
        "{}",
        String::from_utf8_lossy(&head.stderr)
    );
    let head: Value = serde_json::from_slice(&head.stdout).unwrap();
    let size = head["ContentLength"].as_u64().unwrap();
    assert!(
        size > 16 << 20,
        "the archive is larger than one answer: {head}"
    );
    assert_eq!(head["Metadata"]["ami-name"], "s3 source", "{head}");

    // One answer holds at most 16 MiB: a whole-object GET says to use ranges,
    // and aws s3 cp (8 MiB ranges) downloads it.
    let whole = dir.path().join("whole.bin");
    let refused = s3api(&[
        "get-object",
        "--bucket",
        "archives",
        "--key",
        &key,
        s(&whole),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in ranges"));
    let copy = dir.path().join("copy.bin");
    ok(&["cp", &format!("s3://archives/{key}"), s(&copy)]);
    same_file(&copy, &data.join("s3/archives").join(&key));
    let verified = ok_in(&["archive", "verify", s(&copy)], None);
    assert!(!verified.is_empty());

    let (removed, _, err) = s3("KEYR", "secret-r", &["rm", &format!("s3://archives/{key}")]);
    assert!(!removed && err.contains("AccessDenied"), "{err}");
    ok(&["rm", &format!("s3://archives/{key}")]);
    assert!(!ok(&["ls", "s3://archives/", "--recursive"]).contains(&key));
}

/// The amistore CLI's image and bucket commands, locally and through a
/// server: `image import --owner` gives an image to another account;
/// `image list --json` prints exactly what `aws ec2 describe-images --owners
/// self` prints; through the server, `image import` writes with the EBS
/// direct APIs and RegisterImage, `image export` reads back the same bytes,
/// and `bucket create/list/objects/delete-object` go through its S3 front.
#[test]
fn the_amistore_cli_manages_images_and_buckets_locally_and_through_a_server() {
    let image = make_image();
    let data = image.dir.path().join("data");
    let root = &image.disks[0].1;
    let disk = format!("/dev/xvda={}", root.display());
    let local = |args: &[&str]| ok_in(args, Some(&data)).trim().to_owned();
    let mine = local(&[
        "image",
        "import",
        "--name",
        "local one",
        "--disk",
        &disk,
        "--tag",
        "k=v",
    ]);
    let theirs = local(&[
        "image",
        "import",
        "--name",
        "for b",
        "--disk",
        &disk,
        "--owner",
        "111122223333",
    ]);
    let listed = local(&["image", "list"]);
    assert!(
        listed.contains(&mine) && !listed.contains(&theirs),
        "{listed}"
    );
    let b_listed = local(&["image", "list", "--owner", "111122223333"]);
    assert!(b_listed.contains(&theirs), "{b_listed}");

    let creds = image.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "test test 000000000000\nKEYB secret-b 111122223333\n",
    )
    .unwrap();
    let server = Server::start(&data, &["--credentials", s(&creds)]);
    // The same JSON as the AWS CLI's, from the library and from the server.
    let local_json: Value = serde_json::from_str(&local(&["image", "list", "--json"])).unwrap();
    let aws_json = server.json(&["describe-images", "--owners", "self"]);
    assert_eq!(local_json, aws_json);
    let out = server.aws_with("KEYB", "secret-b", &["describe-images", "--owners", "self"]);
    let b_images: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        b_images["Images"][0]["ImageId"],
        theirs.as_str(),
        "--owner gave it to B"
    );

    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let remote = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["--endpoint", &endpoint])
            .args(args)
            .env_remove("AMISTORE_DATA_DIR")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let ok = |args: &[&str]| {
        let (ok, out, err) = remote(args);
        assert!(ok, "amistore --endpoint {args:?}: {err}");
        out.trim().to_owned()
    };

    // Images through the server.
    let (refused, _, err) = remote(&["image", "list", "--owner", "111122223333"]);
    assert!(
        !refused && err.contains("--owner is for this machine"),
        "{err}"
    );
    let imported = ok(&[
        "image",
        "import",
        "--name",
        "through the server",
        "--disk",
        &disk,
        "--tag",
        "via=ebs",
    ]);
    let table = ok(&["image", "list"]);
    assert!(
        table.contains(&imported) && table.contains("through the server"),
        "{table}"
    );
    let remote_json: Value = serde_json::from_str(&ok(&["image", "list", "--json"])).unwrap();
    let shown = remote_json["Images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ImageId"] == imported.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["Tags"][0]["Key"], "via");
    let out = image.dir.path().join("export");
    let files = ok(&["image", "export", &imported, "--out", s(&out)]);
    let exported = PathBuf::from(files.lines().next().unwrap());
    // A volume is whole GiB through the EBS direct APIs: the disk, then holes.
    let size = std::fs::metadata(root).unwrap().len();
    assert_eq!(std::fs::metadata(&exported).unwrap().len(), 1 << 30);
    assert!(sh(
        "cmp -n \"$3\" \"$1\" \"$2\"",
        &[root, &exported, Path::new(&size.to_string())]
    ));
    // Past the disk, only holes (and holes in the disk stay holes).
    let blocks = |p: &Path| layout(p).iter().map(|r| r.end - r.start).sum::<u64>();
    assert!(layout(&exported).last().unwrap().end <= size.div_ceil(512 * 1024));
    assert_eq!(blocks(&exported), blocks(root));
    let (again, _, err) = remote(&["image", "export", &imported, "--out", s(&out)]);
    assert!(!again && err.contains("--force"), "{err}");

    // Buckets and stored archives through the server.
    ok(&["bucket", "create", "remote-bucket"]);
    assert!(ok(&["bucket", "list"]).contains("remote-bucket"));
    let (refused, _, err) = remote(&["bucket", "create", "other", "--owner", "111122223333"]);
    assert!(
        !refused && err.contains("--owner is for this machine"),
        "{err}"
    );
    ok(&[
        "store-image",
        "--image-id",
        &imported,
        "--bucket",
        "remote-bucket/kept",
        "--wait",
    ]);
    let key = format!("kept/{imported}.bin");
    let objects = ok(&["bucket", "objects", "remote-bucket/kept"]);
    assert!(objects.contains(&key), "{objects}");
    let as_json: Value =
        serde_json::from_str(&ok(&["bucket", "objects", "remote-bucket", "--json"])).unwrap();
    assert_eq!(as_json["Contents"][0]["Key"], key.as_str());
    // The same listing from this machine's data directory.
    let here: Value =
        serde_json::from_str(&local(&["bucket", "objects", "remote-bucket", "--json"])).unwrap();
    assert_eq!(here["Contents"][0]["Key"], key.as_str());
    assert_eq!(here["Contents"][0]["Size"], as_json["Contents"][0]["Size"]);
    ok(&["bucket", "delete-object", &format!("remote-bucket/{key}")]);
    assert!(!ok(&["bucket", "objects", "remote-bucket"]).contains(&key));
    let (gone, _, err) = remote(&["bucket", "objects", "no-such-bucket"]);
    assert!(!gone && err.contains("NoSuchBucket"), "{err}");
    let (gone, _, err) = fails_local(
        &data,
        &["bucket", "delete-object", &format!("remote-bucket/{key}")],
    );
    assert!(!gone && err.contains("there is no object"), "{err}");
}

fn fails_local(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = amistore_in(args, Some(data));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A task the server runs reports the bytes it has moved and will move
/// (`bytesMoved`/`bytesTotal`, amistore's extension to the describe items),
/// rising while it runs; the AWS CLI still reads the answer; `amistore
/// --wait` follows them and says what it moved and how fast.
#[test]
fn a_running_task_reports_the_bytes_it_moved() {
    use amistore_api::client::{ClientCredentials, Endpoint, call};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 12 MiB at 4 MiB/s: about three seconds of store, then of restore.
    let disk = dir.path().join("slow.raw");
    std::fs::write(&disk, bytes(12 << 20, 5)).unwrap();
    let ami = ok_in(
        &[
            "image",
            "import",
            "--name",
            "counted",
            "--disk",
            &format!("/dev/xvda={}", disk.display()),
        ],
        Some(&data),
    )
    .trim()
    .to_owned();
    ok_in(&["bucket", "create", "counted"], Some(&data));
    let server = Server::start(&data, &["--max-bandwidth", "4"]);
    let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{}", server.port)).unwrap();
    let key = ClientCredentials {
        access_key: "test".into(),
        secret: "test".into(),
        session_token: None,
    };
    server.json(&[
        "create-store-image-task",
        "--image-id",
        &ami,
        "--bucket",
        "counted",
    ]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = call(
            &endpoint,
            &key,
            "us-east-1",
            "DescribeStoreImageTasks",
            &[("ImageId.1".into(), ami.clone())],
        )
        .unwrap();
        let field = |tag: &str| amistore_api::xml::text_of(&doc, tag);
        if field("storeTaskState").as_deref() == Some("Completed") {
            assert!(
                field("bytesMoved").is_none(),
                "an ended task has no counts: {doc}"
            );
            break;
        }
        if let (Some(moved), Some(total)) = (field("bytesMoved"), field("bytesTotal")) {
            let (moved, total): (u64, u64) = (moved.parse().unwrap(), total.parse().unwrap());
            assert_eq!(total, 12 << 20, "the image's allocated bytes");
            assert!(moved <= total);
            seen.push(moved);
            // The AWS CLI reads the same answer.
            server.json(&["describe-store-image-tasks", "--image-ids", &ami]);
        }
        assert!(Instant::now() < deadline, "the store did not end");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen.iter().any(|&m| m > 0),
        "bytes moved rise while the task runs: {seen:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_amistore"))
        .args(["--endpoint", &format!("http://127.0.0.1:{}", server.port)])
        .args([
            "restore-image",
            "--bucket",
            "counted",
            "--object-key",
            &format!("{ami}.bin"),
            "--name",
            "counted copy",
            "--wait",
        ])
        .env_remove("AMISTORE_DATA_DIR")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("moved 12.0 MiB in") && err.contains("MiB/s"),
        "{err}"
    );
}
