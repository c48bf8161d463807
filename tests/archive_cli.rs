//! End to end: the `amistore archive` commands against real files, checked with
//! the stock `zstd` and GNU `tar` binaries.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use amistore_core::blocks::BLOCK_SIZE;
use support::*;

fn pack(image: &Image, out: &Path) {
    let mut args = vec![
        "archive",
        "pack",
        "--out",
        s(out),
        "--name",
        "e2e image (v1)",
        "--description",
        "end-to-end",
    ];
    args.extend([
        "--boot-mode",
        "uefi",
        "--tag",
        "Name=web",
        "--tag",
        "team=storage",
    ]);
    let disk_args = image.disk_args();
    args.extend(disk_args.iter().map(String::as_str));
    ok(&args);
}

#[test]
fn pack_then_extract_gives_identical_disks_and_hole_layout() {
    let image = make_image();
    let archive = image.dir.path().join("img.bin");
    pack(&image, &archive);
    // The 9 GiB volume is holes but 1 MiB plus two blocks: the archive stays small.
    let size = fs::metadata(&archive).unwrap().len();
    assert!(size < 16 * MIB, "archive is {size} bytes");

    let out = image.dir.path().join("out");
    let listed = ok(&["archive", "extract", s(&archive), "--out", s(&out)]);
    assert_eq!(listed.lines().count(), 4);
    let names = ["disk0-xvda.raw", "disk1-xvdf.raw", "disk2-xvdg.raw"];
    for ((_, src), name) in image.disks.iter().zip(names) {
        let got = out.join(name);
        same_file(src, &got);
        assert_eq!(layout(&got), layout(src), "{name}: allocated blocks differ");
    }
    assert_eq!(
        layout(&image.disks[0].1),
        vec![0..6, 10..12, 40..59, 127..128],
        "the fixture has the intended layout"
    );
    assert!(layout(&image.disks[2].1).is_empty());
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image"]["name"], "e2e image (v1)");
    assert_eq!(manifest["image"]["bootMode"], "uefi");
    assert_eq!(
        manifest["image"]["blockDeviceMappings"][1]["ebs"]["volumeSizeGib"],
        9
    );

    // No temporary files are left behind, and existing outputs are not overwritten.
    let stray: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    let err = fails(&["archive", "extract", s(&archive), "--out", s(&out)]);
    assert!(err.contains("already exists"), "{err}");
    ok(&[
        "archive",
        "extract",
        s(&archive),
        "--out",
        s(&out),
        "--force",
    ]);
}

#[test]
fn stock_zstd_and_tar_read_the_archive() {
    let image = make_image();
    let archive = image.dir.path().join("img.bin");
    pack(&image, &archive);
    let status = Command::new("zstd")
        .args(["-q", "-t", s(&archive)])
        .status()
        .unwrap();
    assert!(status.success(), "zstd -t rejected the archive");

    // Extract the small members to disk and stream the 9 GiB one into cmp.
    let out = image.dir.path().join("tar");
    fs::create_dir(&out).unwrap();
    assert!(sh(
        "zstd -dc \"$1\" | tar -x -C \"$2\" manifest.json disk0-xvda.raw disk2-xvdg.raw",
        &[&archive, &out]
    ));
    same_file(&image.disks[0].1, &out.join("disk0-xvda.raw"));
    same_file(&image.disks[2].1, &out.join("disk2-xvdg.raw"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["disks"].as_array().unwrap().len(), 3);

    assert!(
        sh(
            "zstd -dc \"$1\" | tar -x -O disk1-xvdf.raw | cmp - \"$2\"",
            &[&archive, &image.disks[1].1]
        ),
        "the 9 GiB member differs through tar"
    );

    let listing = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc \"$1\" | tar -tv")
        .args(["sh", s(&archive)])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(
        listing.contains("9663676416"),
        "tar lists the pax size: {listing}"
    );
    let order: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "disk0-xvda.raw",
            "disk1-xvdf.raw",
            "disk2-xvdg.raw",
            "manifest.json"
        ]
    );
}

#[test]
fn inspect_and_verify_report_and_detect_corruption() {
    let image = make_image();
    let archive = image.dir.path().join("img.bin");
    pack(&image, &archive);
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&["archive", "inspect", s(&archive), "--json"])).unwrap();
    assert_eq!(summary["name"], "e2e image (v1)");
    assert_eq!(summary["disks"][1]["volumeSize"], 9u64 << 30);
    assert_eq!(summary["disks"][0]["presentBytes"], 28 * BLOCK_SIZE);
    assert_eq!(summary["tags"]["team"], "storage");
    assert!(summary["compressionRatio"].as_f64().unwrap() > 1.0);
    let text = ok(&["archive", "inspect", s(&archive)]);
    assert!(
        text.contains("/dev/xvdf") && text.contains("9.00 GiB"),
        "{text}"
    );

    assert!(ok(&["archive", "verify", s(&archive)]).contains("OK"));

    // Flip one bit in the middle of the random data of the root disk.
    let index = amistore_core::archive::ArchiveIndex::open(&File::open(&archive).unwrap()).unwrap();
    let frame = index
        .frames()
        .iter()
        .find(|f| matches!(f.role, amistore_core::archive::FrameRole::Data { first_block: 44, .. }))
        .copied()
        .or_else(|| {
            index.frames().iter().copied().find(|f| {
                matches!(f.role, amistore_core::archive::FrameRole::Data { first_block, blocks, .. } if (first_block..first_block + blocks).contains(&44))
            })
        })
        .unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&archive)
        .unwrap();
    let at = frame.offset + u64::from(frame.entry.compressed) / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 4], at).unwrap();
    let err = fails(&["archive", "verify", s(&archive)]);
    let unit = frame.role.unit().unwrap();
    assert!(
        err.contains(&format!("unit {unit} is corrupt")) && err.contains("disk0-xvda.raw"),
        "{err}"
    );
    let stock = Command::new("zstd")
        .args(["-q", "-t", s(&archive)])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !stock.success(),
        "stock zstd must catch the flipped bit too"
    );

    // A failed extract leaves nothing behind.
    let out = image.dir.path().join("out");
    let err = fails(&["archive", "extract", s(&archive), "--out", s(&out)]);
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "a failed extract left files"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.raw");
    File::create(&odd).unwrap().write_all(&[1u8; 1000]).unwrap();
    let out = dir.path().join("x.bin");
    let disk = format!("/dev/xvda={}", odd.display());
    let err = fails(&[
        "archive",
        "pack",
        "--out",
        s(&out),
        "--name",
        "odd disk",
        "--disk",
        &disk,
    ]);
    assert!(err.contains("not a positive multiple of 512 KiB"), "{err}");
    assert!(
        fs::read_dir(dir.path()).unwrap().count() == 1,
        "pack left output behind"
    );

    let good = dir.path().join("good.raw");
    File::create(&good).unwrap().set_len(MIB).unwrap();
    let disk = format!("/dev/xvda={}", good.display());
    for (args, expect) in [
        (vec!["--name", "x"], "3 to 128"),
        (vec!["--name", "bad*name"], "'*'"),
        (vec!["--name", "fine", "--architecture", "amd64"], "x86_64"),
        (vec!["--name", "fine", "--tag", "novalue"], "KEY=VALUE"),
        (
            vec!["--name", "fine", "--root-device-name", "/dev/sdz"],
            "not one of the disks",
        ),
    ] {
        let mut full = vec!["archive", "pack", "--out", s(&out), "--disk", &disk];
        full.extend(args);
        let err = fails(&full);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
    }
    let missing = format!("/dev/xvda={}", dir.path().join("nope.raw").display());
    assert!(
        fails(&[
            "archive",
            "pack",
            "--out",
            s(&out),
            "--name",
            "fine",
            "--disk",
            &missing
        ])
        .contains("nope.raw")
    );

    ok(&[
        "archive",
        "pack",
        "--out",
        s(&out),
        "--name",
        "fine",
        "--disk",
        &disk,
    ]);
    let err = fails(&[
        "archive",
        "pack",
        "--out",
        s(&out),
        "--name",
        "fine",
        "--disk",
        &disk,
    ]);
    assert!(err.contains("already exists"), "{err}");

    // Truncated, empty and foreign files are refused without a panic.
    let bytes = fs::read(&out).unwrap();
    let cut = dir.path().join("cut.bin");
    fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    assert!(fails(&["archive", "inspect", s(&cut)]).contains("not an amistore archive"));
    fs::write(&cut, b"").unwrap();
    assert!(fails(&["archive", "verify", s(&cut)]).contains("too short"));
    assert!(fails(&["archive", "inspect", s(&good)]).contains("not an amistore archive"));
}
