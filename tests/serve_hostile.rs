//! Hostile clients against `amistore serve` (the real binary, on loopback):
//! idle connections by the thousand, slowloris heads and bodies, oversized
//! heads and bodies, garbage, a foreign Host, a presigned mutation. Each is
//! refused or timed out; between them a well-behaved signed DescribeImages
//! still completes, the server's threads and memory stay bounded, and nothing
//! panics. Bounded in count and time; the figures are printed.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use amistore_api::client::{ClientCredentials, Endpoint, call, presigned_query, signed_form};
use support::*;
use time::OffsetDateTime;

fn key() -> ClientCredentials {
    ClientCredentials {
        access_key: "test".into(),
        secret: "test".into(),
        session_token: None,
    }
}

/// A signed DescribeImages, which must complete and list `ami`.
fn describe_answers(server: &Serve, ami: &str) {
    let endpoint = Endpoint::parse(&format!("http://{}", server.host())).unwrap();
    let xml = call(&endpoint, &key(), "us-east-1", "DescribeImages", &[])
        .unwrap_or_else(|e| panic!("a normal DescribeImages failed: {e}"));
    assert!(xml.contains(ami), "{xml}");
}

/// A data directory with one small image; returns its id.
fn world(dir: &Path) -> String {
    let disk = dir.join("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(4 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes(MIB, 1), 0).unwrap();
    ok_in(
        &[
            "image",
            "import",
            "--name",
            "hostile target",
            "--disk",
            &format!("/dev/xvda={}", s(&disk)),
        ],
        Some(&dir.join("data")),
    )
    .trim()
    .to_owned()
}

/// Raises this process's open-file limit to its hard limit; returns it.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we pass.
    #[allow(unsafe_code)]
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// What became of the hostile connections.
#[derive(Default)]
struct Tally {
    tried: u64,
    refused: u64,
    closed: u64,
}

impl Tally {
    /// Records an answer to a hostile request: a 4xx/5xx refusal or a close
    /// is expected; a 2xx is a failure.
    fn record(&mut self, what: &str, answer: &str) {
        self.tried += 1;
        match status(answer) {
            0 => self.closed += 1,
            s if s >= 400 => self.refused += 1,
            s => panic!("{what} was answered {s}: {answer}"),
        }
    }
}

#[test]
fn hostile_clients_are_refused_or_timed_out_and_a_normal_request_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ami = world(dir.path());
    let server = Serve::start(
        &dir.path().join("data"),
        &["--header-timeout", "2", "--body-timeout", "2"],
    );
    let addr = server.addr();
    describe_answers(&server, &ami);
    let threads_before = server.proc_status("Threads");
    let rss_before = server.proc_status("VmRSS");
    let mut tally = Tally::default();

    // 1. Idle connections by the thousand (the measured defect: 2,000 idle
    //    connections made 1,978 threads).
    let files = raise_open_files();
    let wanted = 10_000u64.min(files.saturating_sub(500));
    let mut idle = Vec::new();
    for _ in 0..wanted {
        match TcpStream::connect(addr) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    describe_answers(&server, &ami);
    let threads_idle = server.proc_status("Threads");
    let rss_idle = server.proc_status("VmRSS");
    assert!(
        threads_idle < 64,
        "{threads_idle} threads with {} idle connections",
        idle.len()
    );
    assert!(
        rss_idle < rss_before + 128 * 1024,
        "RSS grew from {rss_before} to {rss_idle} kB"
    );
    let idle_count = idle.len() as u64;
    tally.tried += idle_count;
    drop(idle);

    // 2. Slowloris: heads and bodies that never finish, trickled.
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let start: &[u8] = if i % 2 == 0 {
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        } else {
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nAction="
        };
        s.write_all(start).unwrap();
        slow.push(s);
    }
    for _ in 0..6 {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    describe_answers(&server, &ami);
    for mut s in slow {
        let answer = read_answer(&mut s);
        tally.record("a slowloris", &answer);
    }

    // 3. Oversized heads and bodies.
    let rss = server.proc_status("VmRSS");
    for _ in 0..20 {
        let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 8 << 20));
        head.extend_from_slice(b"\r\n\r\n");
        tally.record("an 8 MiB head", &exchange(addr, &head));
    }
    let declared = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10737418240\r\n\r\n",
    );
    assert_eq!(status(&declared), 413, "{declared}");
    tally.record("a 10 GiB body", &declared);
    let mut chunked =
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        chunked.extend_from_slice(format!("10000\r\n{}\r\n", "b".repeat(0x10000)).as_bytes());
    }
    let answer = exchange(addr, &chunked);
    assert_eq!(status(&answer), 413, "{answer}");
    tally.record("a 4 MiB chunked body", &answer);
    let rss_after = server.proc_status("VmRSS");
    assert!(
        rss_after < rss + 64 * 1024,
        "RSS grew from {rss} to {rss_after} kB on oversized requests"
    );
    describe_answers(&server, &ami);

    // 4. Garbage.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for n in 0..100 {
        let garbage: Vec<u8> = (0..(n * 37 % 2000 + 1))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        tally.record("garbage", &exchange(addr, &garbage));
    }
    describe_answers(&server, &ami);

    // 5. A page's requests: a foreign Host (DNS rebinding), and a presigned
    //    mutation (a link a browser follows without a preflight).
    let (mut headers, body) = signed_form(
        "evil.example",
        &key(),
        "us-east-1",
        "DescribeImages",
        &[],
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    headers.push(("content-length".into(), body.len().to_string()));
    let raw = format!(
        "POST / HTTP/1.1\r\n{}\r\n\r\n{body}",
        headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\r\n")
    );
    let answer = exchange(addr, raw.as_bytes());
    assert_eq!(status(&answer), 401, "{answer}");
    assert!(!answer.contains(&ami), "{answer}");
    tally.record("a foreign Host", &answer);
    for dry_run in [true, false] {
        let mut params = vec![("ImageId".to_owned(), ami.clone())];
        if dry_run {
            params.push(("DryRun".into(), "true".into()));
        }
        let query = presigned_query(
            &server.host(),
            &key(),
            "us-east-1",
            "DeregisterImage",
            &params,
            OffsetDateTime::now_utc(),
            300,
        )
        .unwrap();
        let answer = exchange(
            addr,
            format!(
                "GET /?{query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                server.host()
            )
            .as_bytes(),
        );
        assert_eq!(status(&answer), 401, "{answer}");
        tally.record("a presigned DeregisterImage", &answer);
    }
    // The image is still there.
    describe_answers(&server, &ami);

    let threads_after = server.proc_status("Threads");
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    let stopped = log_events(&log, "stopped");
    let counters = &stopped.last().expect("a stopped line")["connections"];
    println!(
        "hostile clients: {} connections tried ({idle_count} idle, the rest hostile requests): \
         {} refused with an error, {} closed by the server, 0 answered; \
         server threads {threads_before} -> {threads_idle} (idle connections) -> {threads_after}; \
         RSS {rss_before} -> {rss_idle} kB; server counters {counters}",
        tally.tried, tally.refused, tally.closed
    );
    assert_eq!(tally.refused + tally.closed + idle_count, tally.tried);
}
