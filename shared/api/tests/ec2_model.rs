//! Every parameter the EC2 model (botocore's, as the installed AWS CLI ships
//! it) defines for the actions served is accepted: serialized exactly as
//! botocore's ec2 serializer would, one at a time and all together, none is
//! answered `UnknownParameter` or `MalformedQueryString`. The model is read
//! through botocore's own loader from the repository's `.venv` (scripts/test
//! installs it), so a new parameter in a new botocore shows up here.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use amistore_api::actions::handle;
use amistore_api::query::Params;
use amistore_core::ids::AccountId;
use amistore_local::embedded::{LocalEngine, LocalOptions};
use serde_json::Value;

/// The actions of the EC2 model this server answers.
const SERVED: [&str; 7] = [
    "CreateStoreImageTask",
    "DescribeStoreImageTasks",
    "CreateRestoreImageTask",
    "DescribeImages",
    "DescribeSnapshots",
    "DeregisterImage",
    "RegisterImage",
];

fn model() -> Value {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test installs the AWS CLI (and botocore) there",
        python.display()
    );
    let out = Command::new(python)
        .args([
            "-c",
            "import json, botocore.loaders; \
             print(json.dumps(botocore.loaders.create_loader().load_service_model('ec2', 'service-2')))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The name botocore's ec2 serializer gives a member.
fn wire_name(member_name: &str, member: &Value) -> String {
    if let Some(q) = member["queryName"].as_str() {
        return q.to_owned();
    }
    if let Some(l) = member["locationName"].as_str() {
        let mut c = l.chars();
        return c
            .next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default();
    }
    member_name.to_owned()
}

/// A sample value of `shape`, serialized under `prefix` as the ec2 protocol
/// does (lists flattened and numbered from 1, structures dotted).
fn serialize(
    model: &Value,
    shape: &str,
    prefix: &str,
    samples: &dyn Fn(&str) -> String,
    out: &mut Vec<(String, String)>,
) {
    let s = &model["shapes"][shape];
    match s["type"].as_str().unwrap() {
        "structure" => {
            for (name, member) in s["members"].as_object().unwrap() {
                let wire = wire_name(name, member);
                serialize(
                    model,
                    member["shape"].as_str().unwrap(),
                    &format!("{prefix}.{wire}"),
                    samples,
                    out,
                );
            }
        }
        "list" => serialize(
            model,
            s["member"]["shape"].as_str().unwrap(),
            &format!("{prefix}.1"),
            samples,
            out,
        ),
        "boolean" => out.push((prefix.to_owned(), "false".into())),
        "integer" | "long" => out.push((prefix.to_owned(), "5".into())),
        "timestamp" => out.push((prefix.to_owned(), "2026-11-30T00:00:00Z".into())),
        _ => out.push((prefix.to_owned(), samples(prefix))),
    }
}

fn form(action: &str, params: &[(String, String)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut f = format!("Action={action}&Version=2016-11-15");
    for (k, v) in params {
        f.push_str(&format!("&{}={}", enc(k), enc(v)));
    }
    f
}

#[test]
fn every_parameter_the_ec2_model_defines_for_the_served_actions_is_accepted() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let local = LocalEngine::open(&dir.path().join("data"), LocalOptions::default(), None).unwrap();
    local
        .buckets
        .create_bucket(&"b-1".parse().unwrap())
        .unwrap();
    let me = AccountId::local_default();
    // Plausible values, so that parsing gets past the first member it checks.
    let samples = |name: &str| -> String {
        let last = name
            .rsplit('.')
            .find(|p| p.parse::<u32>().is_err())
            .unwrap_or(name);
        match last {
            "ImageId" => "ami-0123456789abcdef0".into(),
            "SnapshotId" => "snap-0123456789abcdef0".into(),
            "Bucket" => "b-1".into(),
            "ObjectKey" => "ami-0123456789abcdef0.bin".into(),
            "Owner" | "ExecutableBy" | "RestorableBy" => "self".into(),
            "Name" if name.starts_with("Filter") => "tag:k".into(),
            "Name" => "a restored image".into(),
            "ResourceType" => "image".into(),
            "NextToken" => "not-a-token".into(),
            _ => "v".into(),
        }
    };
    let mut checked = 0;
    for action in SERVED {
        let op = &model["operations"][action];
        let input = op["input"]["shape"].as_str().unwrap();
        let shape = &model["shapes"][input];
        let required: Vec<&str> = shape["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut base = Vec::new();
        let mut every = Vec::new();
        for (name, member) in shape["members"].as_object().unwrap() {
            let mut params = Vec::new();
            serialize(
                &model,
                member["shape"].as_str().unwrap(),
                &wire_name(name, member),
                &samples,
                &mut params,
            );
            if required.contains(&name.as_str()) {
                base.extend(params.clone());
            }
            every.push((name.clone(), params));
        }
        let mut all = base.clone();
        for (name, params) in &every {
            let mut one = base.clone();
            for p in params {
                if !one.contains(p) {
                    one.push(p.clone());
                }
                if !all.contains(p) {
                    all.push(p.clone());
                }
            }
            let answer = handle(
                &local.engine,
                &me,
                Params::parse(form(action, &one).as_bytes()).unwrap(),
            );
            if let Err(e) = answer {
                assert!(
                    !["UnknownParameter", "MalformedQueryString", "InvalidAction"]
                        .contains(&e.code.as_ref()),
                    "{action} {name} ({one:?}): {e}"
                );
            }
            checked += 1;
        }
        let answer = handle(
            &local.engine,
            &me,
            Params::parse(form(action, &all).as_bytes()).unwrap(),
        );
        if let Err(e) = answer {
            assert!(
                !["UnknownParameter", "MalformedQueryString", "InvalidAction"]
                    .contains(&e.code.as_ref()),
                "{action} with every member ({all:?}): {e}"
            );
        }
    }
    assert!(checked >= 30, "only {checked} members checked");
}
