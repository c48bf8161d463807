//! Seeded mutations of signed EBS direct API and S3 requests, answered by a
//! service over a real local engine: whatever an authenticated client sends
//! (a path, a query, a header or a body changed, cut short or replaced), the
//! answer is a well-formed HTTP answer, and never a 5xx the server did not
//! mean (501 for what S3 does not offer is meant). A panic fails the test.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amistore_api::client::{ClientCredentials, Outgoing, sign};
use amistore_api::service::{Credentials, HttpRequest, Service};
use amistore_core::ids::AccountId;
use amistore_core::ports::{BucketAdmin, ObjectStore};
use amistore_local::embedded::{LocalEngine, LocalOptions};
use time::OffsetDateTime;

struct Template {
    service: &'static str,
    method: &'static str,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The service over `local`'s engine and buckets, and the local default key.
fn service(local: &LocalEngine) -> (Service, ClientCredentials) {
    let service = Service::new(local.engine.clone(), Credentials::local_default())
        .with_buckets(Arc::new(local.buckets.clone()));
    let key = ClientCredentials {
        access_key: "test".into(),
        secret: "test".into(),
        session_token: None,
    };
    (service, key)
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn mutate(bytes: &mut Vec<u8>, x: &mut u64) {
    match next(x) % 4 {
        0 if !bytes.is_empty() => {
            let at = next(x) as usize % bytes.len();
            bytes[at] = next(x) as u8;
        }
        1 => bytes.truncate(next(x) as usize % (bytes.len() + 1)),
        2 => {
            let n = next(x) % 40;
            bytes.extend((0..n).map(|_| next(x) as u8));
        }
        _ => {
            let at = next(x) as usize % (bytes.len() + 1);
            let special = b"%/&=?.-9\x00\xff[";
            bytes.insert(at, special[next(x) as usize % special.len()]);
        }
    }
}

#[test]
fn mutated_ebs_and_s3_requests_get_answers_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalEngine::open(&dir.path().join("data"), LocalOptions::default(), None).unwrap();
    let account = AccountId::local_default();
    BucketAdmin::create_bucket(&local.buckets, &account, &"fuzz-bucket".parse().unwrap()).unwrap();
    local
        .buckets
        .put_object(
            &"fuzz-bucket".parse().unwrap(),
            &"p/x.bin".parse().unwrap(),
            b"0123456789",
        )
        .unwrap();
    let snapshot = amistore_core::ports::SnapshotStore::start_snapshot(
        &local.library,
        &account,
        1 << 30,
        &[],
        &amistore_core::image::Encryption::Unencrypted,
        "fuzz",
    )
    .unwrap();
    let (service, key) = service(&local);
    let block = vec![1u8; 512 * 1024];
    let checksum = {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&block))
    };
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let templates = [
        Template {
            service: "ebs",
            method: "POST",
            path: "/snapshots".into(),
            query: String::new(),
            headers: h(&[("content-type", "application/json")]),
            body: br#"{"VolumeSize":1,"Tags":[{"Key":"k","Value":"v"}],"Description":"d","Timeout":60}"#.to_vec(),
        },
        Template {
            service: "ebs",
            method: "PUT",
            path: format!("/snapshots/{snapshot}/blocks/3"),
            query: String::new(),
            headers: h(&[
                ("x-amz-data-length", "524288"),
                ("x-amz-checksum", &checksum),
                ("x-amz-checksum-algorithm", "SHA256"),
            ]),
            body: block.clone(),
        },
        Template {
            service: "ebs",
            method: "GET",
            path: format!("/snapshots/{snapshot}/changedblocks"),
            query: format!("firstSnapshotId={snapshot}&maxResults=100&pageToken=bmV4dC8z"),
            headers: vec![],
            body: vec![],
        },
        Template {
            service: "ebs",
            method: "POST",
            path: format!("/snapshots/completion/{snapshot}"),
            query: String::new(),
            headers: h(&[("x-amz-changedblockscount", "1"), ("x-amz-checksum-aggregation-method", "LINEAR")]),
            body: vec![],
        },
        Template {
            service: "s3",
            method: "GET",
            path: "/fuzz-bucket".into(),
            query: "list-type=2&prefix=p%2F&delimiter=%2F&max-keys=2&encoding-type=url".into(),
            headers: vec![],
            body: vec![],
        },
        Template {
            service: "s3",
            method: "GET",
            path: "/fuzz-bucket/p/x.bin".into(),
            query: String::new(),
            headers: h(&[("range", "bytes=2-5")]),
            body: vec![],
        },
        Template {
            service: "s3",
            method: "PUT",
            path: "/fuzz-new".into(),
            query: String::new(),
            headers: vec![],
            body: vec![],
        },
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut authenticated = 0;
    for i in 0..10_000 {
        let t = &templates[i % templates.len()];
        let (mut path, mut query, mut body) = (
            t.path.clone().into_bytes(),
            t.query.clone().into_bytes(),
            t.body.clone(),
        );
        let mut headers = t.headers.clone();
        match next(&mut x) % 4 {
            0 => mutate(&mut path, &mut x),
            1 => mutate(&mut query, &mut x),
            2 if !headers.is_empty() => {
                let n = next(&mut x) as usize % headers.len();
                let mut v = headers[n].1.clone().into_bytes();
                mutate(&mut v, &mut x);
                headers[n].1 = String::from_utf8_lossy(&v).into_owned();
            }
            _ => mutate(&mut body, &mut x),
        }
        // What a client can sign: a path and query in ASCII.
        let path = String::from_utf8_lossy(&path).replace(|c: char| !c.is_ascii_graphic(), "%20");
        let query = String::from_utf8_lossy(&query).replace(|c: char| !c.is_ascii_graphic(), "%20");
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(_, v)| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .collect();
        let outgoing = Outgoing {
            service: t.service,
            method: t.method,
            path: &path,
            query: &query,
            headers: &headers,
            body: &body,
        };
        let Ok(signed) = sign(
            "localhost:9000",
            &key,
            "us-east-1",
            &outgoing,
            OffsetDateTime::now_utc(),
        ) else {
            continue;
        };
        let request = HttpRequest {
            method: t.method.into(),
            path,
            query,
            headers: signed,
            body,
        };
        let (answer, outcome) = service.handle(&request, OffsetDateTime::now_utc());
        authenticated += usize::from(outcome.account.is_some());
        assert!(
            (200..600).contains(&answer.status)
                && (answer.status < 500 || matches!(answer.status, 501)),
            "{} {} {:?}: {} {:?} {:?}",
            request.method,
            request.path,
            request.query,
            answer.status,
            answer.body_text(),
            outcome.detail
        );
    }
    // The mutations reach the actions, not only the signature check.
    assert!(
        authenticated > 5_000,
        "only {authenticated} requests got past authentication"
    );
}

/// `max-keys=0` asks for nothing: an empty page that is not truncated (a
/// truncated one would send a client round forever).
#[test]
fn an_empty_listing_page_is_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalEngine::open(&dir.path().join("data"), LocalOptions::default(), None).unwrap();
    let account = AccountId::local_default();
    let bucket = "empty-page".parse().unwrap();
    BucketAdmin::create_bucket(&local.buckets, &account, &bucket).unwrap();
    local
        .buckets
        .put_object(&bucket, &"a.bin".parse().unwrap(), b"x")
        .unwrap();
    let (service, key) = service(&local);
    for (query, truncated, keys) in [
        ("list-type=2&max-keys=0", "false", 0),
        ("list-type=2&max-keys=1", "false", 1),
        ("list-type=2", "false", 1),
    ] {
        let outgoing = Outgoing {
            service: "s3",
            method: "GET",
            path: "/empty-page",
            query,
            headers: &[],
            body: b"",
        };
        let headers = sign(
            "localhost:9000",
            &key,
            "us-east-1",
            &outgoing,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let (answer, _) = service.handle(
            &HttpRequest {
                method: "GET".into(),
                path: "/empty-page".into(),
                query: query.into(),
                headers,
                body: vec![],
            },
            OffsetDateTime::now_utc(),
        );
        let text = answer.body_text();
        assert_eq!(answer.status, 200, "{text}");
        assert!(
            text.contains(&format!("<IsTruncated>{truncated}</IsTruncated>")),
            "{query}: {text}"
        );
        assert_eq!(text.matches("<Contents>").count(), keys, "{query}: {text}");
    }
}
