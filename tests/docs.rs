//! The docs test: every `amistore`, `aws … --endpoint-url http://127.0.0.1:9000`,
//! `zstd` and `tar` command shown in README.md and docs/*.md is run as written,
//! in document order, against a real `amistore serve`, so the documents
//! cannot drift from the binary.
//!
//! - Synopses (```text blocks, `amistore [--endpoint URL] store-image …`):
//!   the command's `--help` must exist and name every option the synopsis
//!   shows.
//! - Runnable commands (```sh blocks and inline `amistore …` in prose): run
//!   with `sh` in one scratch directory. The documents' placeholders are
//!   filled the way a reader fills them: `ami-…` (or the example id
//!   `ami-0123456789abcdef0`) is the latest AMI id an earlier command printed
//!   (in an object key, the AMI that was stored), `snap-…` the latest snapshot
//!   id, port 9000 a free port, and `root.raw`/`block0` are made first.
//! - `scripts/quickstart.sh root.raw`, the main job, runs as written with the
//!   binary under test (`AMISTORE_BIN`) and the `.venv` AWS CLI.
//! - Not run here: `scripts/test` (this suite is part of it), the benchmark
//!   and Lambda build scripts, `sam`/`cargo`, and `aws amistore …` against a
//!   deployed API (`shared/lambda/tests/aws_cli_model.rs` runs that model's
//!   commands through a local API Gateway front).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_owned(), repo().join("README.md"))];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    docs.extend(pages.into_iter().map(|p| {
        (
            format!("docs/{}", p.file_name().unwrap().to_string_lossy()),
            p,
        )
    }));
    docs.into_iter()
        .map(|(name, path)| (name, std::fs::read_to_string(path).unwrap()))
        .collect()
}

/// A document's pieces in order: fenced blocks (language, body) and, for
/// prose, inline code spans that start with `amistore `.
fn pieces(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for inner in lines.by_ref() {
                if inner.starts_with("```") {
                    break;
                }
                body.push_str(inner);
                body.push('\n');
            }
            out.push((lang.trim().to_owned(), body));
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.starts_with("amistore ") && !span.contains('…') {
                out.push(("inline".to_owned(), format!("{span}\n")));
            }
        }
    }
    out
}

/// Command lines of a block: continuations joined (a trailing `\`, or in a
/// synopsis an indented line), comments dropped. In a transcript (a block
/// with `$ ` prompts) only the prompted lines are commands.
fn command_lines(body: &str) -> Vec<String> {
    let transcript = body.lines().any(|l| l.starts_with("$ "));
    let mut lines: Vec<String> = Vec::new();
    for line in body.lines() {
        if transcript && !line.starts_with("$ ") {
            continue;
        }
        let indented_option = line.starts_with("  ") && line.trim_start().starts_with('[');
        match lines.last_mut() {
            Some(last) if indented_option && last.starts_with("amistore ") => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => lines.push(line.to_owned()),
        }
    }
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in &lines {
        let line = line.trim_start().trim_start_matches("$ ");
        let (code, continued) = match line.strip_suffix('\\') {
            Some(code) => (code, true),
            None => (line, false),
        };
        current.push_str(code);
        if continued {
            current.push(' ');
            continue;
        }
        let without_comment = match current.find("  #") {
            Some(at) => current[..at].to_owned(),
            None => current.clone(),
        };
        if !without_comment.trim().is_empty() {
            joined.push(without_comment.trim().to_owned());
        }
        current.clear();
    }
    joined
}

/// The subcommand path of a synopsis line (`bucket objects`), and its options.
fn synopsis(line: &str) -> Option<(Vec<String>, BTreeSet<String>)> {
    let rest = line.strip_prefix("amistore ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let mut path = Vec::new();
    let mut skipping = false;
    for w in &words {
        if skipping {
            skipping = !w.ends_with(']');
            continue;
        }
        if w.starts_with('[') {
            skipping = !w.ends_with(']');
            continue;
        }
        if w.starts_with('-')
            || w.chars().any(|c| c.is_ascii_uppercase())
            || w.starts_with('(')
            || w.contains('|')
        {
            break;
        }
        path.push((*w).to_owned());
    }
    let options = words
        .iter()
        .flat_map(|w| w.split(['[', ']', '|', '…', '=']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect();
    (!path.is_empty()).then_some((path, options))
}

#[test]
fn every_synopsis_matches_the_commands_help() {
    let mut checked = 0;
    for (doc, text) in documents() {
        for (lang, body) in pieces(&text) {
            // Inline spans that are not a whole command line are synopses
            // (`amistore bucket create NAME --owner ACCOUNT_ID`).
            let synopsis_block = match lang.as_str() {
                "text" => true,
                "inline" => !whole_command(&body),
                _ => false,
            };
            if !synopsis_block {
                continue;
            }
            for line in command_lines(&body) {
                let Some((path, options)) = synopsis(&line) else {
                    continue;
                };
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                let out = amistore_in(&args, None);
                let help = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{doc}: `{line}`: amistore {} --help fails: {}",
                    path.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
                // `--aws-…` options exist in a binary built with the `aws`
                // feature (scripts/test builds it so).
                let with_aws = help.contains("--aws-table");
                for option in options
                    .iter()
                    .filter(|o| with_aws || !o.starts_with("--aws-"))
                {
                    assert!(
                        help.contains(option.as_str()),
                        "{doc}: `{line}` shows {option}, which amistore {} does not take",
                        path.join(" ")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} synopses found");
}

/// What the documents' runnable commands share: a scratch directory, a
/// server, and the ids earlier commands printed.
struct Reader {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    server: Option<Child>,
    stored_ami: Option<String>,
    last_ami: Option<String>,
    last_snapshot: Option<String>,
    ran: Vec<String>,
}

fn ids(text: &str, prefix: &str, len: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let candidate = &rest[at..];
        let id: String = candidate.chars().take(len).collect();
        if id.len() == len && id[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit()) {
            found.push(id);
        }
        rest = &rest[at + prefix.len()..];
    }
    found
}

impl Reader {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // What the documents ask the reader to have: a raw disk, a block.
        std::fs::write(dir.path().join("block0"), vec![7u8; 512 * 1024]).unwrap();
        Self {
            dir,
            data,
            port,
            server: None,
            stored_ami: None,
            last_ami: None,
            last_snapshot: None,
            ran: Vec::new(),
        }
    }

    fn fill(&self, line: &str) -> String {
        let mut line = line
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{}", self.port))
            .replace("ami-0123456789abcdef0", "ami-…");
        if let Some(stored) = &self.stored_ami {
            line = line.replace("ami-….bin", &format!("{stored}.bin"));
        }
        if let Some(ami) = &self.last_ami {
            line = line.replace("ami-…", ami);
        }
        if let Some(snap) = &self.last_snapshot {
            line = line.replace("snap-…", snap);
        }
        line
    }

    fn start_server(&mut self, line: &str) {
        let args: Vec<String> = line
            .trim_end_matches('&')
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_amistore"))
            .args(&args)
            .env("AMISTORE_DATA_DIR", &self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "`{line}` did not start a server");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server = Some(child);
    }

    fn run(&mut self, doc: &str, written: &str) {
        let line = self.fill(written);
        if line.starts_with("amistore serve") && line.ends_with('&') {
            self.start_server(&line);
            self.ran.push(line);
            return;
        }
        assert!(
            !line.contains('…'),
            "{doc}: `{written}` has a placeholder no earlier command filled"
        );
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_amistore")).parent().unwrap();
        let aws = std::env::var_os("AMISTORE_AWS_CLI")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".venv/bin/aws"));
        let path = format!(
            "{}:{}:{}",
            bin_dir.display(),
            aws.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        if line.contains("root.raw") && !self.dir.path().join("root.raw").exists() {
            let disk = std::fs::File::create(self.dir.path().join("root.raw")).unwrap();
            disk.set_len(64 << 20).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&disk, &bytes(4 << 20, 3), 1 << 20).unwrap();
        }
        let out = Command::new("sh")
            .args([
                "-c",
                &line.replace("scripts/", &format!("{}/scripts/", repo().display())),
            ])
            .current_dir(self.dir.path())
            .env("AMISTORE_BIN", env!("CARGO_BIN_EXE_amistore"))
            .env("TMPDIR", self.dir.path())
            .env("PATH", path)
            .env("AMISTORE_DATA_DIR", &self.data)
            .env_remove("AMISTORE_ENDPOINT")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{doc}: `{written}` (run as `{line}`) failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(ami) = ids(&stdout, "ami-", 21).pop() {
            if line.contains("store-image") && self.stored_ami.is_none() {
                self.stored_ami = Some(ami.clone());
            }
            self.last_ami = Some(ami);
        }
        if line.contains("store-image") {
            self.stored_ami = ids(&line, "ami-", 21).pop().or(self.stored_ami.take());
        }
        if let Some(snap) = ids(&stdout, "snap-", 22).pop() {
            self.last_snapshot = Some(snap);
        }
        self.ran.push(line);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Whether an inline span is a whole command line to copy (a pipeline
/// that makes what it uses), not a mention of a command.
fn whole_command(span: &str) -> bool {
    span.contains(" && ") || span.contains("$(")
}

/// Whether a documented command is run here (see the module's note).
fn runnable(line: &str) -> bool {
    let local_aws = line.starts_with("aws --endpoint-url http://127.0.0.1:9000");
    line.starts_with("amistore ")
        || line.starts_with("scripts/quickstart.sh ")
        || local_aws
        || line.starts_with("zstd ")
        || line.starts_with("truncate ")
}

#[test]
fn every_runnable_command_in_the_documents_runs_as_written() {
    let mut reader = Reader::new();
    // The stock tools read an archive the reader has: they run last, once
    // `aws s3 cp` (docs/api.md) has downloaded one.
    let mut on_an_archive = Vec::new();
    for (doc, text) in documents() {
        for (lang, body) in pieces(&text) {
            if lang != "sh" && !(lang == "inline" && whole_command(&body)) {
                continue;
            }
            for line in command_lines(&body) {
                match line.starts_with("zstd ") {
                    true => on_an_archive.push((doc.clone(), line)),
                    false if runnable(&line) => reader.run(&doc, &line),
                    false => {}
                }
            }
        }
    }
    for (doc, line) in on_an_archive {
        reader.run(&doc, &line);
    }
    let ran = reader.ran.join("\n");
    for expected in [
        "amistore serve",
        "ec2 create-store-image-task",
        "ec2 wait image-available",
        "ebs put-snapshot-block",
        "ec2 register-image",
        "s3 cp",
        "zstd -dc",
        "amistore bucket create offline",
        "scripts/quickstart.sh root.raw",
    ] {
        assert!(ran.contains(expected), "no `{expected}` was run:\n{ran}");
    }
}
