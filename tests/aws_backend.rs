//! `amistore --backend aws` end to end against moto's server: an image seeded
//! through the EBS direct APIs and RegisterImage is stored to S3, the object is
//! checked with stock `zstd` and `tar`, restored under a new name, and the
//! restored snapshots' blocks are read back through the EBS APIs and compared.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use amistore_aws::testing::{Aws, moto_endpoint};
use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::ids::{ImageId, ResourceState, SnapshotId, unique_token};
use amistore_core::image::{
    Architecture, BlockDeviceMapping, EbsMapping, Encryption, GIB, ImageMetadata, VolumeType,
};
use amistore_core::ports::{ImageCatalog, SnapshotStore};
use support::{bytes, s};

/// One disk of the seeded image: its size and the blocks written (index → data).
struct Disk {
    device: &'static str,
    bytes: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

fn seed_disks() -> Vec<Disk> {
    let block = |seed| bytes(BLOCK_SIZE, seed);
    vec![
        Disk {
            device: "/dev/xvda",
            // 12 MiB: not whole GiB (as a locally imported disk may be).
            bytes: 24 * BLOCK_SIZE,
            blocks: BTreeMap::from([
                (0, block(2)),
                (1, block(1)),
                (2, block(3)),
                (5, vec![0; BLOCK_SIZE as usize]), // written zeros stay present
                (23, block(4)),
            ]),
        },
        Disk {
            device: "/dev/xvdb",
            bytes: GIB,
            blocks: BTreeMap::from([(7, block(5)), (2047, block(7))]),
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
    let mut snapshots = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let snap = images
            .start_snapshot(
                &account,
                disk.bytes,
                &[format!("disk=d{i}").parse().unwrap()],
                &Encryption::Unencrypted,
                &format!("seed-{token}-{i}"),
            )
            .unwrap();
        for (index, data) in &disk.blocks {
            images.write_blocks(&snap, *index, data).unwrap();
        }
        images
            .complete_snapshot(&snap, disk.blocks.len() as u64)
            .unwrap();
        snapshots.push(snap);
    }
    let mapping = |i: usize, d: &Disk| BlockDeviceMapping {
        device_name: d.device.parse().unwrap(),
        ebs: Some(EbsMapping {
            disk: Some(i),
            volume_size_gib: d.bytes.div_ceil(GIB),
            volume_type: VolumeType::Gp3,
            iops: Some(3000),
            throughput: Some(125),
            delete_on_termination: true,
            encrypted: false,
            kms_key_id: None,
        }),
        virtual_name: None,
        no_device: false,
    };
    let metadata = ImageMetadata {
        description: Some("seeded through the EBS direct APIs".into()),
        ena_support: true,
        block_device_mappings: disks
            .iter()
            .enumerate()
            .map(|(i, d)| mapping(i, d))
            .collect(),
        tags: vec!["Name=e2e".parse().unwrap()],
        ..ImageMetadata::minimal(
            format!("e2e-source-{token}").parse().unwrap(),
            Architecture::X86_64,
            "/dev/xvda".parse().unwrap(),
        )
    };
    let source = images
        .register_image(&account, &metadata, &snapshots, &format!("seed-{token}"))
        .unwrap();
    images
        .set_image_state(&account, &source, ResourceState::Available, None)
        .unwrap();

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
        let written: u64 = disk.blocks.values().map(|b| b.len() as u64).sum();
        let nonzero = member.iter().filter(|&&b| b != 0).count() as u64;
        assert!(
            nonzero <= written,
            "disk {i}: no data where none was written"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest
            .to_string()
            .contains("seeded through the EBS direct APIs")
    );

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
    assert_eq!(
        image.metadata.description.as_deref(),
        Some("seeded through the EBS direct APIs")
    );
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
            BlockRanges::from_unsorted(disk.blocks.keys().map(|&b| b..b + 1).collect()),
            "disk {i}: the same blocks are present"
        );
        for (index, data) in &disk.blocks {
            let mut back = vec![1u8; BLOCK_SIZE as usize];
            images.read_blocks(id, *index, &mut back).unwrap();
            assert_eq!(&back, data, "disk {i} block {index}");
        }
    }
}
