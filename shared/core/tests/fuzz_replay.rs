//! Runs the reader's fuzz target on every file of the committed corpus
//! (fuzz/corpus/archive_reader, including any crash reproducers added there) and
//! on a bounded, seeded mutation campaign over freshly written archives, so the
//! fuzz target's property holds in every ordinary test run.

// In a test a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use amistore_core::archive::decode::fuzz_open_and_verify;
use support::*;

/// Small archives the campaign mutates: one disk, several, holes, zeros.
fn seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng(42);
    let layouts: Vec<Vec<MemDisk>> = vec![
        vec![MemDisk::new(
            "/dev/xvda",
            2,
            &[(0..1, Fill::Pattern)],
            &mut rng,
        )],
        vec![
            MemDisk::new(
                "/dev/xvda",
                4,
                &[(0..1, Fill::Pattern), (2..3, Fill::Zero)],
                &mut rng,
            ),
            MemDisk::new("/dev/xvdb", 3, &[], &mut rng),
        ],
        vec![MemDisk::new(
            "/dev/sda1",
            6,
            &[(1..2, Fill::Zero), (3..5, Fill::Pattern)],
            &mut rng,
        )],
    ];
    layouts
        .into_iter()
        .map(|disks| {
            let disks = MemDisks(disks);
            pack(&disks, &plan_for(&disks, 1, 0)).0
        })
        .collect()
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = out.len().max(1) as u64;
        match rng.below(7) {
            0 => {
                let at = rng.below(len) as usize;
                if let Some(b) = out.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => out.truncate(rng.below(len) as usize),
            2 => {
                let at = rng.below(len) as usize;
                let n = rng.below(16) as usize;
                out.drain(at.min(out.len())..(at + n).min(out.len()));
            }
            3 => {
                let at = rng.below(len) as usize;
                let bytes: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                let at = at.min(out.len());
                out.splice(at..at, bytes);
            }
            // Aim at the tail, where the footer, seek table and manifest live.
            4 | 5 => {
                let back = rng.below(len.min(512)) as usize;
                let at = out.len().saturating_sub(back + 1);
                if let Some(b) = out.get_mut(at) {
                    *b = match rng.below(4) {
                        0 => 0,
                        1 => 0xff,
                        _ => rng.next() as u8,
                    };
                }
            }
            _ => {
                // Overwrite a little-endian u32 with an extreme value.
                let at = rng.below(len) as usize;
                let v: u32 = [0, 1, u32::MAX, 0x8000_0000, 0x0008_0000][rng.below(5) as usize];
                if at + 4 <= out.len() {
                    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    out
}

#[test]
fn committed_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/archive_reader");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus directory exists") {
        let path = entry.unwrap().path();
        if path.is_file() {
            let _ = fuzz_open_and_verify(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "the corpus at {} is empty", dir.display());
}

#[test]
fn seeded_mutation_campaign_finds_no_panics() {
    let seeds = seeds();
    for seed in &seeds {
        fuzz_open_and_verify(seed).expect("seeds are valid archives");
    }
    let mut rng = Rng(0x5eed);
    let mut rejected = 0;
    let rounds = 20_000;
    for i in 0..rounds {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        if fuzz_open_and_verify(&input).is_err() {
            rejected += 1;
        }
    }
    // Nearly every mutation must be caught; the rest are harmless (see the bit-flip test).
    assert!(
        rejected > rounds * 9 / 10,
        "only {rejected} of {rounds} mutations were rejected"
    );
}

/// Writes the seeds into the corpus directory (run once by hand with
/// `cargo test -p amistore-core --test fuzz_replay -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/archive_reader");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, seed) in seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}.bin")), seed).unwrap();
    }
}
