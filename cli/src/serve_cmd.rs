//! `amistore serve`: the EC2-compatible endpoint over the local engine. This
//! file wires the engine, the API service and the HTTP transport
//! (`amistore-server`, which bounds what clients can hold), runs the engine's
//! maintenance now and then, and logs one JSON line per request (and per task
//! state change, maintenance pass, start and stop) to stderr: `tracing`
//! events in the format of `amistore_api::logs`, listed in docs/logs.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amistore_api::service::{Credentials, HostPolicy, HttpRequest, HttpResponse, Outcome, Service};
use amistore_local::embedded::{
    LocalEngine, LocalOptions, MAINTENANCE_GRACE_MS, Ports, ProcessKind, Recovery,
};
use amistore_local::throttle::{Bandwidth, Throttled};
use amistore_local::workflow::RunnerOptions;
use amistore_server::{Handler, Limits as ServerLimits, Refusal, Stats};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use time::OffsetDateTime;

use crate::task_cmd::Limits;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub limits: Limits,
    /// Address to listen on: IP:PORT, or HOST:PORT (resolved; `localhost`
    /// is 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1:9000", value_parser = resolve_listen)]
    listen: SocketAddr,
    /// Credentials file: one `ACCESS_KEY SECRET ACCOUNT_ID [read-only]` per
    /// line (a read-only key may only describe)
    /// [default: access key `test`, secret `test`, account 000000000000,
    /// accepted only on a loopback address, for loopback Host names].
    #[arg(long, env = "AMISTORE_CREDENTIALS", value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Requests answered at once (each holds a thread while it is).
    #[arg(long, default_value_t = 8)]
    request_threads: usize,
    /// Open connections at most; when full, the longest idle one is closed
    /// for a new one.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,
    /// Most tasks running at once; later ones wait, InProgress at 0%.
    #[arg(long, default_value_t = 4, value_name = "N")]
    max_concurrent_tasks: usize,
    /// Cap on all task data (snapshot blocks read and written), in MiB/s.
    #[arg(long, value_name = "MIB_PER_S")]
    max_bandwidth: Option<u64>,
    /// Seconds a client has to send a request's head (line and headers).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    header_timeout: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    body_timeout: u64,
    /// Seconds between maintenance passes (resuming the tasks of processes
    /// that died, failing tasks whose execution ended without ending them,
    /// correcting quota counters).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    maintenance_interval: u64,
}

/// `HOST:PORT` to the address to bind: an IP as given, a name resolved
/// (IPv4 first, as `localhost` means 127.0.0.1 to most clients).
fn resolve_listen(s: &str) -> Result<SocketAddr> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .with_context(|| {
            format!("{s:?} is not IP:PORT or a HOST:PORT that resolves (e.g. 127.0.0.1:9000)")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{s:?} resolves to no address"))
}

pub fn run(args: ServeArgs, data_dir: &Path) -> Result<ExitCode> {
    amistore_api::logs::init(std::io::stderr, &["AMISTORE_LOG", "RUST_LOG"]);
    let limits = args.limits;
    let (credentials, hosts) = match &args.credentials {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading credentials {}", path.display()))?;
            let credentials = Credentials::parse(&text)
                .map_err(|e| anyhow::anyhow!("credentials {}: {e}", path.display()))?;
            (credentials, HostPolicy::Any)
        }
        // test/test is public: only this machine may use it, and only under
        // its own name (a page that rebinds a name to 127.0.0.1 may not).
        None if args.listen.ip().is_loopback() => {
            (Credentials::local_default(), HostPolicy::Loopback)
        }
        None => bail!(
            "refusing to listen on {} without --credentials: the default test/test credentials are for loopback addresses only",
            args.listen
        ),
    };
    let options = LocalOptions {
        limits: limits.quota(),
        runner: RunnerOptions {
            max_executions: Some(args.max_concurrent_tasks.max(1)),
            ..RunnerOptions::default()
        },
        process: ProcessKind::Server,
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
        tracing::info!(event = "task", taskId = task.as_str(), kind = kind.as_str(), state = %state);
    }));
    for task in local.recover(Recovery::Resume)? {
        tracing::info!(event = "task-resumed", taskId = task.as_str());
    }
    let service = Service::new(local.engine.clone(), credentials)
        .with_hosts(hosts)
        .with_buckets(Arc::new(local.buckets.clone()));
    let handler = Arc::new(Logged(service));
    let server_limits = ServerLimits {
        max_connections: args.max_connections.max(1),
        max_in_flight: args.request_threads.max(1),
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout.max(1)),
        ..ServerLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(server_limits.max_in_flight + 2)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    let listener = runtime
        .block_on(async { amistore_server::bind(args.listen) })
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        event = "listening",
        address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        dataDir = %data_dir.display(),
        maxConnections = server_limits.max_connections,
        requestThreads = server_limits.max_in_flight,
        maxConcurrentTasks = args.max_concurrent_tasks.max(1),
    );
    let stats = Arc::new(Stats::default());
    let stopping = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| maintain(&local, &stopping, args.maintenance_interval));
        let served = runtime.block_on(async {
            let shutdown = shutdown_signal()?;
            amistore_server::serve(listener, server_limits, handler, stats.clone(), shutdown).await;
            Ok::<_, anyhow::Error>(())
        });
        stopping.store(true, Ordering::Relaxed);
        served
    })?;
    // Executions still running stop with the process; their tasks are resumed
    // at the next start (every step is idempotent).
    let counters: serde_json::Map<String, serde_json::Value> = stats
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    tracing::info!(event = "stopped", connections = %serde_json::Value::Object(counters));
    Ok(ExitCode::SUCCESS)
}

/// Completes at SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a signal handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a signal handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Runs the engine's maintenance every `interval_s` seconds until `stopping`.
fn maintain(local: &LocalEngine, stopping: &AtomicBool, interval_s: u64) {
    let interval = Duration::from_secs(interval_s.max(1));
    let mut next = Instant::now() + interval;
    while !stopping.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + interval;
        match local.maintain(MAINTENANCE_GRACE_MS) {
            Ok(done) => {
                let s = &done.sweep;
                if !(done.resumed.is_empty()
                    && s.failed.is_empty()
                    && s.aborted_uploads.is_empty()
                    && s.corrected_counters.is_empty()
                    && s.errors.is_empty())
                {
                    let ids = |tasks: &[amistore_core::ids::TaskId]| {
                        json!(tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>())
                    };
                    tracing::info!(
                        event = "maintenance",
                        resumed = %ids(&done.resumed),
                        failed = %ids(&s.failed),
                        abortedUploads = %json!(s.aborted_uploads),
                        correctedCounters = %json!(s.corrected_counters),
                        errors = %json!(s.errors),
                    );
                }
            }
            Err(e) => tracing::error!(event = "maintenance", error = format!("{e:#}")),
        }
    }
}

/// The service, logging one line per request.
struct Logged(Service);

impl Logged {
    fn log(
        &self,
        peer: SocketAddr,
        method: &str,
        response: &HttpResponse,
        outcome: &Outcome,
        started: Instant,
    ) {
        tracing::info!(
            event = "request",
            requestId = outcome.request_id,
            peer = %peer,
            method,
            action = outcome.action.as_deref(),
            account = outcome.account.as_ref().map(|a| a.as_str()),
            status = response.status,
            error = outcome.error.as_deref(),
            detail = outcome.detail.as_deref(),
            ms = started.elapsed().as_millis() as u64,
        );
    }
}

impl Handler for Logged {
    fn answer(&self, request: HttpRequest, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let (response, outcome) = self.0.handle(&request, OffsetDateTime::now_utc());
        self.log(peer, &request.method, &response, &outcome, started);
        response
    }

    fn refuse(&self, refusal: Refusal, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let (code, message) = match refusal {
            Refusal::BodyTooLarge(limit) => (
                "RequestEntityTooLarge",
                format!("requests are limited to {limit} bytes"),
            ),
            Refusal::BodyTooSlow(limit) => (
                "RequestTimeout",
                format!("the request's body did not arrive within {limit:?}"),
            ),
            Refusal::BodyUnreadable => {
                ("InvalidRequest", "the request's body is unreadable".into())
            }
            Refusal::HandlerFailed => ("InternalError", "the request failed".into()),
            Refusal::Overloaded => (
                "ServiceUnavailable",
                "the server is receiving too many request bodies; retry shortly".into(),
            ),
        };
        let (response, outcome) = self.0.refuse(code, &message);
        self.log(peer, "-", &response, &outcome, started);
        response
    }
}
