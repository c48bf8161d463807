//! The archive format end to end inside the library: round trips, independent
//! parts assembled in any order, interop with an independent seekable-format
//! reader, and rejection of malformed archives.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;

use amistore_core::Error;
use amistore_core::archive::seek_table::FOOTER_LEN;
use amistore_core::archive::{
    ArchiveIndex, ArchivePlan, Decoded, FrameRole, Manifest, ReadAt, encode_unit, read_units,
};
use amistore_core::blocks::BLOCK_SIZE;
use support::*;

/// Decodes every unit and rebuilds the volumes; also returns the present blocks seen.
/// Each disk's rebuilt contents, and the block indices seen in data frames.
type Unpacked = (Vec<Vec<u8>>, Vec<HashSet<u64>>);

fn unpack(archive: &Vec<u8>) -> amistore_core::Result<Unpacked> {
    let index = ArchiveIndex::open(archive)?;
    let m = index.manifest();
    let mut volumes: Vec<Vec<u8>> = m
        .disks
        .iter()
        .map(|d| vec![0u8; d.volume_size as usize])
        .collect();
    let mut seen = vec![HashSet::new(); m.disks.len()];
    read_units(&index, archive, 0..m.units.len(), 2, |d| {
        if let Decoded::Data {
            disk,
            first_block,
            bytes,
            ..
        } = d
        {
            let at = (first_block * BLOCK_SIZE) as usize;
            volumes[disk][at..at + bytes.len()].copy_from_slice(&bytes);
            seen[disk].extend(first_block..first_block + bytes.len() as u64 / BLOCK_SIZE);
        }
        Ok(())
    })?;
    Ok((volumes, seen))
}

#[test]
fn round_trip_keeps_data_and_presence() {
    let disks = three_disks(&mut Rng(1));
    let plan = plan_for(&disks, 4, 0);
    assert!(
        plan.units.len() >= 5,
        "small units should give several parts"
    );
    let (archive, manifest) = pack(&disks, &plan);
    let (volumes, seen) = unpack(&archive).unwrap();
    for (i, disk) in disks.0.iter().enumerate() {
        assert_eq!(volumes[i], disk.bytes, "disk {i} contents");
        let want: HashSet<u64> = disk.present.runs().iter().flat_map(|r| r.clone()).collect();
        assert_eq!(
            seen[i], want,
            "disk {i}: exactly the present blocks come back, zero ones included"
        );
        assert_eq!(manifest.disks[i].present, disk.present);
    }
    assert_eq!(manifest.image.name.as_str(), "round-trip");
    assert_eq!(manifest.disks[0].tags[0].key(), "role");
    // The decompressed stream is the tar stream: its length is headers + volumes + manifest member.
    let tar = zstd::stream::decode_all(&archive[..]).unwrap();
    let volume_bytes: u64 = disks.0.iter().map(|d| d.bytes.len() as u64).sum();
    assert!(tar.len() as u64 > volume_bytes + 3 * 1536 + 1024);
    assert_eq!(tar.len() % 512, 0);
}

#[test]
fn parts_written_in_parallel_in_any_order_assemble_into_the_same_archive() {
    let disks = three_disks(&mut Rng(2));
    let plan = plan_for(&disks, 4, 1 << 20);
    let (whole, _) = pack(&disks, &plan);

    let n = plan.units.len();
    let mut parts: Vec<(usize, Vec<u8>, _)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .rev()
            .map(|u| {
                let (plan, disks) = (&plan, &disks);
                s.spawn(move || {
                    let (bytes, record) =
                        encode_unit(plan, u, disks, 1, Vec::new(), &mut |_| {}).unwrap();
                    (u, bytes, record)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Records reach the final step in completion order, not unit order.
    let records: Vec<_> = parts.iter().map(|(_, _, r)| r.clone()).collect();
    let last = plan.final_part(&records).unwrap();
    parts.sort_by_key(|(u, _, _)| *u);
    for (u, bytes, _) in &parts {
        assert!(bytes.len() >= 1 << 20, "part {u} is padded to the minimum");
    }
    let mut assembled: Vec<u8> = parts.into_iter().flat_map(|(_, b, _)| b).collect();
    assembled.extend_from_slice(&last.bytes);
    assert_eq!(assembled, whole);
    let (volumes, _) = unpack(&assembled).unwrap();
    assert_eq!(volumes[2], disks.0[2].bytes);

    // The stock zstd binary skips the padding frames and verifies every checksum.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padded.bin");
    std::fs::write(&path, &assembled).unwrap();
    let status = std::process::Command::new("zstd")
        .arg("-qt")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "zstd -t rejected a padded archive");
}

#[test]
fn final_part_rejects_missing_or_duplicate_records() {
    let disks = three_disks(&mut Rng(3));
    let plan = plan_for(&disks, 4, 0);
    let records: Vec<_> = (0..plan.units.len())
        .map(|u| {
            encode_unit(&plan, u, &disks, 1, Vec::new(), &mut |_| {})
                .unwrap()
                .1
        })
        .collect();
    assert!(plan.final_part(&records[1..]).is_err());
    let mut dup = records.clone();
    dup[1] = dup[0].clone();
    assert!(plan.final_part(&dup).is_err());
}

#[test]
fn an_independent_seekable_reader_random_accesses_our_archives() {
    let disks = three_disks(&mut Rng(4));
    let plan = plan_for(&disks, 4, 1 << 20);
    let (archive, _) = pack(&disks, &plan);
    let index = ArchiveIndex::open(&archive).unwrap();

    let table =
        zeekstd::SeekTable::from_seekable(&mut zeekstd::BytesWrapper::new(&archive)).unwrap();
    assert_eq!(table.num_frames() as usize, index.frames().len());
    for (i, f) in index.frames().iter().enumerate() {
        assert_eq!(table.frame_start_comp(i as u32).unwrap(), f.offset);
        assert_eq!(
            table.frame_size_decomp(i as u32).unwrap(),
            u64::from(f.entry.decompressed)
        );
    }

    // Random access into disk 0's member: tar offset of a block = its unit's stream
    // offset + header + (block - first) * BLOCK_SIZE.
    let mut stream_offset = 0u64;
    let mut checked = 0;
    for unit in &index.manifest().units {
        if unit.disk == 0 {
            for block in unit.first_block..unit.first_block + unit.block_count {
                let at = stream_offset + unit.header_len + (block - unit.first_block) * BLOCK_SIZE;
                let mut decoder = zeekstd::DecodeOptions::new(zeekstd::BytesWrapper::new(&archive))
                    .offset(at)
                    .offset_limit(at + BLOCK_SIZE)
                    .into_decoder()
                    .unwrap();
                let mut got = vec![0u8; BLOCK_SIZE as usize];
                let mut filled = 0;
                while filled < got.len() {
                    let n = decoder.decompress(&mut got[filled..]).unwrap();
                    assert!(n > 0, "decoder stopped early at block {block}");
                    filled += n;
                }
                let want = &disks.0[0].bytes
                    [(block * BLOCK_SIZE) as usize..((block + 1) * BLOCK_SIZE) as usize];
                assert!(got == want, "block {block} differs through zeekstd");
                checked += 1;
            }
        }
        stream_offset += unit.decompressed_len;
    }
    assert_eq!(checked, 40);
}

#[test]
fn the_reference_seekable_implementation_random_accesses_padded_archives() {
    let disks = three_disks(&mut Rng(11));
    // Padded parts put skippable frames (decompressed size 0) between units.
    let plan = plan_for(&disks, 4, 1 << 20);
    let (archive, _) = pack(&disks, &plan);
    let index = ArchiveIndex::open(&archive).unwrap();
    assert!(
        index
            .frames()
            .iter()
            .any(|f| matches!(f.role, FrameRole::Padding { .. }))
    );

    let mut seekable = zstd_safe::seekable::Seekable::create();
    seekable
        .init_buff(&archive)
        .expect("the reference reads our seek table");
    assert_eq!(seekable.num_frames() as usize, index.frames().len());
    for (i, f) in index.frames().iter().enumerate() {
        assert_eq!(
            seekable.frame_compressed_offset(i as u32).unwrap(),
            f.offset
        );
        assert_eq!(
            seekable.frame_decompressed_size(i as u32).unwrap(),
            f.entry.decompressed as usize
        );
    }

    // Every block of every disk, in a scrambled order, through the reference reader.
    let mut stream_offsets = Vec::new();
    let mut at = 0u64;
    for unit in &index.manifest().units {
        stream_offsets.push(at + unit.header_len);
        at += unit.decompressed_len;
    }
    let mut blocks: Vec<(usize, u64, u64)> = index
        .manifest()
        .units
        .iter()
        .zip(&stream_offsets)
        .flat_map(|(u, &start)| {
            (0..u.block_count).map(move |b| (u.disk, u.first_block + b, start + b * BLOCK_SIZE))
        })
        .collect();
    let mut rng = Rng(12);
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (disk, block, offset) in blocks {
        let mut got: Vec<u8> = Vec::with_capacity(BLOCK_SIZE as usize);
        let n = seekable
            .decompress(&mut got, offset)
            .expect("reference decompress");
        assert_eq!(n, BLOCK_SIZE as usize, "disk {disk} block {block}");
        let want = &disks.0[disk].bytes
            [(block * BLOCK_SIZE) as usize..((block + 1) * BLOCK_SIZE) as usize];
        assert!(
            got == want,
            "disk {disk} block {block} differs through the reference reader"
        );
    }
}

fn open_err(archive: &Vec<u8>) -> Error {
    ArchiveIndex::open(archive).expect_err("a malformed archive must not open")
}

#[test]
fn truncated_or_foreign_objects_are_rejected_clearly() {
    let disks = three_disks(&mut Rng(5));
    let (archive, _) = pack(&disks, &plan_for(&disks, 4, 0));
    for keep in [0, 1, 8, 9, 100, archive.len() / 2, archive.len() - 1] {
        let cut = archive[..keep].to_vec();
        let err = open_err(&cut);
        assert!(
            matches!(
                err,
                Error::NotAnArchive(_) | Error::Truncated(_) | Error::Malformed(_)
            ),
            "{keep}: {err}"
        );
    }
    // Cutting bytes from the front leaves a valid-looking tail whose sizes don't add up.
    let err = open_err(&archive[100..].to_vec());
    assert!(err.to_string().contains("add up"), "{err}");
    let mut magic = archive.clone();
    *magic.last_mut().unwrap() ^= 0xff;
    assert!(matches!(open_err(&magic), Error::NotAnArchive(_)));
    let plain = zstd::stream::encode_all(&b"just a zstd file"[..], 3).unwrap();
    assert!(matches!(open_err(&plain), Error::NotAnArchive(_)));
}

/// Rewrites one seek-table entry of `archive`.
fn patch_entry(archive: &mut [u8], frame: usize, compressed: u32, decompressed: u32) {
    let frames = u32::from_le_bytes(
        archive[archive.len() - 9..archive.len() - 5]
            .try_into()
            .unwrap(),
    ) as usize;
    let table_start = archive.len() - (8 + frames * 8 + FOOTER_LEN as usize);
    let at = table_start + 8 + frame * 8;
    archive[at..at + 4].copy_from_slice(&compressed.to_le_bytes());
    archive[at + 4..at + 8].copy_from_slice(&decompressed.to_le_bytes());
}

#[test]
fn seek_tables_that_do_not_add_up_or_claim_absurd_sizes_are_rejected() {
    let disks = three_disks(&mut Rng(6));
    let (archive, _) = pack(&disks, &plan_for(&disks, 4, 0));
    let index = ArchiveIndex::open(&archive).unwrap();
    let f = index.frames()[1];

    let mut grown = archive.clone();
    patch_entry(&mut grown, 1, f.entry.compressed + 1, f.entry.decompressed);
    assert!(open_err(&grown).to_string().contains("add up"));

    // Moving bytes between two frames keeps the total but breaks the unit tiling or the frames.
    let mut shifted = archive.clone();
    let g = index.frames()[2];
    patch_entry(
        &mut shifted,
        1,
        f.entry.compressed + 1,
        f.entry.decompressed,
    );
    patch_entry(
        &mut shifted,
        2,
        g.entry.compressed - 1,
        g.entry.decompressed,
    );
    let rejected = ArchiveIndex::open(&shifted)
        .and_then(|i| read_units(&i, &shifted, 0..i.manifest().units.len(), 1, |_| Ok(())));
    assert!(rejected.is_err());

    let mut huge = archive.clone();
    patch_entry(&mut huge, 1, f.entry.compressed, u32::MAX);
    assert!(matches!(open_err(&huge), Error::Malformed(_)));

    let mut frames = archive.clone();
    let n = frames.len();
    frames[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(open_err(&frames), Error::Malformed(_)));
}

#[test]
fn a_flipped_bit_in_data_names_the_unit() {
    let disks = three_disks(&mut Rng(7));
    let (archive, _) = pack(&disks, &plan_for(&disks, 4, 0));
    let index = ArchiveIndex::open(&archive).unwrap();
    let (i, frame) = index
        .frames()
        .iter()
        .enumerate()
        .find(|(_, f)| matches!(f.role, FrameRole::Data { unit, .. } if unit >= 2))
        .unwrap();
    let unit = frame.role.unit().unwrap();
    let mut bad = archive.clone();
    bad[(frame.offset + u64::from(frame.entry.compressed) / 2) as usize] ^= 0x10;
    let err = read_units(&index, &bad, 0..index.manifest().units.len(), 2, |_| Ok(())).unwrap_err();
    match err {
        Error::CorruptUnit { unit: u, reason } => {
            assert_eq!(u, unit, "frame {i}: {reason}");
        }
        other => panic!("expected a corrupt unit, got {other}"),
    }
}

/// Replaces the manifest of `archive` with `edit(manifest)` serialised as JSON,
/// rebuilding the manifest frame and the seek table exactly as the writer does.
fn with_manifest(archive: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    amistore_core::archive::testing::with_manifest(archive, edit).unwrap()
}

fn verify(archive: &Vec<u8>) -> amistore_core::Result<()> {
    let index = ArchiveIndex::open(archive)?;
    read_units(&index, archive, 0..index.manifest().units.len(), 2, |_| {
        Ok(())
    })
}

#[test]
fn manifests_that_contradict_the_frames_are_rejected() {
    let disks = three_disks(&mut Rng(8));
    let (archive, _) = pack(&disks, &plan_for(&disks, 4, 0));
    assert!(
        verify(&with_manifest(&archive, |_| {})).is_ok(),
        "the rebuild helper itself is faithful"
    );

    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "a block marked absent",
            Box::new(|m| m["disks"][0]["present"][0][1] = 2.into()),
        ),
        (
            "a unit longer than its frames",
            Box::new(|m| {
                let len = m["units"][0]["compressedLen"].as_u64().unwrap();
                m["units"][0]["compressedLen"] = (len + 1).into();
            }),
        ),
        (
            "a unit covering fewer blocks",
            Box::new(|m| m["units"][0]["blockCount"] = 3.into()),
        ),
        (
            "a wrong volume size",
            Box::new(|m| m["disks"][1]["volumeSize"] = (9 * BLOCK_SIZE).into()),
        ),
        (
            "an absurd volume size",
            Box::new(|m| m["disks"][1]["volumeSize"] = (1u64 << 62).into()),
        ),
        (
            "a member renamed",
            Box::new(|m| m["disks"][0]["member"] = "other.raw".into()),
        ),
        (
            "a path in a member name",
            Box::new(|m| m["disks"][0]["member"] = "../x".into()),
        ),
        (
            "a wrong hash",
            Box::new(|m| m["units"][1]["hash"] = "00".repeat(32).into()),
        ),
        (
            "another block size",
            Box::new(|m| m["disks"][0]["blockSize"] = 4096.into()),
        ),
    ];
    for (what, edit) in cases {
        let bad = with_manifest(&archive, edit);
        assert!(verify(&bad).is_err(), "{what} was accepted");
    }

    let v2 = with_manifest(&archive, |m| m["version"] = 2.into());
    assert!(matches!(
        open_err(&v2),
        Error::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    ));
    let other = with_manifest(&archive, |m| m["format"] = "tarball".into());
    assert!(matches!(open_err(&other), Error::NotAnArchive(_)));
}

#[test]
fn every_single_bit_flip_is_detected_or_harmless() {
    let disks = MemDisks(vec![MemDisk::new(
        "/dev/xvda",
        4,
        &[(0..1, Fill::Pattern), (2..3, Fill::Zero)],
        &mut Rng(9),
    )]);
    let plan = ArchivePlan::with_min_unit_blocks(
        image("flip"),
        disks.0.iter().map(MemDisk::source).collect(),
        time::OffsetDateTime::UNIX_EPOCH,
        1,
    )
    .unwrap()
    .with_min_part_size(0);
    let (mut archive, _) = pack(&disks, &plan);
    let (good, _) = unpack(&archive).unwrap();
    assert!(
        archive.len() < 4096,
        "keep the exhaustive loop small: {} bytes",
        archive.len()
    );
    let mut undetected = 0;
    for at in 0..archive.len() {
        for bit in [0x01u8, 0x80] {
            archive[at] ^= bit;
            match unpack(&archive) {
                Err(_) => {}
                Ok((volumes, _)) => {
                    assert!(
                        volumes == good,
                        "flip at byte {at} bit {bit:#x} silently changed the data"
                    );
                    undetected += 1;
                }
            }
            archive[at] ^= bit;
        }
    }
    // Only bits zstd itself ignores (e.g. a window size that is still large enough) may pass.
    assert!(
        undetected < archive.len() / 10,
        "{undetected} harmless flips of {}",
        archive.len() * 2
    );
}

#[test]
fn the_manifest_is_found_with_at_most_two_reads() {
    struct Counting<'a>(&'a Vec<u8>, std::sync::atomic::AtomicUsize);
    impl ReadAt for Counting<'_> {
        fn size(&self) -> amistore_core::Result<u64> {
            self.0.size()
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> amistore_core::Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read_exact_at(buf, offset)
        }
    }
    let disks = three_disks(&mut Rng(10));
    let (archive, _) = pack(&disks, &plan_for(&disks, 1, 0));
    // A manifest padded past the tail read forces the second read (with a
    // member a later version might add: readers skip what they do not know).
    let big = with_manifest(&archive, |m| m["padding"] = "x".repeat(300_000).into());
    for a in [&archive, &big] {
        let src = Counting(a, Default::default());
        let m: Manifest = ArchiveIndex::open(&src).unwrap().manifest().clone();
        assert_eq!(m.disks.len(), 3);
        let reads = src.1.load(std::sync::atomic::Ordering::Relaxed);
        assert!(reads <= 2, "{reads} reads");
    }
}

#[test]
fn metadata_from_a_manifest_obeys_the_same_rules_as_the_api() {
    // What a restore registers and tags comes from the manifest: a hostile one
    // must not smuggle in what the API refuses.
    let disks = three_disks(&mut Rng(9));
    let (archive, _) = pack(&disks, &plan_for(&disks, 4, 0));
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let tag = |k: &str, v: &str| serde_json::json!({"key": k, "value": v});
    fn mapping(gib: u64, iops: u64) -> serde_json::Value {
        serde_json::json!([{"deviceName": "/dev/xvda", "ebs": {
            "disk": 0, "volumeSizeGib": gib, "volumeType": "io2", "iops": iops,
            "deleteOnTermination": true}}])
    }
    assert!(
        verify(&with_manifest(
            &archive,
            |m| m["image"]["blockDeviceMappings"] = mapping(8, 3000)
        ))
        .is_ok(),
        "a sound mapping is accepted"
    );
    let cases: Vec<(&str, Edit)> = vec![
        (
            "a tag value XML cannot carry",
            Box::new(move |m| m["image"]["tags"] = serde_json::json!([tag("Name", "x\u{FFFF}")])),
        ),
        (
            "amistore's own state tag",
            Box::new(move |m| {
                m["image"]["tags"] = serde_json::json!([tag("amistore:state", "failed")])
            }),
        ),
        (
            "a tag key twice",
            Box::new(move |m| {
                m["image"]["tags"] = serde_json::json!([tag("a", "1"), tag("a", "2")])
            }),
        ),
        (
            "a snapshot tag key twice",
            Box::new(move |m| {
                m["disks"][0]["tags"] = serde_json::json!([tag("a", "1"), tag("a", "2")])
            }),
        ),
        (
            "a control character in the description",
            Box::new(|m| m["image"]["description"] = "line\u{1b}[2J".into()),
        ),
        (
            "a volume past EBS's 64 TiB",
            Box::new(|m| m["image"]["blockDeviceMappings"] = mapping(1 << 33, 3000)),
        ),
        (
            "absurd IOPS",
            Box::new(|m| m["image"]["blockDeviceMappings"] = mapping(8, 4_000_000_000)),
        ),
        (
            "UEFI data that is not base64",
            Box::new(|m| m["image"]["uefiData"] = "<xml/>".into()),
        ),
    ];
    for (what, edit) in cases {
        let bad = with_manifest(&archive, edit);
        let err = open_err(&bad);
        assert!(
            matches!(err, Error::Malformed(_) | Error::InvalidInput(_)),
            "{what}: {err:?}"
        );
    }
}
