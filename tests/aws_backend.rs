//! `amistore --backend aws` end to end against moto's server: an image seeded
//! through the EBS direct APIs and RegisterImage is stored to S3, the object is
//! checked with stock `zstd` and `tar`, restored under a new name, and the
//! restored snapshots' blocks are read back through the EBS APIs and compared.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use amistore_aws::testing::{Aws, SeedDisk, moto_endpoint};
use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::ids::{ImageId, ResourceState, SnapshotId, unique_token};
use amistore_core::image::{Encryption, GIB};
use amistore_core::ports::{ImageCatalog, SnapshotStore};
use support::{bytes, s};

/// The seeded image's disks.
fn seed_disks() -> Vec<SeedDisk> {
    let block = |seed| bytes(BLOCK_SIZE, seed);
    vec![
        SeedDisk {
            device: "/dev/xvda",
            // 12 MiB: not whole GiB (as a locally imported disk may be).
            bytes: 24 * BLOCK_SIZE,
            blocks: vec![
                (0, block(2)),
                (1, block(1)),
                (2, block(3)),
                (5, vec![0; BLOCK_SIZE as usize]), // written zeros stay present
                (23, block(4)),
            ],
        },
        SeedDisk {
            device: "/dev/xvdb",
            bytes: GIB,
            blocks: vec![(7, block(5)), (2047, block(7))],
        },
    ]
}

/// Runs `amistore --backend aws` against moto, in `aws`'s region and table.
fn amistore(aws: &Aws, data: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_amistore"))
        .arg("--quiet")
        .args(args)
        .env("AMISTORE_BACKEND", "aws")
        .env("AMISTORE_DATA_DIR", data)
        .env("AMISTORE_TABLE", &aws.settings.table)
        .env("AMISTORE_WORK_BUCKET", aws.settings.work_bucket.as_str())
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env(
            "AWS_REGION",
            aws.settings.overrides.region.as_deref().unwrap(),
        )
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "amistore {args:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn sh(script: &str, args: &[&str]) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .status()
        .unwrap()
        .success()
}

#[test]
fn stores_and_restores_through_the_aws_adapters_on_moto() {
    // A region of its own: moto keeps EC2 and EBS state per region.
    let aws = Aws::connect_in("us-west-2");
    let images = aws.ports.images.as_ref();
    let account = aws.ports.account.clone();
    let token = &unique_token()[..10];
    let bucket = format!("archive-{token}");
    aws.create_bucket(&bucket);
    aws.create_bucket(aws.settings.work_bucket.as_str());

    // Seed: StartSnapshot, PutSnapshotBlock, CompleteSnapshot, RegisterImage.
    let disks = seed_disks();
    let name = format!("e2e-source-{token}");
    let (source, snapshots) =
        aws.seed_image(&name, &disks, &Encryption::Unencrypted, &["Name=e2e"]);
    let description = format!("{name}, seeded through the EBS direct APIs");

    // Store with the CLI over the AWS adapters.
    let data = tempfile::tempdir().unwrap();
    let key = amistore(
        &aws,
        data.path(),
        &[
            "store-image",
            "--image-id",
            source.as_str(),
            "--bucket",
            &format!("{bucket}/e2e/nightly"),
        ],
    );
    let key = key.trim();
    assert_eq!(key, format!("e2e/nightly/{source}.bin"));
    let described = amistore(&aws, data.path(), &["describe-store-image-tasks"]);
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let task = &described["StoreImageTaskResults"][0];
    assert_eq!(task["StoreTaskState"], "Completed", "{described}");
    assert_eq!(task["S3objectKey"], key);

    // The object, read back from S3, with stock tools.
    let object = data.path().join("object.bin");
    std::fs::write(&object, aws.get_object(&bucket, key)).unwrap();
    assert!(
        sh("zstd -q -t \"$1\"", &[s(&object)]),
        "zstd -t rejected the object"
    );
    let out = data.path().join("tar");
    std::fs::create_dir(&out).unwrap();
    assert!(
        sh("zstd -dc \"$1\" | tar -x -C \"$2\"", &[s(&object), s(&out)]),
        "tar could not read the archive"
    );
    for (i, disk) in disks.iter().enumerate() {
        let base = disk.device.trim_start_matches("/dev/");
        let member = std::fs::read(out.join(format!("disk{i}-{base}.raw"))).unwrap();
        assert_eq!(member.len() as u64, disk.bytes, "disk {i} size");
        for (index, data) in &disk.blocks {
            let at = (*index * BLOCK_SIZE) as usize;
            assert_eq!(
                &member[at..at + BLOCK_SIZE as usize],
                &data[..],
                "disk {i} block {index}"
            );
        }
        let written: u64 = disk.blocks.iter().map(|(_, b)| b.len() as u64).sum();
        let nonzero = member.iter().filter(|&&b| b != 0).count() as u64;
        assert!(
            nonzero <= written,
            "disk {i}: no data where none was written"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image"]["description"], description, "{manifest}");

    // Restore under a new name; read every block back through the EBS APIs.
    let restored = amistore(
        &aws,
        data.path(),
        &[
            "restore-image",
            "--bucket",
            &bucket,
            "--object-key",
            key,
            "--name",
            &format!("e2e-restored-{token}"),
            "--tag-specification",
            "image:restored=yes",
        ],
    );
    let restored: ImageId = restored.trim().parse().unwrap();
    assert_ne!(restored, source);
    let image = images.describe_image(&account, &restored).unwrap();
    assert_eq!(image.state, ResourceState::Available);
    assert_eq!(
        image.metadata.name.as_str(),
        format!("e2e-restored-{token}")
    );
    assert_eq!(image.metadata.description, Some(description));
    assert!(image.metadata.tags.contains(&"Name=e2e".parse().unwrap()));
    assert!(
        image
            .metadata
            .tags
            .contains(&"restored=yes".parse().unwrap())
    );
    assert_eq!(image.snapshots.len(), disks.len());
    for (i, (disk, snap)) in disks.iter().zip(&image.snapshots).enumerate() {
        let id: &SnapshotId = &snap.snapshot_id;
        assert!(!snapshots.contains(id), "restores write new snapshots");
        assert_eq!(snap.volume_size, disk.bytes, "disk {i} size");
        assert_eq!(snap.tags, vec![format!("disk=d{i}").parse().unwrap()]);
        let present = images.list_blocks(&account, id).unwrap();
        assert_eq!(
            present,
            BlockRanges::from_unsorted(disk.blocks.iter().map(|&(b, _)| b..b + 1).collect()),
            "disk {i}: the same blocks are present"
        );
        for (index, data) in &disk.blocks {
            let mut back = vec![1u8; BLOCK_SIZE as usize];
            images.read_blocks(id, *index, &mut back).unwrap();
            assert_eq!(&back, data, "disk {i} block {index}");
        }
    }
}
