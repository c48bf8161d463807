//! The actions over a real engine (local adapters, in-process runner), driven
//! by form bodies exactly as botocore serialises them.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::unix::fs::FileExt;

use amistore_api::ApiError;
use amistore_api::actions::handle;
use amistore_api::query::Params;
use amistore_core::ids::AccountId;
use amistore_core::image::{Architecture, ImageSpec};
use amistore_core::task::QuotaLimits;
use amistore_local::embedded::{LocalEngine, LocalOptions};
use amistore_local::workflow::RunnerOptions;

struct World {
    _dir: tempfile::TempDir,
    local: LocalEngine,
    image: String,
}

fn world(limits: QuotaLimits) -> World {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("root.raw");
    let f = File::create(&disk).unwrap();
    f.set_len(8 << 20).unwrap();
    f.write_all_at(&[7u8; 1 << 20], 1 << 20).unwrap();
    let local = LocalEngine::open(
        &dir.path().join("data"),
        LocalOptions {
            limits,
            runner: RunnerOptions {
                max_map_concurrency: 2,
                retry_delay_scale: 0.0,
                ..RunnerOptions::default()
            },
            ..LocalOptions::default()
        },
        None,
    )
    .unwrap();
    let spec = ImageSpec {
        name: "api source".parse().unwrap(),
        description: None,
        architecture: Architecture::X86_64,
        boot_mode: None,
        root_device_name: None,
        tags: vec![],
    };
    let image = local
        .library
        .import(&me(), &spec, &[("/dev/xvda".parse().unwrap(), disk)])
        .unwrap()
        .image_id
        .to_string();
    local
        .buckets
        .create_bucket(&"b-1".parse().unwrap())
        .unwrap();
    World {
        _dir: dir,
        local,
        image,
    }
}

fn me() -> AccountId {
    AccountId::local_default()
}

impl World {
    fn call_as(&self, account: &AccountId, form: &str) -> Result<String, ApiError> {
        let params = Params::parse(form.as_bytes())?;
        handle(&self.local.engine, account, params)
            .map(|(action, body)| body.document(&action, "req-1"))
    }
    fn call(&self, form: &str) -> Result<String, ApiError> {
        self.call_as(&me(), form)
    }
    fn error(&self, form: &str) -> ApiError {
        self.call(form).unwrap_err()
    }
    fn wait_all(&self) {
        for t in self.local.engine.tasks.in_progress().unwrap() {
            self.local.wait(&t.id).unwrap();
        }
    }
}

fn between<'a>(xml: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"));
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    &xml[start..end]
}

const V: &str = "Version=2016-11-15";

#[test]
fn store_describe_restore_through_the_protocol() {
    let w = world(QuotaLimits::default());
    let xml = w
        .call(&format!("Action=CreateStoreImageTask&{V}&ImageId={}&Bucket=b-1%2Fp1%2Fp2&S3ObjectTag.1.Key=k&S3ObjectTag.1.Value=v", w.image))
        .unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<CreateStoreImageTaskResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>req-1</requestId>"));
    let key = between(&xml, "objectKey").to_owned();
    assert_eq!(key, format!("p1/p2/{}.bin", w.image));
    w.wait_all();

    let xml = w
        .call(&format!(
            "Action=DescribeStoreImageTasks&{V}&ImageId.1={}",
            w.image
        ))
        .unwrap();
    assert_eq!(between(&xml, "amiId"), w.image);
    assert_eq!(between(&xml, "s3objectKey"), key);
    assert_eq!(between(&xml, "storeTaskState"), "Completed");
    assert_eq!(between(&xml, "progressPercentage"), "100");
    assert!(between(&xml, "taskStartTime").ends_with('Z'));
    assert!(!xml.contains("nextToken") && !xml.contains("storeTaskFailureReason"));

    let xml = w
        .call(&format!("Action=CreateRestoreImageTask&{V}&Bucket=b-1&ObjectKey={}&Name=api+copy&TagSpecification.1.ResourceType=image&TagSpecification.1.Tag.1.Key=a&TagSpecification.1.Tag.1.Value=b", key.replace('/', "%2F")))
        .unwrap();
    let new = between(&xml, "imageId").to_owned();
    assert!(new.starts_with("ami-") && new != w.image);
    w.wait_all();
    let xml = w
        .call(&format!("Action=DescribeRestoreImageTasks&{V}"))
        .unwrap();
    assert_eq!(between(&xml, "imageId"), new);
    assert_eq!(between(&xml, "restoreTaskState"), "Completed");
    assert_eq!(between(&xml, "objectKey"), key);

    // Another account sees none of it.
    let other: AccountId = "111122223333".parse().unwrap();
    let xml = w
        .call_as(&other, &format!("Action=DescribeStoreImageTasks&{V}"))
        .unwrap();
    assert!(xml.contains("<storeImageTaskResultSet/>"), "{xml}");
    let err = w
        .call_as(
            &other,
            &format!(
                "Action=CreateStoreImageTask&{V}&ImageId={}&Bucket=b-1",
                w.image
            ),
        )
        .unwrap_err();
    assert_eq!(err.code, "InvalidAMIID.NotFound");
}

#[test]
fn errors_have_ec2_codes_and_dry_runs_change_nothing() {
    let w = world(QuotaLimits::default());
    let img = w.image.clone();
    let store = |rest: &str| format!("Action=CreateStoreImageTask&{V}&{rest}");
    let restore = |rest: &str| format!("Action=CreateRestoreImageTask&{V}&{rest}");
    let describe = |rest: &str| format!("Action=DescribeStoreImageTasks&{V}&{rest}");
    let cases: Vec<(String, &str, u16)> = vec![
        (
            store(&format!("ImageId={img}&Bucket=b-1&DryRun=true")),
            "DryRunOperation",
            412,
        ),
        (
            restore("Bucket=b-1&ObjectKey=x.bin&DryRun=true"),
            "DryRunOperation",
            412,
        ),
        (describe("DryRun=true"), "DryRunOperation", 412),
        (
            store("ImageId=ami-xyz&Bucket=b-1"),
            "InvalidAMIID.Malformed",
            400,
        ),
        (
            store("ImageId=ami-0123456789abcdef0&Bucket=b-1"),
            "InvalidAMIID.NotFound",
            400,
        ),
        (store(&format!("ImageId={img}")), "MissingParameter", 400),
        (
            store(&format!("ImageId={img}&Bucket=b-1%2F..%2Fx")),
            "InvalidParameterValue",
            400,
        ),
        (
            store(&format!("ImageId={img}&Bucket=b-1&Bogus=1")),
            "UnknownParameter",
            400,
        ),
        (
            describe(&format!("ImageId.1={img}&MaxResults=5")),
            "InvalidParameterCombination",
            400,
        ),
        (describe("MaxResults=0"), "InvalidParameterValue", 400),
        (describe("NextToken=forged.token"), "InvalidNextToken", 400),
        (
            describe("Filter.1.Name=owner&Filter.1.Value.1=x"),
            "InvalidParameterValue",
            400,
        ),
        (
            restore("Bucket=b-1&ObjectKey=x.bin&Name=no*stars"),
            "InvalidAMIName.Malformed",
            400,
        ),
        (
            restore(&format!(
                "Bucket=b-1&ObjectKey=x.bin&Name={}",
                "n".repeat(129)
            )),
            "InvalidAMIName.Malformed",
            400,
        ),
        (
            restore("Bucket=b-1&ObjectKey=missing.bin"),
            "InvalidParameterValue",
            400,
        ),
        (format!("Action=StealImage&{V}"), "InvalidAction", 400),
        (
            format!("Action=CancelStoreImageTask&{V}&ImageId={img}"),
            "IncorrectState",
            400,
        ),
        (
            format!("Action=CancelStoreImageTask&{V}"),
            "MissingParameter",
            400,
        ),
        (
            "Action=DescribeStoreImageTasks".to_owned(),
            "MissingParameter",
            400,
        ),
        (V.to_owned(), "MissingAction", 400),
    ];
    for (form, code, status) in cases {
        let err = w.error(&form);
        assert_eq!(
            (err.code.as_ref(), err.status),
            (code, status),
            "{form}: {}",
            err.message
        );
    }
    assert!(
        w.local.engine.tasks.in_progress().unwrap().is_empty(),
        "no dry run started anything"
    );
    let xml = w.call(&describe("")).unwrap();
    assert!(xml.contains("<storeImageTaskResultSet/>"));

    // A restore under a taken name.
    let xml = w
        .call(&store(&format!("ImageId={img}&Bucket=b-1")))
        .unwrap();
    w.wait_all();
    let key = between(&xml, "objectKey").to_owned();
    let err = w.error(&restore(&format!("Bucket=b-1&ObjectKey={key}")));
    assert_eq!(err.code, "InvalidAMIName.Duplicate", "{}", err.message);
}

#[test]
fn the_quota_answers_resource_limit_exceeded() {
    let w = world(QuotaLimits {
        store_gib: 0,
        restore_gib: 0,
    });
    let err = w.error(&format!(
        "Action=CreateStoreImageTask&{V}&ImageId={}&Bucket=b-1",
        w.image
    ));
    assert_eq!(
        (err.code.as_ref(), err.status),
        ("ResourceLimitExceeded", 400)
    );
}

/// Percent-encodes a form value.
fn form(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn text_xml_cannot_carry_and_reserved_tags_are_refused_at_the_door() {
    let w = world(QuotaLimits::default());
    let key = between(
        &w.call(&format!(
            "Action=CreateStoreImageTask&{V}&ImageId={}&Bucket=b-1",
            w.image
        ))
        .unwrap(),
        "objectKey",
    )
    .to_owned();
    w.wait_all();
    for (tag_key, tag_value) in [
        // U+FFFF: XML 1.0 cannot carry it; every later DescribeImages of the
        // account would be unreadable.
        ("Name", "web\u{FFFF}"),
        ("Name", "web\u{FFFE}"),
        ("Name", "bell\u{7}"),
        // amistore's own state lives in these tags on EC2.
        ("amistore:state", "failed"),
    ] {
        let err = w.error(&format!(
            "Action=CreateRestoreImageTask&{V}&Bucket=b-1&ObjectKey={}&Name=copy-{}\
             &TagSpecification.1.ResourceType=image&TagSpecification.1.Tag.1.Key={}\
             &TagSpecification.1.Tag.1.Value={}",
            form(&key),
            tag_key.len() + tag_value.len(),
            form(tag_key),
            form(tag_value)
        ));
        assert_eq!(
            err.code, "InvalidParameterValue",
            "{tag_key}={tag_value:?}: {err:?}"
        );
    }
    // Nothing was made, and every answer is still XML a parser reads.
    let images = w
        .call(&format!("Action=DescribeImages&{V}&Owner.1=self"))
        .unwrap();
    assert_eq!(images.matches("<imageId>").count(), 1, "{images}");
    assert!(
        !images.contains('\u{FFFF}') && !images.contains('\u{FFFE}'),
        "{images}"
    );
}

/// A read-only key could make one DescribeImages cost tens of seconds with
/// many long wildcard patterns: the values are bounded, and the longest
/// allowed pattern that almost matches everywhere is answered.
#[test]
fn filters_are_bounded_in_number_and_length() {
    let w = world(QuotaLimits::default());
    let many: String = (1..=201)
        .map(|i| format!("&Filter.1.Value.{i}=n{i}"))
        .collect();
    let many = format!("&Filter.1.Name=name{many}");
    for action in ["DescribeImages", "DescribeStoreImageTasks"] {
        let e = w.error(&format!("Action={action}&{V}{many}"));
        assert_eq!(e.code, "FilterLimitExceeded", "{action}: {e:?}");
        let long = "a".repeat(257);
        let e = w.error(&format!(
            "Action={action}&{V}&Filter.1.Name=name&Filter.1.Value.1={long}"
        ));
        assert_eq!(e.code, "FilterLimitExceeded", "{action}: {e:?}");
    }
    // 200 patterns of 256 characters, each with many stars and no match.
    let hostile = format!("{}b", "*a".repeat(127));
    let values: String = (1..=200)
        .map(|i| format!("&Filter.1.Value.{i}={}", hostile.replace('*', "%2A")))
        .collect();
    let xml = w
        .call(&format!(
            "Action=DescribeImages&{V}&Filter.1.Name=name{values}"
        ))
        .unwrap();
    assert!(xml.contains("<imagesSet/>"), "{xml}");
}
