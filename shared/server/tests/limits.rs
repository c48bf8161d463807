//! The transport's limits over real loopback sockets: each hostile client is
//! refused or timed out, and a well-behaved request still gets its answer.
//! Limits are set small so every test ends in well under a second or two;
//! nothing here asserts on time, only on what was answered.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use amistore_api::service::{HttpRequest, HttpResponse};
use amistore_server::{Handler, Limits, Refusal, Stats, serve};

/// Answers with the request's method, path and body length; `/block` waits
/// until released; `/panic` panics.
#[derive(Default)]
struct Echo {
    released: Mutex<bool>,
    wake: Condvar,
    blocked: std::sync::atomic::AtomicUsize,
}

impl Echo {
    /// Waits until `n` requests are blocked in the handler.
    fn wait_blocked(&self, n: usize) {
        while self.blocked.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.wake.notify_all();
    }
}

impl Handler for Echo {
    fn answer(&self, request: HttpRequest, _peer: SocketAddr) -> HttpResponse {
        match request.path.as_str() {
            "/block" => {
                self.blocked.fetch_add(1, Ordering::SeqCst);
                let _released = self
                    .wake
                    .wait_while(self.released.lock().unwrap(), |r| !*r)
                    .unwrap();
            }
            "/panic" => panic!("a handler bug"),
            _ => {}
        }
        HttpResponse::text(
            200,
            "text/plain",
            format!("{} {} {}", request.method, request.path, request.body.len()),
        )
    }

    fn refuse(&self, refusal: Refusal, _peer: SocketAddr) -> HttpResponse {
        let status = match refusal {
            Refusal::BodyTooLarge(_) => 413,
            Refusal::BodyTooSlow(_) => 408,
            Refusal::BodyUnreadable => 400,
            Refusal::HandlerFailed => 500,
            Refusal::Overloaded => 503,
        };
        HttpResponse::text(status, "text/plain", format!("{refusal:?}"))
    }
}

/// A server on a loopback port, on a runtime of its own; stopped when dropped.
struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    echo: Arc<Echo>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.echo.release();
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

fn small() -> Limits {
    Limits {
        max_connections: 16,
        max_in_flight: 4,
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_secs(5),
        max_header_bytes: 8192,
        max_headers: 32,
        max_body_bytes: 1024,
        max_body_memory: 4096,
    }
}

fn start(limits: Limits) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(async { amistore_server::bind("127.0.0.1:0".parse().unwrap()) })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let echo = Arc::new(Echo::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = {
        let (stats, echo) = (stats.clone(), echo.clone());
        std::thread::spawn(move || {
            runtime.block_on(serve(listener, limits, echo, stats, async {
                let _ = stopped.await;
            }));
        })
    };
    Running {
        addr,
        stats,
        echo,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `raw` and reads until the server closes or answers in full.
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = connect(addr);
    let _ = s.write_all(raw);
    read_answer(&mut s)
}

fn read_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_well_formed_request_is_answered() {
    let server = start(small());
    let answer = exchange(
        server.addr,
        b"POST /x?q=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.ends_with("POST /x 5"), "{answer}");
}

#[test]
fn a_slow_head_or_body_is_timed_out_while_others_are_answered() {
    let server = start(small());
    // Slowloris: a head that never ends.
    let mut head = connect(server.addr);
    head.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // A body that never arrives.
    let mut body = connect(server.addr);
    body.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    assert_eq!(status(&get(server.addr, "/")), 200);
    for _ in 0..20 {
        // Trickling a byte at a time does not reset the head's clock.
        if head.write_all(b"X").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = read_answer(&mut head);
    assert!(
        closed.is_empty() || status(&closed) == 408,
        "the slow head was answered: {closed}"
    );
    let refused = read_answer(&mut body);
    assert_eq!(status(&refused), 408, "{refused}");
    assert!(refused.contains("BodyTooSlow"), "{refused}");
    assert!(server.stats.broken.load(Ordering::Relaxed) >= 1);
}

#[test]
fn bodies_share_a_memory_budget_and_a_request_that_finds_no_room_is_told_so() {
    // Room for one 1 KiB body at a time. A takes it and sends nothing; C
    // queues behind A and, once A is timed out, takes it and sends nothing
    // too; B, queued behind C, finds no room within its body timeout.
    let server = start(Limits {
        max_body_memory: 1024,
        ..small()
    });
    let hold = |addr| {
        let mut s = connect(addr);
        s.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\n\r\n")
            .unwrap();
        s
    };
    let mut a = hold(server.addr);
    std::thread::sleep(Duration::from_millis(100));
    let mut c = hold(server.addr);
    std::thread::sleep(Duration::from_millis(100));
    let b = exchange(
        server.addr,
        format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
            "b".repeat(1024)
        )
        .as_bytes(),
    );
    assert_eq!(status(&b), 503, "{b}");
    assert!(b.contains("Overloaded"), "{b}");
    for held in [&mut a, &mut c] {
        let answer = read_answer(held);
        assert_eq!(status(&answer), 408, "{answer}");
    }
    // With room again, the same request is answered.
    let b = exchange(
        server.addr,
        format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
            "b".repeat(1024)
        )
        .as_bytes(),
    );
    assert_eq!(status(&b), 200, "{b}");
}

#[test]
fn oversized_heads_and_bodies_are_refused_before_they_are_read() {
    let server = start(small());
    let long_line = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = exchange(server.addr, long_line.as_bytes());
    assert!(
        answer.is_empty() || status(&answer) == 431,
        "a 64 KiB head was not refused: {}",
        &answer[..answer.len().min(200)]
    );
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let answer = exchange(
        server.addr,
        format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes(),
    );
    assert!(
        answer.is_empty() || status(&answer) == 431,
        "100 headers were not refused: {answer}"
    );
    // Declared too large: refused without sending the body at all.
    let answer = exchange(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n\r\n",
    );
    assert_eq!(status(&answer), 413, "{answer}");
    // Chunked, with no length given: refused once past the limit.
    let chunk = format!("800\r\n{}\r\n", "b".repeat(0x800));
    let answer = exchange(
        server.addr,
        format!("POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status(&answer), 413, "{answer}");
    assert_eq!(status(&get(server.addr, "/")), 200);
}

#[test]
fn garbage_is_refused_and_the_server_goes_on() {
    let server = start(small());
    for garbage in [
        &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\r\n\r\n\r\n",
    ] {
        let answer = exchange(server.addr, garbage);
        assert!(
            answer.is_empty() || status(&answer) >= 400,
            "{garbage:?} was answered: {answer}"
        );
    }
    assert_eq!(status(&get(server.addr, "/")), 200);
}

#[test]
fn idle_connections_make_room_and_busy_ones_are_never_evicted() {
    let server = start(Limits {
        max_connections: 8,
        ..small()
    });
    // Two requests in progress (their handler waits).
    let mut busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(server.addr);
            s.write_all(b"GET /block HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    server.echo.wait_blocked(2);
    // Many more idle ones than there is room for.
    let idle: Vec<TcpStream> = (0..200).map(|_| connect(server.addr)).collect();
    assert_eq!(status(&get(server.addr, "/")), 200);
    // Each idle one was evicted, or timed out first (it never sent a head).
    let closed =
        server.stats.evicted.load(Ordering::Relaxed) + server.stats.broken.load(Ordering::Relaxed);
    assert!(closed >= 190, "{:?}", server.stats.snapshot());
    server.echo.release();
    for s in &mut busy {
        let answer = read_answer(s);
        assert_eq!(
            status(&answer),
            200,
            "a busy connection was evicted: {answer}"
        );
    }
    drop(idle);
}

#[test]
fn when_every_connection_is_busy_a_new_one_is_told_so() {
    let server = start(Limits {
        max_connections: 2,
        ..small()
    });
    let mut busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(server.addr);
            s.write_all(b"GET /block HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    server.echo.wait_blocked(2);
    let refused = get(server.addr, "/");
    assert_eq!(status(&refused), 503, "{refused}");
    assert!(server.stats.refused.load(Ordering::Relaxed) >= 1);
    server.echo.release();
    for s in &mut busy {
        assert_eq!(status(&read_answer(s)), 200);
    }
    assert_eq!(status(&get(server.addr, "/")), 200);
}

#[test]
fn a_connection_idle_too_long_is_closed() {
    let server = start(Limits {
        idle_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_secs(30),
        ..small()
    });
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_answer(&mut s)), 200);
    // Kept alive, then nothing: the server closes it.
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "{rest:?}");
    assert!(server.stats.idle_closed.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_handler_that_panics_costs_one_answer_not_the_server() {
    let server = start(small());
    let answer = get(server.addr, "/panic");
    assert_eq!(status(&answer), 500, "{answer}");
    assert_eq!(status(&get(server.addr, "/")), 200);
}
