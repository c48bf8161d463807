//! A store unit's output cut into parts while it is written
//! (`amistore_core::engine::parts`), against the local bucket store, which
//! refuses a part under its minimum but the last as S3 does.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amistore_core::Error;
use amistore_core::engine::parts::{Cut, PartTarget, encode_in_parts};
use amistore_core::ports::ObjectStore;
use amistore_local::object_store::FolderObjectStore;

mod support;
use support::{Faults, Faulty};

const MIN: u64 = 1024;
const PIECE: u64 = 4096;

/// Writes `len` bytes in 777-byte writes as unit 2 of an upload whose units
/// own `parts` part numbers each; completes the upload and checks the object
/// is what was written (the bucket store refuses a part under `MIN` but
/// the last). Returns the sizes of the unit's parts.
fn cut(len: usize, parts: u32) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let local = FolderObjectStore::open(&dir.path().join("data"))
        .unwrap()
        .with_min_part_size(MIN);
    let bucket = "parts".parse().unwrap();
    local.create_bucket(&bucket).unwrap();
    let faults = Faults::default();
    let store = Faulty(Arc::new(local) as Arc<dyn ObjectStore>, faults.clone());
    let key = "unit.bin".parse().unwrap();
    let upload = store
        .create_multipart(&bucket, &key, &Default::default(), &[])
        .unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let target = PartTarget {
        objects: &store,
        bucket: &bucket,
        key: &key,
        upload: &upload,
        first_part: 2 * parts + 1,
        parts,
    };
    let cut = Cut {
        piece: PIECE,
        min: MIN,
    };
    let ((), uploaded) = encode_in_parts(&target, cut, &dir.path().join("spool"), "u", |out| {
        for chunk in data.chunks(777) {
            out.write_all(chunk).unwrap();
        }
        Ok(())
    })
    .unwrap();
    let numbers: Vec<u32> = uploaded.iter().map(|p| p.part_number).collect();
    let expected: Vec<u32> = (2 * parts + 1..).take(uploaded.len()).collect();
    assert_eq!(numbers, expected, "the unit's own run of numbers, in order");
    store
        .complete_multipart(&bucket, &key, &upload, &uploaded)
        .unwrap();
    let info = store.head_object(&bucket, &key).unwrap().unwrap();
    let object = store.get_range(&bucket, &key, 0..info.size, None).unwrap();
    assert!(object == data, "the object is the unit's bytes, in order");
    let spool: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .collect();
    assert!(spool.is_empty(), "every piece's spool file is removed");
    let sizes = faults.part_sizes();
    assert_eq!(sizes.keys().copied().collect::<Vec<_>>(), numbers);
    sizes.values().copied().collect()
}

#[test]
fn a_unit_is_cut_into_full_pieces_and_a_tail() {
    assert_eq!(cut(10_000, 8), [4096, 4096, 1808]);
}

#[test]
fn a_tail_under_the_minimum_joins_the_piece_before_it() {
    // 8,500 = 4,096 + 4,096 + 308: a 308-byte part would be refused.
    assert_eq!(cut(8_500, 8), [4096, 4404]);
}

#[test]
fn a_unit_never_takes_more_numbers_than_it_owns() {
    assert_eq!(cut(100_000, 3), [4096, 4096, 100_000 - 8192]);
    assert_eq!(cut(100_000, 1), [100_000]);
}

#[test]
fn a_short_unit_is_one_part() {
    assert_eq!(cut(500, 8), [500]);
    assert_eq!(cut(4096, 8), [4096]);
}

#[test]
fn a_failed_upload_fails_the_unit_with_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = FolderObjectStore::open(&dir.path().join("data")).unwrap();
    let bucket = "parts".parse().unwrap();
    store.create_bucket(&bucket).unwrap();
    let key = "unit.bin".parse().unwrap();
    let target = PartTarget {
        objects: &store,
        bucket: &bucket,
        key: &key,
        upload: "no-such-upload",
        first_part: 1,
        parts: 8,
    };
    let cut = Cut {
        piece: PIECE,
        min: MIN,
    };
    let written = encode_in_parts(&target, cut, &dir.path().join("spool"), "u", |out| {
        // The encoder stops at the first write the failed upload refuses.
        for chunk in vec![7u8; 1 << 20].chunks(777) {
            out.write_all(chunk)
                .map_err(|e| Error::io("writing the unit", e))?;
        }
        Ok(())
    });
    assert!(
        matches!(written, Err(Error::NotFound(_))),
        "the upload's own error, not the writer's: {written:?}"
    );
}
