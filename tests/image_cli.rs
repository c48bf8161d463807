//! End to end: `amistore image import/list/export` over a temporary data directory.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

mod support;

use amistore_core::blocks::BLOCK_SIZE;
use support::{fails_in as fails, ok_in as ok};

#[test]
fn import_list_export_round_trip_through_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let root = tmp.path().join("root.raw");
    let f = File::create(&root).unwrap();
    f.set_len(32 * BLOCK_SIZE).unwrap();
    f.write_all_at(&vec![7u8; 3 * BLOCK_SIZE as usize], 2 * BLOCK_SIZE)
        .unwrap();
    f.write_all_at(&vec![0u8; BLOCK_SIZE as usize], 20 * BLOCK_SIZE)
        .unwrap();
    let empty = tmp.path().join("empty.raw");
    File::create(&empty)
        .unwrap()
        .set_len(8 * BLOCK_SIZE)
        .unwrap();
    let d = |dev: &str, p: &Path| format!("{dev}={}", p.display());
    let (root_arg, empty_arg) = (d("/dev/xvda", &root), d("/dev/xvdb", &empty));

    // --data-dir before the subcommand.
    let id = ok(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "image",
            "import",
            "--name",
            "web (v1)",
            "--tag",
            "team=x",
            "--disk",
            &root_arg,
            "--disk",
            &empty_arg,
        ],
        None,
    );
    let id = id.trim().to_owned();
    assert!(id.starts_with("ami-") && id.len() == 21, "{id}");

    // AMISTORE_DATA_DIR instead of the flag.
    let table = ok(&["image", "list"], Some(&data));
    assert!(
        table.contains(&id) && table.contains("available") && table.contains("web (v1)"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["image", "list", "--json"], Some(&data))).unwrap();
    // `aws ec2 describe-images`' shape.
    let image = &json["Images"][0];
    assert_eq!(image["ImageId"], id.as_str());
    assert_eq!(image["State"], "available");
    assert_eq!(image["Tags"][0]["Key"], "team");
    assert!(
        image["BlockDeviceMappings"][1]["Ebs"]["SnapshotId"]
            .as_str()
            .unwrap()
            .starts_with("snap-")
    );

    // --data-dir after the subcommand.
    let out = tmp.path().join("out");
    let files = ok(
        &[
            "image",
            "export",
            &id,
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(files.len(), 2);
    for (src, got) in [(&root, files[0]), (&empty, files[1])] {
        assert_eq!(fs::read(src).unwrap(), fs::read(got).unwrap());
        assert_eq!(support::layout(src), support::layout(Path::new(got)));
    }
    assert_eq!(support::layout(&root), vec![2..5, 20..21]);

    // Errors name the problem.
    let again = fails(
        &["image", "import", "--name", "web (v1)", "--disk", &root_arg],
        Some(&data),
    );
    assert!(again.contains("already exists"), "{again}");
    assert!(
        fails(
            &["image", "export", "ami-0123456789abcdef0", "--out", "x"],
            Some(&data)
        )
        .contains("does not exist")
    );
    assert!(
        fails(&["image", "export", "ami-bogus", "--out", "x"], Some(&data))
            .contains("not a valid image id")
    );
    assert_eq!(
        ok(&["image", "list", "--json"], Some(&data))
            .matches("\"ImageId\"")
            .count(),
        1
    );
}

/// A disk image container given as a raw disk used to be archived as the
/// disk's contents (after the 512 KiB padding hint, or at once when its size
/// happened to be a multiple): an AMI that would never boot. Each container
/// qemu-img makes, and compressed files, are refused with the command that
/// converts them; the converted disk imports with its data and holes intact.
#[test]
fn disk_image_containers_are_refused_with_the_command_that_converts_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let raw = dir.path().join("source.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(16 * BLOCK_SIZE).unwrap();
    f.write_all_at(&support::bytes(BLOCK_SIZE, 1), 2 * BLOCK_SIZE)
        .unwrap();
    f.write_all_at(b"the last block", 16 * BLOCK_SIZE - 100)
        .unwrap();
    let qemu = |args: &[&str]| {
        let out = std::process::Command::new("qemu-img").args(args).output();
        let out = out.expect("qemu-img is needed (scripts/test installs qemu-utils)");
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    };
    let mut cases = Vec::new();
    for (format, options, name) in [
        ("qcow2", "", "a qcow2 image"),
        ("vmdk", "", "a VMDK image"),
        ("vhdx", "", "a VHDX image"),
        ("vpc", "", "a VHD image"),
        ("vpc", "subformat=fixed", "a VHD image"),
        ("vdi", "", "a VDI image"),
    ] {
        let path = dir
            .path()
            .join(format!("disk-{format}-{}.img", cases.len()));
        let mut args = vec!["convert", "-q", "-f", "raw", "-O", format];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([support::s(&raw), support::s(&path)]);
        qemu(&args);
        cases.push((path, name));
    }
    // Padded as the old hint said: still a qcow2.
    let padded = dir.path().join("padded.qcow2");
    fs::copy(&cases[0].0, &padded).unwrap();
    assert!(support::sh("truncate -s %512K \"$1\"", &[&padded]));
    cases.push((padded, "a qcow2 image"));
    let gz = dir.path().join("source.raw.gz");
    assert!(support::sh("gzip -c \"$1\" > \"$2\"", &[&raw, &gz]));
    cases.push((gz, "a gzip file"));

    let archive = dir.path().join("never-written.bin");
    for (path, name) in &cases {
        let disk = format!("/dev/xvda={}", path.display());
        for args in [
            vec!["image", "import", "--name", "container", "--disk", &disk],
            vec![
                "archive",
                "pack",
                "--name",
                "container",
                "--out",
                support::s(&archive),
                "--disk",
                &disk,
            ],
        ] {
            let err = fails(&args, Some(&data));
            assert!(
                err.contains(&format!("is {name}, not a raw disk")),
                "{}: {err}",
                path.display()
            );
        }
    }
    assert_eq!(
        ok(&["image", "list"], Some(&data)).lines().count(),
        1,
        "only the header: no image was imported"
    );

    // The command the message gives, run as given, makes a disk that imports
    // with the same data and the same holes.
    let err = fails(
        &[
            "image",
            "import",
            "--name",
            "container",
            "--disk",
            &format!("/dev/xvda={}", cases[0].0.display()),
        ],
        Some(&data),
    );
    let command = err.trim().rsplit("; ").next().unwrap();
    let command = command
        .strip_prefix("convert it to a raw disk first: ")
        .unwrap();
    assert!(support::sh(command, &[]), "{command}");
    let converted = cases[0].0.with_extension("raw");
    let ami = ok(
        &[
            "image",
            "import",
            "--name",
            "converted",
            "--disk",
            &format!("/dev/xvda={}", converted.display()),
        ],
        Some(&data),
    );
    let out = dir.path().join("exported");
    let files = ok(
        &["image", "export", ami.trim(), "--out", support::s(&out)],
        Some(&data),
    );
    let exported = out.join(files.lines().next().unwrap().rsplit('/').next().unwrap());
    support::same_file(&raw, &exported);
    // Holes stay holes (qemu-img itself allocates the first block it writes).
    assert_eq!(support::layout(&exported), support::layout(&converted));
    assert!(support::layout(&exported).len() <= 3);
}
