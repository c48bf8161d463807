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
    assert_eq!(json[0]["imageId"], id.as_str());
    assert_eq!(json[0]["metadata"]["tags"][0]["key"], "team");
    assert!(
        json[0]["snapshots"][1]["snapshotId"]
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
            .matches("imageId")
            .count(),
        1
    );
}
