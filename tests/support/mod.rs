//! Helpers shared by the CLI end-to-end suites: running the binary, test
//! images with holes, zeros, text and random data, and file comparisons.

#![allow(clippy::unwrap_used, dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amistore_core::blocks::BLOCK_SIZE;
use amistore_local::raw_disk::RawDisk;

pub const MIB: u64 = 1 << 20;

/// Runs `amistore` with `args`, with `AMISTORE_DATA_DIR` set to `data` (or unset).
pub fn amistore_in(args: &[&str], data: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amistore"));
    cmd.args(args).env_remove("AMISTORE_DATA_DIR");
    if let Some(dir) = data {
        cmd.env("AMISTORE_DATA_DIR", dir);
    }
    let out = cmd.output().expect("run amistore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "amistore panicked: {stderr}");
    out
}

/// Runs `amistore`, which must succeed; returns its stdout.
pub fn ok_in(args: &[&str], data: Option<&Path>) -> String {
    let out = amistore_in(args, data);
    assert!(
        out.status.success(),
        "amistore {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `amistore`, which must fail; returns its stderr.
pub fn fails_in(args: &[&str], data: Option<&Path>) -> String {
    let out = amistore_in(args, data);
    assert!(
        !out.status.success(),
        "amistore {args:?} should have failed"
    );
    String::from_utf8(out.stderr).unwrap()
}

pub fn ok(args: &[&str]) -> String {
    ok_in(args, None)
}

pub fn fails(args: &[&str]) -> String {
    fails_in(args, None)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic bytes: random-looking when `seed` is odd, text-like when even.
pub fn bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let text = b"Store and restore an AMI using S3; every block comes back. ";
    (0..len)
        .map(|i| {
            if seed % 2 == 1 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            } else {
                text[(i % text.len() as u64) as usize]
            }
        })
        .collect()
}

/// The test image: a root disk with text, random data, holes and allocated zero
/// blocks; a 9 GiB mostly-hole volume; an empty (all-hole) disk.
pub struct Image {
    pub dir: tempfile::TempDir,
    pub disks: Vec<(&'static str, PathBuf)>,
}

pub fn make_image() -> Image {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.raw");
    let f = File::create(&root).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&bytes(3 * MIB, 2), 0).unwrap();
    f.write_all_at(&vec![0u8; BLOCK_SIZE as usize * 2], 5 * MIB)
        .unwrap(); // allocated zeros
    f.write_all_at(&bytes(9 * MIB + 4096, 1), 20 * MIB).unwrap();
    f.write_all_at(b"last block, partly written", 64 * MIB - 100)
        .unwrap();
    let big = dir.path().join("big.raw");
    let f = File::create(&big).unwrap();
    f.set_len(9 << 30).unwrap();
    f.write_all_at(&bytes(MIB, 3), 8 << 30).unwrap(); // past the 8 GiB ustar limit
    f.write_all_at(b"boot sector", 0).unwrap();
    let empty = dir.path().join("empty.raw");
    File::create(&empty).unwrap().set_len(4 * MIB).unwrap();
    Image {
        disks: vec![
            ("/dev/xvda", root),
            ("/dev/xvdf", big),
            ("/dev/xvdg", empty),
        ],
        dir,
    }
}

impl Image {
    /// `--disk DEVICE=PATH` arguments for every disk.
    pub fn disk_args(&self) -> Vec<String> {
        self.disks
            .iter()
            .flat_map(|(d, p)| ["--disk".to_owned(), format!("{d}={}", p.display())])
            .collect()
    }
}

/// The allocated blocks of a file.
pub fn layout(path: &Path) -> Vec<std::ops::Range<u64>> {
    RawDisk::open(path).unwrap().present.runs().to_vec()
}

/// Runs a shell pipeline with positional arguments `$1`, `$2`…; true if it succeeded.
pub fn sh(script: &str, args: &[&Path]) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .status()
        .unwrap()
        .success()
}

pub fn same_file(a: &Path, b: &Path) {
    let status = Command::new("cmp").args([a, b]).status().unwrap();
    assert!(
        status.success(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

/// `amistore serve` on a free loopback port over `data`, its log (stderr)
/// kept in a file; stopped with SIGTERM by [`Serve::stop`] or when dropped.
pub struct Serve {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Serve {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        use std::time::{Duration, Instant};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log = data.with_file_name(format!("serve-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(["serve", "--listen", &listen, "--data-dir", s(data)])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, log }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `host:port` as clients name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A figure of the server process from /proc (`Threads`, `VmRSS`…).
    pub fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Stops the server (SIGTERM) and returns its log.
    pub fn stop(mut self) -> String {
        self.terminate();
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The request log lines of a server's log, as JSON.
pub fn log_events(log: &str, event: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Sends `raw` on a new connection and reads until the server answers in full
/// or closes; "" if it closed without answering.
pub fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let _ = s.write_all(raw);
    read_answer(&mut s)
}

/// Reads one HTTP answer (head and Content-Length body), or until EOF.
pub fn read_answer(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
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
                                .and_then(|v| v.trim().parse::<usize>().ok())
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

/// The status of an HTTP answer; 0 if there was none.
pub fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
