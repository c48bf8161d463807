//! Helpers shared by the core crate's integration tests: small in-memory disks
//! with known contents and a deterministic random generator.

#![allow(dead_code, clippy::unwrap_used)]

use std::ops::Range;

use amistore_core::archive::{ArchivePlan, BlockSource, DiskSource, Manifest, write_archive};
use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::image::{Architecture, ImageMetadata};
use time::macros::datetime;

/// xorshift64*: deterministic, dependency-free test randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A disk held in memory: its full contents (absent blocks are zeros) and presence.
pub struct MemDisk {
    pub device: &'static str,
    pub bytes: Vec<u8>,
    pub present: BlockRanges,
}

/// What a block of a test disk holds.
#[derive(Clone, Copy)]
pub enum Fill {
    Random,
    Text,
    /// A short repeating text: compresses to almost nothing.
    Pattern,
    Zero,
}

impl MemDisk {
    /// A disk of `blocks` blocks whose present runs are filled as given.
    pub fn new(
        device: &'static str,
        blocks: u64,
        runs: &[(Range<u64>, Fill)],
        rng: &mut Rng,
    ) -> Self {
        let mut bytes = vec![0u8; (blocks * BLOCK_SIZE) as usize];
        for (run, fill) in runs {
            let span =
                &mut bytes[(run.start * BLOCK_SIZE) as usize..(run.end * BLOCK_SIZE) as usize];
            match fill {
                Fill::Random => rng.fill(span),
                Fill::Text => {
                    let text =
                        b"amistore keeps every block it was given, and no block it was not. ";
                    for (i, b) in span.iter_mut().enumerate() {
                        *b = text[(i + rng.below(3) as usize) % text.len()];
                    }
                }
                Fill::Pattern => {
                    for (i, b) in span.iter_mut().enumerate() {
                        *b = b"0123456789abcdef"[i % 16] ^ (i / 4096) as u8;
                    }
                }
                Fill::Zero => {}
            }
        }
        let present = BlockRanges::from_unsorted(runs.iter().map(|(r, _)| r.clone()).collect());
        Self {
            device,
            bytes,
            present,
        }
    }

    pub fn source(&self) -> DiskSource {
        DiskSource {
            device_name: self.device.parse().unwrap(),
            snapshot_id: None,
            volume_size: self.bytes.len() as u64,
            present: self.present.clone(),
            tags: vec!["role=test".parse().unwrap()],
        }
    }
}

pub struct MemDisks(pub Vec<MemDisk>);

impl BlockSource for MemDisks {
    fn read_blocks(
        &self,
        disk: usize,
        first_block: u64,
        buf: &mut [u8],
    ) -> amistore_core::Result<()> {
        let start = (first_block * BLOCK_SIZE) as usize;
        buf.copy_from_slice(&self.0[disk].bytes[start..start + buf.len()]);
        Ok(())
    }
}

pub fn image(name: &str) -> ImageMetadata {
    ImageMetadata {
        source_image_id: Some("ami-0123456789abcdef0".into()),
        source_region: Some("eu-west-1".into()),
        owner_id: Some("123456789012".into()),
        creation_date: Some("2026-01-02T03:04:05.000Z".into()),
        description: Some("test image — ünïcode".into()),
        tags: vec!["Name=test".parse().unwrap()],
        ..ImageMetadata::minimal(
            name.parse().unwrap(),
            Architecture::X86_64,
            "/dev/xvda".parse().unwrap(),
        )
    }
}

/// Three disks: mixed data with holes and present zeros, an empty one, a dense one.
pub fn three_disks(rng: &mut Rng) -> MemDisks {
    MemDisks(vec![
        MemDisk::new(
            "/dev/xvda",
            40,
            &[
                (0..3, Fill::Text),
                (3..5, Fill::Zero),
                (9..20, Fill::Random),
                (30..31, Fill::Zero),
                (33..36, Fill::Text),
            ],
            rng,
        ),
        MemDisk::new("/dev/xvdb", 8, &[], rng),
        MemDisk::new("/dev/xvdc", 6, &[(0..6, Fill::Random)], rng),
    ])
}

pub fn plan_for(disks: &MemDisks, min_unit_blocks: u64, min_part: u64) -> ArchivePlan {
    ArchivePlan::with_min_unit_blocks(
        image("round-trip"),
        disks.0.iter().map(MemDisk::source).collect(),
        datetime!(2026-11-28 04:00:00 UTC),
        min_unit_blocks,
    )
    .unwrap()
    .with_min_part_size(min_part)
}

pub fn pack(disks: &MemDisks, plan: &ArchivePlan) -> (Vec<u8>, Manifest) {
    write_archive(plan, disks, 2, Vec::new(), &mut |_| {}).unwrap()
}
