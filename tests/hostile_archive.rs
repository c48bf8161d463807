//! A hostile archive costs nothing to refuse: every size it claims is bounded
//! before anything is read or allocated for it.
//!
//! The object is a sparse file of about 4 GiB whose only content is a 25-byte
//! seek table: one entry, the "manifest" frame, claiming the whole 4 GiB.
//! Reading what it claims would allocate 4 GiB (it did: `archive inspect`
//! peaked at 4.2 GB, `restore-image` at 8.4 GB). Each command here must refuse
//! it at once, and its peak resident memory (GNU time's `%M`) stays far below.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use support::s;

/// Peak RSS allowed, KiB.
const MAX_RSS_KIB: u64 = 200 * 1024;

/// A sparse object whose seek table's one entry claims `claimed` bytes, all
/// of the object before the table (so the table itself adds up).
fn hostile(path: &Path, claimed: u32) {
    let mut table = Vec::new();
    table.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes()); // skippable frame
    table.extend_from_slice(&(8u32 + 9).to_le_bytes()); // one entry + footer
    table.extend_from_slice(&claimed.to_le_bytes()); // compressed
    table.extend_from_slice(&100u32.to_le_bytes()); // decompressed
    table.extend_from_slice(&1u32.to_le_bytes()); // frames
    table.push(0); // descriptor
    table.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    assert_eq!(table.len(), 25);
    let mut f = File::create(path).unwrap();
    f.set_len(u64::from(claimed)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &table, u64::from(claimed)).unwrap();
    f.flush().unwrap();
}

/// Runs `amistore` under GNU time; returns (success, stderr, peak RSS KiB).
fn measured(args: &[&str], data: &Path) -> (bool, String, u64) {
    let rss = data.join("rss");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o", s(&rss), env!("CARGO_BIN_EXE_amistore")])
        .args(args)
        .env("AMISTORE_DATA_DIR", data)
        .output()
        .expect("GNU time (package `time`) runs amistore");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let peak = std::fs::read_to_string(&rss)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (out.status.success(), stderr, peak)
}

#[test]
fn a_seek_table_claiming_gigabytes_is_refused_at_once_in_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bucket = data.join("s3/hostile-bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let object = bucket.join("hostile.bin");
    hostile(&object, u32::MAX);
    assert!(std::fs::metadata(&object).unwrap().len() >= 4 << 30);

    let (ok, stderr, peak) = measured(&["archive", "inspect", s(&object)], &data);
    assert!(!ok, "inspect accepted it");
    assert!(stderr.contains("manifest frame is at most"), "{stderr}");
    assert!(peak < MAX_RSS_KIB, "archive inspect peaked at {peak} KiB");

    let (ok, stderr, peak) = measured(
        &[
            "restore-image",
            "--bucket",
            "hostile-bucket",
            "--object-key",
            "hostile.bin",
            "--name",
            "never-restored",
        ],
        &data,
    );
    assert!(!ok, "the restore was admitted");
    assert!(stderr.contains("manifest frame is at most"), "{stderr}");
    assert!(peak < MAX_RSS_KIB, "restore-image peaked at {peak} KiB");
    println!("peak RSS refusing a 4 GiB claim: {peak} KiB");
}
