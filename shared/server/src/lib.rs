//! The HTTP transport of `amistore serve`: hyper's HTTP/1.1 on tokio, moving
//! requests to a [`Handler`] (the API service) and its answers back, with
//! every resource a client can hold bounded:
//!
//! - connections: at most [`Limits::max_connections`]; when full, a new one
//!   evicts the connection that has been idle longest (idle: no request in
//!   progress, which is every slowloris and every parked keep-alive), and is
//!   refused only when every connection is busy;
//! - time: a request's head must arrive within [`Limits::header_timeout`], its
//!   body within [`Limits::body_timeout`]; a connection idle for
//!   [`Limits::idle_timeout`] is closed;
//! - memory: a head is at most [`Limits::max_header_bytes`] (hyper answers 431
//!   past it), a body at most [`Limits::max_body_bytes`] (413, before reading
//!   it when Content-Length says so), both before any authentication; all
//!   bodies being read at once hold at most [`Limits::max_body_memory`] (a
//!   body waits its body timeout for room, then is answered 503);
//! - threads: at most [`Limits::max_in_flight`] requests are answered at once,
//!   on tokio's blocking pool (the engine is synchronous); the rest wait for a
//!   turn without a thread.
//!
//! Hand-written parts are only this bookkeeping; parsing and framing are
//! hyper's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amistore_api::service::{HttpRequest, HttpResponse};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

/// What one client may hold of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Requests answered at once (each holds a thread while it is).
    pub max_in_flight: usize,
    /// Time to send a request's head (line and headers).
    pub header_timeout: Duration,
    /// Time to send a request's body.
    pub body_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Size of a request's head, in bytes (at least 8 KiB).
    pub max_header_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Size of a request's body, in bytes.
    pub max_body_bytes: usize,
    /// Bytes all request bodies being read or answered may hold together.
    pub max_body_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_in_flight: 8,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            // An EBS block (PutSnapshotBlock); EC2 requests are bounded
            // tighter by the API itself.
            max_body_bytes: 512 * 1024,
            max_body_memory: 64 << 20,
        }
    }
}

/// Why the transport refused a request before its handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The body is larger than [`Limits::max_body_bytes`].
    BodyTooLarge(usize),
    /// The body did not arrive within [`Limits::body_timeout`].
    BodyTooSlow(Duration),
    /// The body could not be read (the client went away, bad framing).
    BodyUnreadable,
    /// The handler failed without an answer (a bug: it is logged).
    HandlerFailed,
    /// Other requests' bodies hold [`Limits::max_body_memory`] and none gave
    /// room within the body timeout.
    Overloaded,
}

/// What answers requests. Called on a blocking thread: it may block.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request`, which came from `peer`.
    fn answer(&self, request: HttpRequest, peer: SocketAddr) -> HttpResponse;
    /// The answer to a request the transport refused.
    fn refuse(&self, refusal: Refusal, peer: SocketAddr) -> HttpResponse;
}

/// Counters of what the server did, for its log and for tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections refused because every one was busy.
    pub refused: AtomicU64,
    /// Connections closed for being idle too long.
    pub idle_closed: AtomicU64,
    /// Connections that ended in a protocol error or timeout (a head too
    /// large, too slow, or not HTTP).
    pub broken: AtomicU64,
    /// Requests answered by the handler.
    pub answered: AtomicU64,
    /// Requests refused by the transport.
    pub refusals: AtomicU64,
}

impl Stats {
    /// The counters, as `(name, value)` pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("accepted", get(&self.accepted)),
            ("evicted", get(&self.evicted)),
            ("refused", get(&self.refused)),
            ("idleClosed", get(&self.idle_closed)),
            ("broken", get(&self.broken)),
            ("answered", get(&self.answered)),
            ("refusals", get(&self.refusals)),
        ]
    }
}

/// One open connection, as the registry sees it.
struct Connection {
    /// Requests in progress on it.
    busy: AtomicUsize,
    /// When it last became idle, in ms since the server started.
    idle_since_ms: AtomicU64,
    /// Closes it.
    close: Notify,
}

/// The open connections.
struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // A panic while holding this lock leaves the map consistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection if there is room, evicting the longest
    /// idle one if needed; `None` if every connection is busy.
    fn admit(&self, max: usize, stats: &Stats) -> Option<(u64, Arc<Connection>)> {
        let mut open = self.lock();
        if open.len() >= max {
            let oldest_idle = open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(evicted) = open.remove(&oldest_idle) {
                evicted.close.notify_one();
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        open.insert(id, connection.clone());
        Some((id, connection))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Marks a connection busy while a request is in progress.
struct Busy<'a>(&'a Connection, &'a Registry);

impl<'a> Busy<'a> {
    fn new(connection: &'a Connection, registry: &'a Registry) -> Self {
        connection.busy.fetch_add(1, Ordering::AcqRel);
        Self(connection, registry)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.1.now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything a connection's requests share.
struct Shared {
    limits: Limits,
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
    registry: Registry,
    turns: Semaphore,
    /// [`Limits::max_body_memory`], in KiB permits.
    body_memory: Semaphore,
    body_memory_kib: u32,
}

/// Connections the kernel completes before the server accepts them.
/// `std`'s and mio's listeners ask for 128: a burst of connections larger
/// than that (a client pool starting, or a flood) then waits on SYN retries
/// (measured: 5,000 loopback connections took 17 s with 128, 0.1 s with 1024).
pub const ACCEPT_BACKLOG: u32 = 1024;

/// A listener on `addr` with [`ACCEPT_BACKLOG`]. Call within a tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves `listener` until `shutdown` completes, then lets requests in
/// progress finish (for at most `limits.body_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) {
    let body_memory_kib = limits
        .max_body_memory
        .div_ceil(1024)
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let shared = Arc::new(Shared {
        turns: Semaphore::new(limits.max_in_flight.max(1)),
        body_memory: Semaphore::new(body_memory_kib as usize),
        body_memory_kib,
        limits,
        handler,
        stats,
        registry: Registry {
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        },
    });
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of descriptors, or a connection reset before it was
            // accepted: the listener itself is fine. A short pause keeps an
            // exhausted process from spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        match shared
            .registry
            .admit(shared.limits.max_connections, &shared.stats)
        {
            Some((id, connection)) => {
                tokio::spawn(run_connection(shared.clone(), stream, peer, id, connection));
            }
            None => {
                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                // Best effort, never waiting: the client learns why.
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    }
    // Idle connections close now; busy ones finish their request.
    let deadline = Instant::now() + shared.limits.body_timeout;
    loop {
        let busy = {
            let open = shared.registry.lock();
            for c in open.values() {
                if c.busy.load(Ordering::Acquire) == 0 {
                    c.close.notify_one();
                }
            }
            open.values()
                .filter(|c| c.busy.load(Ordering::Acquire) > 0)
                .count()
        };
        if busy == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    connection: Arc<Connection>,
) {
    let _ = stream.set_nodelay(true);
    let limits = &shared.limits;
    let service = {
        let (shared, connection) = (shared.clone(), connection.clone());
        service_fn(move |request| {
            let (shared, connection) = (shared.clone(), connection.clone());
            async move { Ok::<_, Infallible>(answer(&shared, &connection, request, peer).await) }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let idle_too_long = async {
        let check = (limits.idle_timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(check).await;
            let idle_ms = shared
                .registry
                .now_ms()
                .saturating_sub(connection.idle_since_ms.load(Ordering::Relaxed));
            if connection.busy.load(Ordering::Acquire) == 0
                && idle_ms >= limits.idle_timeout.as_millis() as u64
            {
                return;
            }
        }
    };
    tokio::select! {
        ended = &mut served => {
            if ended.is_err() {
                shared.stats.broken.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Dropping the connection closes its socket.
        () = connection.close.notified() => {}
        () = idle_too_long => {
            shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.registry.remove(id);
}

async fn answer(
    shared: &Shared,
    connection: &Connection,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let _busy = Busy::new(connection, &shared.registry);
    let limits = &shared.limits;
    let (parts, body) = request.into_parts();
    let refuse = |refusal: Refusal| {
        shared.stats.refusals.fetch_add(1, Ordering::Relaxed);
        // The body may be partly unread: the connection cannot be reused.
        with_close(to_hyper(shared.handler.refuse(refusal, peer)))
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return refuse(Refusal::BodyTooLarge(limits.max_body_bytes));
    }
    // Room for the whole body is taken before a byte of it is read: what
    // Content-Length declares, or the most a body may be.
    let kib = declared
        .map_or(limits.max_body_bytes as u64, |n| {
            n.min(limits.max_body_bytes as u64)
        })
        .div_ceil(1024)
        .min(u64::from(u32::MAX)) as u32;
    let room = tokio::time::timeout(
        limits.body_timeout,
        shared
            .body_memory
            .acquire_many(kib.min(shared.body_memory_kib)),
    )
    .await;
    let Ok(Ok(_room)) = room else {
        return refuse(Refusal::Overloaded);
    };
    let read = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await;
    let body = match read {
        Err(_) => return refuse(Refusal::BodyTooSlow(limits.body_timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(Refusal::BodyTooLarge(limits.max_body_bytes));
        }
        Ok(Err(_)) => return refuse(Refusal::BodyUnreadable),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let http = HttpRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    // A turn first, then a thread: waiting requests hold no thread.
    let Ok(_turn) = shared.turns.acquire().await else {
        return refuse(Refusal::HandlerFailed);
    };
    let handler = shared.handler.clone();
    match tokio::task::spawn_blocking(move || handler.answer(http, peer)).await {
        Ok(response) => {
            shared.stats.answered.fetch_add(1, Ordering::Relaxed);
            to_hyper(response)
        }
        Err(_) => refuse(Refusal::HandlerFailed),
    }
}

fn to_hyper(response: HttpResponse) -> Response<Full<Bytes>> {
    let mut out = Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    for (name, value) in response.headers {
        // Names and values are the service's own (ids, numbers, base64,
        // printable metadata): one that is not a valid header is a bug, and
        // is left out rather than failing the answer.
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    out
}

fn with_close(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
