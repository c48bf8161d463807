//! The service as a server's transport drives it: signed HTTP requests in,
//! answers out. What a hostile web page or a damaged data directory can make
//! of it: foreign `Host` names, presigned links, unsigned payloads, and the
//! answer to a failure on the server's side.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::unix::fs::FileExt;

use amistore_api::client::{ClientCredentials, presigned_query, signed_form};
use amistore_api::service::{Credentials, HostPolicy, HttpRequest, Service};
use amistore_core::ids::AccountId;
use amistore_core::image::{Architecture, ImageSpec};
use amistore_local::embedded::{LocalEngine, LocalOptions};
use time::OffsetDateTime;

struct World {
    dir: tempfile::TempDir,
    service: Service,
    image: String,
}

fn world(hosts: HostPolicy) -> World {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("root.raw");
    let f = File::create(&disk).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_all_at(&[7u8; 4096], 0).unwrap();
    let local = LocalEngine::open(&dir.path().join("data"), LocalOptions::default(), None).unwrap();
    let spec = ImageSpec {
        name: "service source".parse().unwrap(),
        description: None,
        architecture: Architecture::X86_64,
        boot_mode: None,
        root_device_name: None,
        tags: vec![],
    };
    let image = local
        .library
        .import(
            &AccountId::local_default(),
            &spec,
            &[("/dev/xvda".parse().unwrap(), disk)],
        )
        .unwrap()
        .image_id
        .to_string();
    let service =
        Service::new(local.engine.clone(), Credentials::local_default()).with_hosts(hosts);
    World {
        dir,
        service,
        image,
    }
}

fn key() -> ClientCredentials {
    ClientCredentials {
        access_key: "test".into(),
        secret: "test".into(),
        session_token: None,
    }
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A POST signed in the Authorization header, for `host`.
fn post(host: &str, action: &str, pairs: &[(&str, &str)]) -> HttpRequest {
    let (headers, body) = signed_form(
        host,
        &key(),
        "us-east-1",
        action,
        &params(pairs),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers,
        body: body.into_bytes(),
    }
}

/// A presigned GET link, followed with `Host: host`.
fn link(host: &str, action: &str, pairs: &[(&str, &str)]) -> HttpRequest {
    let query = presigned_query(
        host,
        &key(),
        "us-east-1",
        action,
        &params(pairs),
        OffsetDateTime::now_utc(),
        300,
    )
    .unwrap();
    HttpRequest {
        method: "GET".into(),
        path: "/".into(),
        query,
        headers: vec![("Host".into(), host.into())],
        body: vec![],
    }
}

fn answer(w: &World, req: &HttpRequest) -> (u16, String) {
    let (response, _) = w.service.handle(req, OffsetDateTime::now_utc());
    (response.status, response.body_text().into_owned())
}

#[test]
fn a_default_server_answers_only_loopback_host_names() {
    let w = world(HostPolicy::Loopback);
    for host in [
        "127.0.0.1:9000",
        "localhost:9000",
        "localhost",
        "[::1]:9000",
        "127.1.2.3",
    ] {
        let (status, body) = answer(&w, &post(host, "DescribeImages", &[]));
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in [
        "evil.example",
        "evil.example:9000",
        "127.0.0.1.evil.example",
        "localhost.evil.example:9000",
        "10.0.0.1:9000",
        "",
    ] {
        let (status, body) = answer(&w, &post(host, "DescribeImages", &[]));
        assert_eq!(status, 401, "{host}: {body}");
        assert!(body.contains("not a loopback name"), "{host}: {body}");
    }
    // The measurement: a presigned DescribeImages with a foreign Host.
    let (status, body) = answer(&w, &link("evil.example", "DescribeImages", &[]));
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&w.image), "{body}");

    // A server given its own credentials answers any Host (a name only its
    // operator knows, behind their proxy).
    let open = world(HostPolicy::Any);
    assert_eq!(
        answer(
            &open,
            &post("amistore.internal:9000", "DescribeImages", &[])
        )
        .0,
        200
    );
}

#[test]
fn presigned_links_may_only_describe() {
    let w = world(HostPolicy::Loopback);
    let host = "127.0.0.1:9000";
    let (status, body) = answer(&w, &link(host, "DescribeImages", &[]));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&w.image), "{body}");

    // The measurement: a presigned DeregisterImage with DryRun
    // answered 412 (it would run).
    for dry_run in [true, false] {
        let mut pairs = vec![("ImageId", w.image.as_str())];
        if dry_run {
            pairs.push(("DryRun", "true"));
        }
        let (status, body) = answer(&w, &link(host, "DeregisterImage", &pairs));
        assert_eq!(status, 401, "DryRun {dry_run}: {body}");
        assert!(body.contains("presigned"), "{body}");
    }
    // Signed in the header, the same request runs.
    let (status, body) = answer(
        &w,
        &post(
            host,
            "DeregisterImage",
            &[("ImageId", &w.image), ("DryRun", "true")],
        ),
    );
    assert_eq!(status, 412, "{body}");
}

#[test]
fn failures_on_the_servers_side_name_the_request_not_the_data_directory() {
    let w = world(HostPolicy::Any);
    let record = w
        .dir
        .path()
        .join("data/images")
        .join(format!("{}.json", w.image));
    std::fs::write(&record, b"{ damaged").unwrap();
    let (response, outcome) = w.service.handle(
        &post("127.0.0.1:9000", "DescribeImages", &[]),
        OffsetDateTime::now_utc(),
    );
    assert_eq!(response.status, 500, "{}", response.body_text());
    assert!(
        response.body_text().contains("<Code>InternalError</Code>"),
        "{}",
        response.body_text()
    );
    assert!(
        response.body_text().contains(&outcome.request_id),
        "{}",
        response.body_text()
    );
    let data_dir = w.dir.path().to_str().unwrap();
    assert!(
        !response.body_text().contains(data_dir),
        "{}",
        response.body_text()
    );
    // The log line keeps the detail.
    assert!(
        outcome.detail.as_deref().unwrap().contains(data_dir),
        "{outcome:?}"
    );
}
