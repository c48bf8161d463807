//! Request-capturing tests (aws-smithy-mocks): what the EC2 and EBS adapters
//! send where moto does not look. moto's RegisterImage ignores the block device
//! mappings and the other image attributes (tests/moto/amistore_moto.py fills
//! them in for the end-to-end tests, but checks nothing), and moto's EBS takes
//! any checksum, data length and changed-block count.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use amistore_aws::{Bridge, EbsLimits, images::Ec2Images};
use amistore_core::Error;
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::ids::SnapshotId;
use amistore_core::image::{
    Architecture, BlockDeviceMapping, BootMode, EbsMapping, Encryption, ImageMetadata, VolumeType,
};
use amistore_core::ports::{ImageCatalog, SnapshotStore};
use aws_sdk_ebs::operation::complete_snapshot::{CompleteSnapshotInput, CompleteSnapshotOutput};
use aws_sdk_ebs::operation::get_snapshot_block::GetSnapshotBlockOutput;
use aws_sdk_ebs::operation::list_snapshot_blocks::ListSnapshotBlocksOutput;
use aws_sdk_ebs::operation::put_snapshot_block::{PutSnapshotBlockInput, PutSnapshotBlockOutput};
use aws_sdk_ebs::operation::start_snapshot::{StartSnapshotInput, StartSnapshotOutput};
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::Block;
use aws_sdk_ec2::operation::create_tags::CreateTagsOutput;
use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
use aws_sdk_ec2::operation::register_image::{RegisterImageInput, RegisterImageOutput};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use base64::Engine as _;
use sha2::{Digest, Sha256};

const SNAP_A: &str = "snap-0a1b2c3d4e5f60718";
const SNAP_B: &str = "snap-0f1e2d3c4b5a69788";

fn captured<T: Clone + Send + 'static>() -> Arc<Mutex<Vec<T>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn catalog(
    runtime: &tokio::runtime::Runtime,
    ec2: aws_sdk_ec2::Client,
    ebs: aws_sdk_ebs::Client,
) -> Ec2Images {
    Ec2Images::new(
        ec2,
        ebs,
        Bridge::new(runtime.handle().clone()),
        "123456789012".parse().unwrap(),
        EbsLimits::default(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A 1 GiB snapshot, as DescribeSnapshots tells it.
fn one_gib_snapshot() -> aws_smithy_mocks::Rule {
    mock!(aws_sdk_ec2::Client::describe_snapshots).then_output(|| {
        DescribeSnapshotsOutput::builder()
            .snapshots(
                aws_sdk_ec2::types::Snapshot::builder()
                    .snapshot_id(SNAP_A)
                    .volume_size(1)
                    .state(aws_sdk_ec2::types::SnapshotState::Pending)
                    .build(),
            )
            .build()
    })
}

#[test]
fn register_image_sends_the_whole_mapping_and_every_attribute() {
    let rt = runtime();
    let seen = captured::<RegisterImageInput>();
    let record = seen.clone();
    let register = mock!(aws_sdk_ec2::Client::register_image)
        .match_requests(move |req| {
            record.lock().unwrap().push(req.clone());
            true
        })
        .then_output(|| {
            RegisterImageOutput::builder()
                .image_id("ami-0123456789abcdef0")
                .build()
        });
    let none = mock!(aws_sdk_ec2::Client::describe_images)
        .then_output(|| DescribeImagesOutput::builder().build());
    let tags =
        mock!(aws_sdk_ec2::Client::create_tags).then_output(|| CreateTagsOutput::builder().build());
    let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&register, &none, &tags]);
    let ebs = mock_client!(
        aws_sdk_ebs,
        RuleMode::MatchAny,
        Vec::<&aws_smithy_mocks::Rule>::new()
    );
    let images = catalog(&rt, ec2, ebs);

    let ebs_mapping = |disk, gib, volume_type, iops, throughput| EbsMapping {
        disk: Some(disk),
        volume_size_gib: gib,
        volume_type,
        iops,
        throughput,
        delete_on_termination: disk == 0,
        encrypted: true,
        kms_key_id: None,
    };
    let metadata = ImageMetadata {
        description: Some("web tier".into()),
        boot_mode: Some(BootMode::Uefi),
        ena_support: true,
        sriov_net_support: Some("simple".into()),
        tpm_support: Some("v2.0".into()),
        imds_support: Some("v2.0".into()),
        uefi_data: Some("QU1aTlVFRkk=".into()),
        block_device_mappings: vec![
            BlockDeviceMapping {
                device_name: "/dev/xvda".parse().unwrap(),
                ebs: Some(ebs_mapping(0, 8, VolumeType::Gp3, Some(3000), Some(250))),
                virtual_name: None,
                no_device: false,
            },
            BlockDeviceMapping {
                device_name: "/dev/xvdb".parse().unwrap(),
                ebs: Some(ebs_mapping(1, 100, VolumeType::Io2, Some(6000), None)),
                virtual_name: None,
                no_device: false,
            },
            BlockDeviceMapping {
                device_name: "/dev/xvdc".parse().unwrap(),
                ebs: None,
                virtual_name: Some("ephemeral0".into()),
                no_device: false,
            },
        ],
        tags: vec!["Name=web".parse().unwrap()],
        ..ImageMetadata::minimal(
            "web-restored".parse().unwrap(),
            Architecture::Arm64,
            "/dev/xvda".parse().unwrap(),
        )
    };
    let snapshots: Vec<SnapshotId> = vec![SNAP_A.parse().unwrap(), SNAP_B.parse().unwrap()];
    let id = images
        .register_image(
            &"123456789012".parse().unwrap(),
            &metadata,
            &snapshots,
            "tok-1",
        )
        .unwrap();
    assert_eq!(id.as_str(), "ami-0123456789abcdef0");

    let sent = seen
        .lock()
        .unwrap()
        .pop()
        .expect("RegisterImage was called");
    assert_eq!(sent.name(), Some("web-restored"));
    assert_eq!(sent.description(), Some("web tier"));
    assert_eq!(sent.architecture().map(|a| a.as_str()), Some("arm64"));
    assert_eq!(
        sent.virtualization_type(),
        Some("hvm"),
        "EC2's default would be paravirtual"
    );
    assert_eq!(sent.root_device_name(), Some("/dev/xvda"));
    assert_eq!(sent.boot_mode().map(|b| b.as_str()), Some("uefi"));
    assert_eq!(sent.ena_support(), Some(true));
    assert_eq!(sent.sriov_net_support(), Some("simple"));
    assert_eq!(sent.tpm_support().map(|t| t.as_str()), Some("v2.0"));
    assert_eq!(sent.imds_support().map(|t| t.as_str()), Some("v2.0"));
    assert_eq!(sent.uefi_data(), Some("QU1aTlVFRkk="));
    let m = sent.block_device_mappings();
    assert_eq!(m.len(), 3);
    let root = m[0].ebs().unwrap();
    assert_eq!(m[0].device_name(), Some("/dev/xvda"));
    assert_eq!(
        root.snapshot_id(),
        Some(SNAP_A),
        "disk 0 is the first snapshot"
    );
    assert_eq!(
        (
            root.volume_size(),
            root.volume_type().map(|t| t.as_str()),
            root.iops(),
            root.throughput()
        ),
        (Some(8), Some("gp3"), Some(3000), Some(250))
    );
    assert_eq!(root.delete_on_termination(), Some(true));
    assert_eq!(
        root.encrypted(),
        None,
        "RegisterImage refuses Encrypted with a snapshot"
    );
    let data = m[1].ebs().unwrap();
    assert_eq!(data.snapshot_id(), Some(SNAP_B));
    assert_eq!(
        (
            data.volume_size(),
            data.volume_type().map(|t| t.as_str()),
            data.iops()
        ),
        (Some(100), Some("io2"), Some(6000))
    );
    assert_eq!(data.delete_on_termination(), Some(false));
    assert_eq!(m[2].virtual_name(), Some("ephemeral0"));
    assert!(m[2].ebs().is_none());
    let spec = &sent.tag_specifications()[0];
    assert_eq!(spec.resource_type().map(|r| r.as_str()), Some("image"));
    let tags: Vec<(&str, &str)> = spec
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(
        tags,
        vec![
            ("Name", "web"),
            ("amistore:client-token", "tok-1"),
            ("amistore:state", "pending")
        ]
    );
}

#[test]
fn snapshot_writes_carry_checksums_lengths_and_the_changed_count() {
    let rt = runtime();
    let starts = captured::<StartSnapshotInput>();
    // (index, data length, checksum, algorithm): the input itself is not Clone
    // (its body is a stream).
    type Put = (Option<i32>, Option<i32>, Option<String>, Option<String>);
    let puts = captured::<Put>();
    let completes = captured::<CompleteSnapshotInput>();
    let (s, p, c) = (starts.clone(), puts.clone(), completes.clone());
    let start = mock!(aws_sdk_ebs::Client::start_snapshot)
        .match_requests(move |r| {
            s.lock().unwrap().push(r.clone());
            true
        })
        .then_output(|| StartSnapshotOutput::builder().snapshot_id(SNAP_A).build());
    let put = mock!(aws_sdk_ebs::Client::put_snapshot_block)
        .match_requests(move |r: &PutSnapshotBlockInput| {
            p.lock().unwrap().push((
                r.block_index(),
                r.data_length(),
                r.checksum().map(str::to_owned),
                r.checksum_algorithm().map(|a| a.as_str().to_owned()),
            ));
            true
        })
        .then_output(|| PutSnapshotBlockOutput::builder().build());
    let complete = mock!(aws_sdk_ebs::Client::complete_snapshot)
        .match_requests(move |r| {
            c.lock().unwrap().push(r.clone());
            true
        })
        .then_output(|| {
            CompleteSnapshotOutput::builder()
                .status(aws_sdk_ebs::types::Status::Completed)
                .build()
        });
    let ebs = mock_client!(aws_sdk_ebs, RuleMode::MatchAny, [&start, &put, &complete]);
    let none = mock!(aws_sdk_ec2::Client::describe_snapshots)
        .match_requests(|r| !r.filters().is_empty())
        .then_output(|| DescribeSnapshotsOutput::builder().build());
    let ec2 = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        [&none, &one_gib_snapshot()]
    );
    let images = catalog(&rt, ec2, ebs);

    // A 3 MiB volume: not whole GiB, so its exact size travels as a tag.
    let id = images
        .start_snapshot(
            &"123456789012".parse().unwrap(),
            6 * BLOCK_SIZE,
            &["disk=root".parse().unwrap()],
            &Encryption::Unencrypted,
            "restore-task-1-disk-0",
        )
        .unwrap();
    let sent = starts.lock().unwrap().pop().unwrap();
    assert_eq!(sent.volume_size(), Some(1), "EBS sizes are whole GiB");
    assert_eq!(sent.client_token(), Some("restore-task-1-disk-0"));
    assert_eq!(
        sent.timeout(),
        Some(4320),
        "sized for queued and long restores"
    );
    let tags: Vec<_> = sent
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert!(tags.contains(&("disk", "root")));
    assert!(tags.contains(&("amistore:volume-bytes", "3145728")));

    let mut data = vec![0u8; 2 * BLOCK_SIZE as usize];
    data[..BLOCK_SIZE as usize].fill(0x5a);
    data[BLOCK_SIZE as usize..].fill(0xa5);
    images.write_blocks(&id, 4, &data).unwrap();
    // Writes land in the background; finish_writes waits for them.
    images.finish_writes(&id).unwrap();
    let mut sent = puts.lock().unwrap().clone();
    sent.sort_by_key(|p| p.0);
    assert_eq!(sent.len(), 2);
    for (i, (index, length, checksum, algorithm)) in sent.iter().enumerate() {
        let block = &data[i * BLOCK_SIZE as usize..(i + 1) * BLOCK_SIZE as usize];
        assert_eq!(*index, Some(4 + i as i32));
        assert_eq!(*length, Some(524_288));
        assert_eq!(
            checksum.as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode(Sha256::digest(block))
                    .as_str()
            )
        );
        assert_eq!(algorithm.as_deref(), Some("SHA256"));
    }
    assert!(
        matches!(
            images.write_blocks(&id, 5, &data),
            Err(Error::InvalidInput(_))
        ),
        "block 6 is past a 6-block volume"
    );
    images.complete_snapshot(&id, 2).unwrap();
    assert_eq!(completes.lock().unwrap()[0].changed_blocks_count(), Some(2));
}

#[test]
fn block_reads_use_the_listed_tokens_and_reject_damaged_blocks() {
    let rt = runtime();
    let good = vec![7u8; BLOCK_SIZE as usize];
    let good_sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&good));
    let list = mock!(aws_sdk_ebs::Client::list_snapshot_blocks).then_output(|| {
        ListSnapshotBlocksOutput::builder()
            .blocks(
                Block::builder()
                    .block_index(1)
                    .block_token("tok-one")
                    .build(),
            )
            .blocks(
                Block::builder()
                    .block_index(2)
                    .block_token("tok-two")
                    .build(),
            )
            .build()
    });
    let (g1, s1) = (good.clone(), good_sum.clone());
    let get_one = mock!(aws_sdk_ebs::Client::get_snapshot_block)
        .match_requests(|r| r.block_index() == Some(1) && r.block_token() == Some("tok-one"))
        .then_output(move || {
            GetSnapshotBlockOutput::builder()
                .block_data(ByteStream::from(g1.clone()))
                .data_length(BLOCK_SIZE as i32)
                .checksum(s1.clone())
                .build()
        });
    // Block 2 arrives damaged: its bytes do not match the checksum EBS sent.
    let (g2, s2) = (good.clone(), good_sum.clone());
    let get_two = mock!(aws_sdk_ebs::Client::get_snapshot_block)
        .match_requests(|r| r.block_index() == Some(2) && r.block_token() == Some("tok-two"))
        .then_output(move || {
            let mut damaged = g2.clone();
            damaged[100] ^= 1;
            GetSnapshotBlockOutput::builder()
                .block_data(ByteStream::from(damaged))
                .data_length(BLOCK_SIZE as i32)
                .checksum(s2.clone())
                .build()
        });
    let ebs = mock_client!(aws_sdk_ebs, RuleMode::MatchAny, [&list, &get_one, &get_two]);
    let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&one_gib_snapshot()]);
    let images = catalog(&rt, ec2, ebs);
    let snap: SnapshotId = SNAP_A.parse().unwrap();

    let mut two = vec![9u8; 2 * BLOCK_SIZE as usize];
    images.read_blocks(&snap, 0, &mut two).unwrap();
    assert!(
        two[..BLOCK_SIZE as usize].iter().all(|&b| b == 0),
        "block 0 has no data"
    );
    assert_eq!(&two[BLOCK_SIZE as usize..], &good[..]);

    let mut three = vec![0u8; 3 * BLOCK_SIZE as usize];
    match images.read_blocks(&snap, 0, &mut three) {
        Err(Error::Transient(m)) => assert!(m.to_string().contains("SHA-256"), "{m}"),
        other => panic!("a damaged block must fail the read, got {other:?}"),
    }
}

#[test]
fn a_restored_snapshot_is_encrypted_as_its_source_was() {
    let rt = runtime();
    let starts = captured::<StartSnapshotInput>();
    let s = starts.clone();
    let start = mock!(aws_sdk_ebs::Client::start_snapshot)
        .match_requests(move |r| {
            s.lock().unwrap().push(r.clone());
            true
        })
        .then_output(|| StartSnapshotOutput::builder().snapshot_id(SNAP_A).build());
    let ebs = mock_client!(aws_sdk_ebs, RuleMode::MatchAny, [&start]);
    let none = mock!(aws_sdk_ec2::Client::describe_snapshots)
        .then_output(|| DescribeSnapshotsOutput::builder().build());
    let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&none], |c| c
        .region(aws_sdk_ec2::config::Region::new("eu-west-1")));
    let images = catalog(&rt, ec2, ebs);
    let here = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let elsewhere = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let cases = [
        (Encryption::Key(here.into()), Some(true), Some(here)),
        // A key of another region cannot encrypt here: the account default does.
        (Encryption::Key(elsewhere.into()), Some(true), None),
        (Encryption::DefaultKey, Some(true), None),
        // Nothing said: an account that encrypts by default refuses Encrypted=false.
        (Encryption::Unencrypted, None, None),
    ];
    for (i, (encryption, encrypted, key)) in cases.into_iter().enumerate() {
        images
            .start_snapshot(
                &"123456789012".parse().unwrap(),
                BLOCK_SIZE,
                &[],
                &encryption,
                &format!("kms-{i}"),
            )
            .unwrap();
        let sent = starts.lock().unwrap().pop().unwrap();
        assert_eq!(
            (sent.encrypted(), sent.kms_key_arn()),
            (encrypted, key),
            "{encryption:?}"
        );
    }
}

#[test]
fn a_stored_image_records_the_key_its_snapshots_are_encrypted_under() {
    let rt = runtime();
    let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let image = mock!(aws_sdk_ec2::Client::describe_images).then_output(|| {
        DescribeImagesOutput::builder()
            .images(
                aws_sdk_ec2::types::Image::builder()
                    .image_id("ami-0123456789abcdef0")
                    .owner_id("123456789012")
                    .name("encrypted-source")
                    .state(aws_sdk_ec2::types::ImageState::Available)
                    .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
                    .virtualization_type(aws_sdk_ec2::types::VirtualizationType::Hvm)
                    .root_device_name("/dev/xvda")
                    .creation_date("2026-01-01T00:00:00.000Z")
                    .block_device_mappings(
                        aws_sdk_ec2::types::BlockDeviceMapping::builder()
                            .device_name("/dev/xvda")
                            .ebs(
                                aws_sdk_ec2::types::EbsBlockDevice::builder()
                                    .snapshot_id(SNAP_A)
                                    .volume_size(1)
                                    .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
                                    .encrypted(true)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let snapshot = mock!(aws_sdk_ec2::Client::describe_snapshots).then_output(move || {
        DescribeSnapshotsOutput::builder()
            .snapshots(
                aws_sdk_ec2::types::Snapshot::builder()
                    .snapshot_id(SNAP_A)
                    .volume_size(1)
                    .state(aws_sdk_ec2::types::SnapshotState::Completed)
                    .encrypted(true)
                    .kms_key_id(key)
                    .build(),
            )
            .build()
    });
    let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&image, &snapshot]);
    let ebs = mock_client!(
        aws_sdk_ebs,
        RuleMode::MatchAny,
        Vec::<&aws_smithy_mocks::Rule>::new()
    );
    let images = catalog(&rt, ec2, ebs);
    let described = images
        .describe_image(
            &"123456789012".parse().unwrap(),
            &"ami-0123456789abcdef0".parse().unwrap(),
        )
        .unwrap();
    let ebs = described.metadata.block_device_mappings[0]
        .ebs
        .as_ref()
        .unwrap();
    assert_eq!(
        (ebs.encrypted, ebs.kms_key_id.as_deref()),
        (true, Some(key))
    );
    assert_eq!(ebs.encryption(), Encryption::Key(key.into()));
}
