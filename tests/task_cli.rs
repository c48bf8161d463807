//! End to end: `amistore store-image`, `restore-image` and
//! `describe-store-image-tasks` in embedded mode over a temporary data
//! directory, checked with the stock `zstd` and GNU `tar`, and a process killed
//! with SIGKILL in the middle of a store.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amistore_core::ports::TaskStore;
use amistore_core::task::{TaskKind, TaskState};
use amistore_local::embedded::{LocalEngine, LocalOptions, Recovery};
use amistore_local::task_store::SqliteTaskStore;
use serde_json::Value;
use support::*;

struct Data {
    path: PathBuf,
}

impl Data {
    fn new(image: &Image) -> Self {
        let data = Self {
            path: image.dir.path().join("data"),
        };
        data.ok(&["bucket", "create", "archive-bucket"]);
        data
    }
    fn ok(&self, args: &[&str]) -> String {
        ok_in(args, Some(&self.path)).trim().to_owned()
    }
    fn fails(&self, args: &[&str]) -> String {
        fails_in(args, Some(&self.path))
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
    fn object(&self, key: &str) -> PathBuf {
        self.path.join("s3/archive-bucket").join(key)
    }
    fn import(&self, image: &Image, name: &str) -> String {
        let mut args = vec![
            "image",
            "import",
            "--name",
            name,
            "--description",
            "ウェブ server",
            "--tag",
            "Name=web",
        ];
        let disks = image.disk_args();
        args.extend(disks.iter().map(String::as_str));
        self.ok(&args)
    }
    /// Stores `ami` into `bucket` (BUCKET[/PATH]); returns the key.
    fn store(&self, ami: &str, bucket: &str, extra: &[&str]) -> String {
        let mut args = vec!["store-image", "--image-id", ami, "--bucket", bucket];
        args.extend(extra);
        self.ok(&args)
    }
    fn in_progress_gib(&self) -> u64 {
        let db = SqliteTaskStore::open(&self.path.join("tasks.db"), None).unwrap();
        let me = amistore_core::ids::AccountId::local_default();
        db.in_progress_gib(&me, TaskKind::Store).unwrap()
            + db.in_progress_gib(&me, TaskKind::Restore).unwrap()
    }
}

#[test]
fn store_then_restore_gives_back_identical_disks_and_describe_reports_it() {
    let image = make_image();
    let data = Data::new(&image);
    let ami = data.import(&image, "e2e source (v1)");

    let key = data.store(
        &ami,
        "archive-bucket/p1/p2",
        &[
            "--s3-object-tag",
            "team=storage",
            "--s3-object-tag",
            "cost-center=42",
        ],
    );
    assert_eq!(key, format!("p1/p2/{ami}.bin"));
    let object = data.object(&key);

    // Stock tools read the object.
    assert!(
        sh("zstd -q -t \"$1\"", &[&object]),
        "zstd -t rejected the object"
    );
    let out = image.dir.path().join("tar");
    fs::create_dir(&out).unwrap();
    assert!(sh(
        "zstd -dc \"$1\" | tar -x -C \"$2\" manifest.json disk0-xvda.raw disk2-xvdg.raw",
        &[&object, &out]
    ));
    same_file(&image.disks[0].1, &out.join("disk0-xvda.raw"));
    same_file(&image.disks[2].1, &out.join("disk2-xvdg.raw"));
    assert!(
        sh(
            "zstd -dc \"$1\" | tar -x -O disk1-xvdf.raw | cmp - \"$2\"",
            &[&object, &image.disks[1].1]
        ),
        "the 9 GiB member differs through tar"
    );
    let manifest: Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image"]["sourceImageId"], ami.as_str());
    assert_eq!(manifest["image"]["tags"][0]["key"], "Name");

    // Metadata and tags sit beside the object.
    let sidecar = object.with_file_name(format!(".amistore.{ami}.bin.json"));
    let info: Value = serde_json::from_slice(&fs::read(sidecar).unwrap()).unwrap();
    let meta = &info["metadata"];
    assert_eq!(meta["ami-name"], "e2e source (v1)");
    assert_eq!(
        meta["ami-description"], "=?UTF-8?B?44Km44Kn44OWIHNlcnZlcg==?=",
        "RFC 2047"
    );
    assert_eq!(meta["ami-owner-account"], "000000000000");
    assert!(
        meta["ami-registration-date"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(meta["ami-store-date"].as_str().unwrap().ends_with('Z'));
    assert_eq!(info["tags"].as_array().unwrap().len(), 2);

    // Restore under a new name; export; compare byte for byte and hole for hole.
    let restored = data.ok(&[
        "restore-image",
        "--bucket",
        "archive-bucket",
        "--object-key",
        &key,
        "--name",
        "e2e restored",
        "--tag-specification",
        "image:restored=yes",
        "--tag-specification",
        "snapshot:copy=1",
    ]);
    assert!(
        restored.starts_with("ami-") && restored != ami,
        "{restored}"
    );
    let exported = image.dir.path().join("exported");
    let files = data.ok(&["image", "export", &restored, "--out", s(&exported)]);
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(files.len(), 3);
    for ((_, src), got) in image.disks.iter().zip(&files) {
        same_file(src, Path::new(got));
        assert_eq!(
            layout(Path::new(got)),
            layout(src),
            "{got}: allocated blocks differ"
        );
    }
    let list: Value = data.json(&["image", "list", "--json"]);
    let new = list["Images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ImageId"] == restored.as_str())
        .unwrap();
    assert_eq!(new["State"], "available");
    assert_eq!(new["Name"], "e2e restored");
    assert_eq!(new["Description"], "ウェブ server");
    let tags: Vec<&str> = new["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["Key"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["Name", "restored"]);
    // Snapshot tags are in the library's record (DescribeImages shows none).
    let record: Value = serde_json::from_slice(
        &std::fs::read(data.path.join(format!("images/{restored}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["snapshots"][1]["tags"][0]["key"], "copy");

    // Describe: Completed at 100, shaped like the AWS CLI's output.
    let tasks = data.json(&["describe-store-image-tasks"]);
    let results = tasks["StoreImageTaskResults"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let t = &results[0];
    assert_eq!(t["AmiId"], ami.as_str());
    assert_eq!(t["Bucket"], "archive-bucket");
    assert_eq!(t["S3objectKey"], key.as_str());
    assert_eq!(t["StoreTaskState"], "Completed");
    assert_eq!(t["ProgressPercentage"], 100);
    assert!(t.get("StoreTaskFailureReason").is_none());
    assert!(t["TaskStartTime"].as_str().unwrap().ends_with('Z'));
    assert!(tasks.get("NextToken").is_none());

    // A second store (another path in another bucket), then filters and pages.
    data.ok(&["bucket", "create", "second-bucket"]);
    data.store(&restored, "second-bucket", &[]);
    let by_id = data.json(&["describe-store-image-tasks", "--image-id", &restored]);
    assert_eq!(by_id["StoreImageTaskResults"][0]["Bucket"], "second-bucket");
    let by_bucket = data.json(&[
        "describe-store-image-tasks",
        "--filter",
        "Name=bucket,Values=archive-bucket",
    ]);
    assert_eq!(
        by_bucket["StoreImageTaskResults"].as_array().unwrap().len(),
        1
    );
    let none = data.json(&[
        "describe-store-image-tasks",
        "--filter",
        "task-state=Failed,InProgress",
    ]);
    assert!(none["StoreImageTaskResults"].as_array().unwrap().is_empty());
    let page1 = data.json(&["describe-store-image-tasks", "--max-results", "1"]);
    assert_eq!(
        page1["StoreImageTaskResults"][0]["AmiId"],
        restored.as_str(),
        "newest first"
    );
    let token = page1["NextToken"].as_str().unwrap();
    let page2 = data.json(&[
        "describe-store-image-tasks",
        "--max-results",
        "1",
        "--next-token",
        token,
    ]);
    assert_eq!(page2["StoreImageTaskResults"][0]["AmiId"], ami.as_str());
    assert!(page2.get("NextToken").is_none());
    let err = data.fails(&[
        "describe-store-image-tasks",
        "--next-token",
        &format!("{token}x"),
    ]);
    assert!(err.contains("not valid"), "{err}");
    let err = data.fails(&[
        "describe-store-image-tasks",
        "--image-id",
        &ami,
        "--max-results",
        "5",
    ]);
    assert!(err.contains("cannot be used together"), "{err}");
    assert_eq!(data.in_progress_gib(), 0);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let image = make_image();
    let data = Data::new(&image);
    let ami = data.import(&image, "bad input source");
    let key = data.store(&ami, "archive-bucket", &[]);
    let before = data.ok(&["describe-store-image-tasks"]);
    let images_before = data.ok(&["image", "list"]);

    let store =
        |bucket: &str, id: &str| data.fails(&["store-image", "--image-id", id, "--bucket", bucket]);
    for (err, needle) in [
        (store("archive-bucket", "ami-xyz"), "not a valid image id"),
        (
            store("archive-bucket", "ami-0123456789abcdef0"),
            "does not exist",
        ),
        (
            store("missing-bucket", &ami),
            "bucket missing-bucket does not exist",
        ),
        (store("archive-bucket/../etc", &ami), "\"..\""),
        (store("archive-bucket//x", &ami), "empty path segment"),
        (store("archive-bucket/a\u{7}b", &ami), "control character"),
        (store("Archive_Bucket", &ami), "not a valid bucket name"),
        (store("archive-bucket/again", &ami), "once per bucket"),
    ] {
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        assert!(err.contains("error"), "{err}");
    }
    let restore = |key: &str, name: Option<&str>| {
        let mut args = vec![
            "restore-image",
            "--bucket",
            "archive-bucket",
            "--object-key",
            key,
        ];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        data.fails(&args)
    };
    let object = fs::read(data.object(&key)).unwrap();
    fs::write(data.object("truncated.bin"), &object[..object.len() / 2]).unwrap();
    fs::write(data.object("notes.bin"), b"just some text, not an archive").unwrap();
    let v2 = amistore_core::archive::testing::with_manifest(&object, |m| m["version"] = 2.into())
        .unwrap();
    fs::write(data.object("v2.bin"), v2).unwrap();
    let long = "n".repeat(129);
    for (err, needle) in [
        (restore(&key, None), "already exists"),
        (restore("missing.bin", Some("x-1")), "does not exist"),
        (restore("../escape.bin", Some("x-2")), "\"..\""),
        (restore("truncated.bin", Some("x-3")), "archive"),
        (restore("notes.bin", Some("x-4")), "not an amistore archive"),
        (
            restore("v2.bin", Some("x-5")),
            "unsupported archive format version 2",
        ),
        (restore(&key, Some(&long)), "3 to 128 characters"),
    ] {
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    assert_eq!(
        data.ok(&["describe-store-image-tasks"]),
        before,
        "no task was added"
    );
    assert_eq!(
        data.ok(&["image", "list"]),
        images_before,
        "no image was added"
    );
    assert_eq!(data.in_progress_gib(), 0);
}

/// Starts a store of a ~768 MiB image and SIGKILLs it once its first part is
/// uploaded. Returns the data directory and the image id.
fn kill_mid_store(dir: &Path) -> (Data, String) {
    let disk = dir.join("big-random.raw");
    assert!(sh(
        "head -c 805306368 /dev/urandom > \"$1\" && truncate -s 1G \"$1\"",
        &[&disk]
    ));
    let data = Data {
        path: dir.join("data"),
    };
    data.ok(&["bucket", "create", "archive-bucket"]);
    let ami = data.ok(&[
        "image",
        "import",
        "--name",
        "killed mid-store",
        "--disk",
        &format!("/dev/xvda={}", disk.display()),
    ]);
    fs::remove_file(&disk).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_amistore"))
        .args([
            "store-image",
            "--image-id",
            &ami,
            "--bucket",
            "archive-bucket",
        ])
        .env("AMISTORE_DATA_DIR", &data.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let uploads = data.path.join("s3/archive-bucket/.amistore-uploads");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let staged = fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .any(|u| {
                fs::read_dir(u.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|p| {
                        // A part waits as part-NNNNN.<etag> or, once joined into
                        // the object, is listed in joined.json.
                        let name = p.file_name().to_string_lossy().into_owned();
                        name.starts_with("part-") || name == "joined.json"
                    })
            });
        if staged {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the store ended before a part was staged"
        );
        assert!(Instant::now() < deadline, "no part was staged");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    (data, ami)
}

#[test]
fn a_store_killed_with_sigkill_is_failed_cleanly_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ami) = kill_mid_store(dir.path());
    assert!(
        data.in_progress_gib() > 0,
        "the killed task still holds its quota"
    );

    // A describe only reads: the task is still in progress.
    let described = |expect: &str| -> Value {
        let out = amistore_in(&["describe-store-image-tasks"], Some(&data.path));
        assert!(out.status.success());
        let tasks: Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = tasks["StoreImageTaskResults"][0].clone();
        assert_eq!(t["StoreTaskState"], expect, "{t}");
        t
    };
    described("InProgress");
    // The next command that starts a task fails the dead command's task.
    let out = amistore_in(
        &[
            "store-image",
            "--image-id",
            &ami,
            "--bucket",
            "no-such-bucket",
        ],
        Some(&data.path),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("was interrupted"));
    let t = &described("Failed");
    assert_eq!(t["AmiId"], ami.as_str());
    assert_eq!(t["StoreTaskState"], "Failed");
    assert!(
        t["StoreTaskFailureReason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert_eq!(data.in_progress_gib(), 0, "quota released");
    let spooled = fs::read_dir(data.path.join("work/spool")).map_or(0, |d| d.count());
    assert_eq!(spooled, 0, "the dead process's spooled units are removed");
    let bucket = data.path.join("s3/archive-bucket");
    let left: Vec<_> = fs::read_dir(&bucket)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let uploads = fs::read_dir(bucket.join(".amistore-uploads")).map_or(0, |d| d.count());
    assert_eq!(
        (left.len(), uploads),
        (1, 0),
        "only the empty staging folder remains: {left:?}"
    );
    // The image can be stored again.
    let key = data.store(&ami, "archive-bucket", &[]);
    assert!(sh("zstd -q -t \"$1\"", &[&data.object(&key)]));
}

#[test]
fn a_store_killed_with_sigkill_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = kill_mid_store(dir.path());
    let local = LocalEngine::open(&data.path, LocalOptions::default(), None).unwrap();
    let resumed = local.recover(Recovery::Resume).unwrap();
    assert_eq!(resumed.len(), 1);
    let task = local.wait(&resumed[0]).unwrap();
    assert_eq!(
        task.state,
        TaskState::Completed,
        "{:?}",
        task.failure_reason
    );
    assert_eq!(task.units_done, task.units_total);
    assert!(task.units_total >= 3);
    let me = amistore_core::ids::AccountId::local_default();
    assert_eq!(
        local
            .engine
            .tasks
            .in_progress_gib(&me, TaskKind::Store)
            .unwrap(),
        0
    );
    assert!(sh("zstd -q -t \"$1\"", &[&data.object(task.key.as_str())]));
    data.ok(&["archive", "verify", s(&data.object(task.key.as_str()))]);
    assert!(
        local.recover(Recovery::Resume).unwrap().is_empty(),
        "nothing left to recover"
    );
}

/// `--endpoint` used to be ignored by the commands that cannot use it: `bucket
/// create` made a bucket on this machine instead of the server's.
#[test]
fn commands_that_cannot_use_an_endpoint_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The bucket and image commands go to the server (here, none answers);
    // nothing is done on this machine instead.
    for args in [
        &[
            "--endpoint",
            "http://127.0.0.1:9",
            "bucket",
            "create",
            "x-bucket",
        ][..],
        &["--endpoint", "http://127.0.0.1:9", "image", "list"],
    ] {
        let err = fails_in(args, Some(&data));
        assert!(
            err.contains("cannot reach http://127.0.0.1:9") || err.contains("no AWS credentials"),
            "{args:?}: {err}"
        );
    }
    for args in [
        &[
            "--endpoint",
            "http://127.0.0.1:9",
            "archive",
            "inspect",
            "nothing.bin",
        ][..],
        &["--endpoint", "http://127.0.0.1:9", "serve"],
    ] {
        let err = fails_in(args, Some(&data));
        assert!(
            err.contains("cannot be used with `amistore"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !data.join("s3/x-bucket").exists(),
        "a local bucket was made"
    );
}

/// JSON output is shaped and indented as `aws --output json` prints it.
#[test]
fn json_output_is_indented_as_the_aws_cli_indents_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok_in(
        &["describe-store-image-tasks"],
        Some(&dir.path().join("data")),
    );
    assert_eq!(out, "{\n    \"StoreImageTaskResults\": []\n}\n");
}

/// Each plausible mistake gets a message that says what to do next, once.
#[test]
fn mistakes_get_messages_that_say_what_to_do_next() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("d.raw");
    fs::write(&disk, bytes(MIB, 1)).unwrap();
    let ami = ok_in(
        &[
            "image",
            "import",
            "--name",
            "source",
            "--disk",
            &format!("/dev/xvda={}", s(&disk)),
        ],
        Some(&data),
    )
    .trim()
    .to_owned();

    let err = fails_in(
        &["store-image", "--image-id", &ami, "--bucket", "no-bucket"],
        Some(&data),
    );
    assert!(err.contains("amistore bucket create no-bucket"), "{err}");
    let err = fails_in(
        &[
            "store-image",
            "--image-id",
            &ami,
            "--bucket",
            "s3://no-bucket/p",
        ],
        Some(&data),
    );
    assert!(err.contains("give the bucket without it"), "{err}");

    ok_in(&["bucket", "create", "archive-bucket"], Some(&data));
    let key = ok_in(
        &[
            "store-image",
            "--image-id",
            &ami,
            "--bucket",
            "archive-bucket",
        ],
        Some(&data),
    );
    let key = key.trim();
    // The stored AMI's name is taken by the source itself.
    let err = fails_in(
        &[
            "restore-image",
            "--bucket",
            "archive-bucket",
            "--object-key",
            key,
        ],
        Some(&data),
    );
    assert!(err.contains("add --name NAME"), "{err}");

    let missing = dir.path().join("missing.raw");
    let err = fails_in(
        &[
            "image",
            "import",
            "--name",
            "other",
            "--disk",
            &format!("/dev/xvda={}", s(&missing)),
        ],
        Some(&data),
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    // A damaged data frame: the message names the object and the command that
    // checks it, and the unit once.
    let object = data.join("s3/archive-bucket").join(key);
    let mut bytes_on_disk = fs::read(&object).unwrap();
    let frame = bytes_on_disk
        .windows(4)
        .enumerate()
        .skip(1)
        .find(|(_, w)| *w == [0x28, 0xb5, 0x2f, 0xfd])
        .map(|(i, _)| i)
        .unwrap();
    for b in &mut bytes_on_disk[frame + 6..frame + 14] {
        *b ^= 0x5a;
    }
    fs::write(&object, &bytes_on_disk).unwrap();
    let err = fails_in(
        &[
            "restore-image",
            "--bucket",
            "archive-bucket",
            "--object-key",
            key,
            "--name",
            "damaged copy",
        ],
        Some(&data),
    );
    assert!(err.contains("amistore archive verify"), "{err}");
    assert!(err.contains(&format!("archive-bucket/{key}")), "{err}");
    assert!(!err.contains("unit 0: unit 0"), "{err}");

    // A host name to listen on resolves.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_amistore"))
        .args([
            "serve",
            "--listen",
            &format!("localhost:{port}"),
            "--data-dir",
            s(&data),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "localhost:{port} was not served"
        );
        assert!(server.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let err = fails_in(
        &["serve", "--listen", "no-such-host.invalid:9000"],
        Some(&data),
    );
    assert!(err.contains("IP:PORT"), "{err}");
}

/// Help keeps each command's options apart from the global ones; shell
/// completions and a manual page come with the binary.
#[test]
fn help_completions_and_the_manual_page() {
    let help = ok_in(&["archive", "pack", "--help"], None);
    let (own, global) = help
        .split_once("Global options:")
        .expect("a Global options section");
    assert!(own.contains("--disk") && own.contains("512 KiB"), "{own}");
    // Options a command ignores are not offered to it: the quota limits and
    // the backend belong to the commands that run the engine.
    assert!(
        !help.contains("--store-limit-gib") && !help.contains("--backend"),
        "{help}"
    );
    assert!(
        global.contains("--data-dir") && global.contains("--quiet"),
        "{global}"
    );
    let store = ok_in(&["store-image", "--help"], None);
    let engine = store
        .split_once("Engine options:")
        .expect("an Engine options section")
        .1;
    assert!(
        engine.contains("--store-limit-gib") && engine.contains("--backend"),
        "{store}"
    );
    let describe = ok_in(&["describe-store-image-tasks", "--help"], None);
    assert!(
        !describe.contains("--store-limit-gib") && describe.contains("--backend"),
        "{describe}"
    );
    assert!(
        own.contains("arm64_mac"),
        "--architecture lists its values: {own}"
    );
    let serve = ok_in(&["serve", "--help"], None);
    assert!(serve.contains("[read-only]"), "{serve}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("amistore.bash");
    fs::write(&script, ok_in(&["completions", "bash"], None)).unwrap();
    assert!(
        sh("bash -n \"$1\"", &[&script]),
        "the bash completion does not parse"
    );
    assert!(fs::read_to_string(&script).unwrap().contains("store-image"));
    for shell in ["zsh", "fish"] {
        assert!(ok_in(&["completions", shell], None).contains("amistore"));
    }
    let page = ok_in(&["man"], None);
    assert!(page.contains(".TH amistore 1"), "{}", &page[..200]);
    assert!(
        page.contains("store\\-image"),
        "the page lists the commands"
    );
}

/// The configuration file gives the data directory, the quota limits and an
/// endpoint; the command line and the environment win over it; an endpoint
/// from the file applies only where a command can talk to a server, and
/// `--endpoint ""` runs a command here despite it.
#[test]
fn a_configuration_file_gives_defaults_that_the_command_line_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let config = dir.path().join("config.toml");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(args)
            .env_remove("AMISTORE_DATA_DIR")
            .env_remove("AMISTORE_ENDPOINT")
            .env("AMISTORE_CONFIG", &config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nstore_limit_gib = 7\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (ok, _, err) = run(&["bucket", "create", "configured"]);
    assert!(ok, "{err}");
    assert!(
        data.join("s3/configured").is_dir(),
        "the file's data directory"
    );
    let quotas = |args: &[&str]| -> Value {
        let (ok, out, err) = run(args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    assert_eq!(
        quotas(&["describe-task-quotas"])["TaskQuotas"][0]["LimitGiB"],
        7
    );
    assert_eq!(
        quotas(&["describe-task-quotas", "--store-limit-gib", "9"])["TaskQuotas"][0]["LimitGiB"],
        9,
        "the command line wins"
    );
    assert_eq!(
        quotas(&["describe-task-quotas"])["TaskQuotas"][1]["LimitGiB"],
        600,
        "what the file leaves out keeps its default"
    );

    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nendpoint = \"http://127.0.0.1:9\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (ok, _, err) = run(&["bucket", "list"]);
    assert!(
        !ok && err.contains("cannot reach http://127.0.0.1:9"),
        "{err}"
    );
    let (ok, out, err) = run(&["--endpoint", "", "bucket", "list"]);
    assert!(
        ok && out.contains("configured"),
        "--endpoint \"\" runs here: {err}"
    );
    let (ok, _, err) = run(&["archive", "inspect", "/nonexistent.bin"]);
    assert!(
        !ok && !err.contains("--endpoint"),
        "archive ignores the file's endpoint: {err}"
    );

    std::fs::write(&config, "data-dir = \"typo\"\n").unwrap();
    let (ok, _, err) = run(&["bucket", "list"]);
    assert!(
        !ok && err.contains("is not valid") && err.contains("data-dir"),
        "{err}"
    );
}

/// Remote mode signs as the named profile of the shared files when the
/// environment holds no keys, and the server tells the right key from a wrong
/// one. Built with the `aws` feature, the SDK's chain finds them, and also
/// runs a profile's `credential_process`.
#[test]
fn remote_mode_signs_as_the_named_profile_of_the_shared_files() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("server-keys");
    fs::write(&keys, "KEYP secret-p 000000000000\n").unwrap();
    let server = Serve::start(&dir.path().join("data"), &["--credentials", s(&keys)]);
    let shared = dir.path().join("credentials");
    fs::write(
        &shared,
        "# keys the server does not know\n[default]\naws_access_key_id = KEYX\n\
         aws_secret_access_key = wrong\n\n[work]\naws_access_key_id = KEYP\n\
         ; the right secret\naws_secret_access_key = secret-p\n",
    )
    .unwrap();
    let config = dir.path().join("config");
    fs::write(
        &config,
        "[profile process]\ncredential_process = printf \
         '{\"Version\":1,\"AccessKeyId\":\"KEYP\",\"SecretAccessKey\":\"secret-p\"}'\n",
    )
    .unwrap();
    let endpoint = format!("http://{}", server.host());
    let run = |profile: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["--endpoint", &endpoint, "describe-task-quotas"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AMISTORE_ENDPOINT")
            .env("AWS_PROFILE", profile)
            .env("AWS_SHARED_CREDENTIALS_FILE", &shared)
            .env("AWS_CONFIG_FILE", &config)
            // Nothing to find there; the SDK's chain would wait for it.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run("work");
    assert!(ok, "{err}");
    assert!(out.contains("TaskQuotas"), "{out}");
    let (ok, _, err) = run("default");
    assert!(!ok && err.contains("AuthFailure"), "{err}");
    let (ok, _, err) = run("nowhere");
    assert!(!ok && err.contains("no AWS credentials"), "{err}");
    // Which reader looked: the SDK's chain lists the providers it tried.
    if cfg!(feature = "aws") {
        assert!(
            err.contains("Profile") && err.contains("Environment"),
            "{err}"
        );
    } else {
        assert!(err.contains("need a build with --features aws"), "{err}");
    }
    if cfg!(feature = "aws") {
        let (ok, out, err) = run("process");
        assert!(ok, "{err}");
        assert!(out.contains("TaskQuotas"), "{out}");
    }
}
