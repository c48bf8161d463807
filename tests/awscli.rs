//! End to end with the stock AWS CLI (`awscli` from PyPI, which `scripts/test`
//! installs into `.venv`) against `amistore serve`: store, wait, describe,
//! restore, wait for the image, and EC2's errors with their HTTP statuses.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
        Command::new(aws_cli())
            .args([
                "--endpoint-url",
                &format!("http://127.0.0.1:{}", self.port),
                "--output",
                "json",
                "ec2",
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
    let https = Command::new(env!("CARGO_BIN_EXE_amistore"))
        .args([
            "--endpoint",
            "https://example.com",
            "describe-store-image-tasks",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(!https.status.success());
    let err = String::from_utf8_lossy(&https.stderr);
    assert!(err.contains("must start with http://"), "{err}");
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
