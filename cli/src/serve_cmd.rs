//! `amistore serve`: the EC2-compatible endpoint over the local engine. This
//! file only moves requests between tiny_http and the library's service, and
//! logs one JSON line per request to stderr.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amistore_api::query::MAX_REQUEST_BYTES;
use amistore_api::service::{Credentials, HttpRequest, Service};
use amistore_local::embedded::{LocalEngine, LocalOptions, Ports, Recovery};
use amistore_local::throttle::{Bandwidth, Throttled};
use amistore_local::workflow::RunnerOptions;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use time::OffsetDateTime;

use crate::task_cmd::Limits;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Credentials file: one `ACCESS_KEY SECRET ACCOUNT_ID` per line
    /// [default: access key `test`, secret `test`, account 000000000000,
    /// accepted only on a loopback address].
    #[arg(long, env = "AMISTORE_CREDENTIALS", value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Threads answering requests.
    #[arg(long, default_value_t = 4)]
    request_threads: usize,
    /// Most tasks running at once; later ones wait, InProgress at 0%.
    #[arg(long, value_name = "N")]
    max_concurrent_tasks: Option<usize>,
    /// Cap on all task data (snapshot blocks read and written), in MiB/s.
    #[arg(long, value_name = "MIB_PER_S")]
    max_bandwidth: Option<u64>,
}

fn log(event: serde_json::Value) {
    let mut line = event;
    line["time"] = json!(amistore_core::task::iso8601_millis(
        amistore_core::engine::now_ms()
    ));
    eprintln!("{line}");
}

pub fn run(args: ServeArgs, data_dir: &Path, limits: Limits) -> Result<ExitCode> {
    let credentials = match &args.credentials {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading credentials {}", path.display()))?;
            Credentials::parse(&text)
                .map_err(|e| anyhow::anyhow!("credentials {}: {e}", path.display()))?
        }
        None if args.listen.ip().is_loopback() => Credentials::local_default(),
        None => bail!(
            "refusing to listen on {} without --credentials: the default test/test credentials are for loopback addresses only",
            args.listen
        ),
    };
    let options = LocalOptions {
        limits: limits.quota(),
        runner: RunnerOptions {
            max_executions: args.max_concurrent_tasks,
            ..RunnerOptions::default()
        },
        ..LocalOptions::default()
    };
    let bandwidth = args.max_bandwidth.map(|m| Arc::new(Bandwidth::new(m)));
    let local = LocalEngine::open_with(data_dir, options, None, |ports| match bandwidth {
        Some(cap) => Ports {
            snapshots: Arc::new(Throttled(ports.snapshots.clone(), cap)),
            ..ports
        },
        None => ports,
    })?;
    local.observe(Arc::new(|task, kind, state| {
        log(json!({"event": "task", "taskId": task.as_str(), "kind": kind.as_str(), "state": state}));
    }));
    for task in local.recover(Recovery::Resume)? {
        log(json!({"event": "task-resumed", "taskId": task.as_str()}));
    }
    let service = Arc::new(Service::new(local.engine.clone(), credentials));
    let server = Arc::new(
        tiny_http::Server::http(args.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing a signal handler")?;
    }
    log(
        json!({"event": "listening", "address": args.listen.to_string(), "dataDir": data_dir.display().to_string()}),
    );
    std::thread::scope(|scope| {
        let watcher = {
            let (server, stop) = (server.clone(), stop.clone());
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                for _ in 0..args.request_threads.max(1) {
                    server.unblock();
                }
            })
        };
        for _ in 0..args.request_threads.max(1) {
            let (server, service) = (server.clone(), service.clone());
            scope.spawn(move || {
                while let Ok(request) = server.recv() {
                    answer(&service, request);
                }
            });
        }
        let _ = watcher.join();
    });
    // Executions still running stop with the process; their tasks are resumed
    // at the next start (every step is idempotent).
    log(json!({"event": "stopped"}));
    Ok(ExitCode::SUCCESS)
}

fn answer(service: &Service, mut request: tiny_http::Request) {
    let started = Instant::now();
    let (path, query) = match request.url().split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (request.url().to_owned(), String::new()),
    };
    let mut body = Vec::new();
    // One byte past the limit is enough to know it was passed.
    let _ = request
        .as_reader()
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut body);
    let http = HttpRequest {
        method: request.method().as_str().to_owned(),
        path,
        query,
        headers: request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_owned(),
                    h.value.as_str().to_owned(),
                )
            })
            .collect(),
        body,
    };
    let (response, outcome) = service.handle(&http, OffsetDateTime::now_utc());
    log(json!({
        "event": "request",
        "requestId": outcome.request_id,
        "method": http.method,
        "action": outcome.action,
        "account": outcome.account.as_ref().map(|a| a.as_str()),
        "status": response.status,
        "error": outcome.error,
        "ms": started.elapsed().as_millis() as u64,
    }));
    let header =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], response.content_type.as_bytes())
            .unwrap_or_else(|()| unreachable!("a constant header is valid"));
    let reply = tiny_http::Response::from_string(response.body)
        .with_status_code(response.status)
        .with_header(header);
    let _ = request.respond(reply);
}
