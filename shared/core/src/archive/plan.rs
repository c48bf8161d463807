//! Planning an archive: which disks it holds, what their members are called, and
//! how their blocks are cut into units.
//!
//! A unit is a block range of one disk that one worker compresses into its
//! own run of S3 multipart parts without knowing any other unit's size. Units are cut by count of
//! *present* blocks, not by block range, so runs of holes ride along with data
//! instead of becoming parts of their own (every part but the last must be padded
//! to 5 MiB). The target grows with the AMI so there are never more than 10,000
//! parts, the final part included.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::archive::manifest::{Disk, MAX_VOLUME_SIZE, check_member_name, format_time, mtime_of};
use crate::archive::tar::{MEMBER_HEADER_LEN, member_header};
use crate::blocks::{BLOCK_SIZE, BlockRanges};
use crate::image::{DeviceName, ImageMetadata, Tag};
use crate::{Detail, Error, Result};

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// Present blocks a unit holds at least, unless its disk runs out (256 MiB).
pub const MIN_UNIT_PRESENT_BLOCKS: u64 = 512;
/// Present bytes a unit may hold at most, so its part stays under S3's 5 GiB.
pub const MAX_UNIT_PRESENT_BYTES: u64 = 4 << 30;
/// Blocks per data frame (8 MiB): the grain of random access and of parallel work.
pub const DATA_FRAME_BLOCKS: u64 = 16;

/// A disk to archive: its size, which blocks are present, and where it maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSource {
    /// Device the disk is mapped to.
    pub device_name: DeviceName,
    /// Source snapshot id, if any.
    pub snapshot_id: Option<String>,
    /// Volume size in bytes.
    pub volume_size: u64,
    /// Present blocks.
    pub present: BlockRanges,
    /// Snapshot tags.
    pub tags: Vec<Tag>,
}

/// The block range one unit covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitPlan {
    /// Index of the disk.
    pub disk: usize,
    /// First block.
    pub first_block: u64,
    /// Number of blocks.
    pub block_count: u64,
    /// Bytes of tar header in front (only a disk's first unit has one).
    pub header_len: u64,
}

impl UnitPlan {
    /// Bytes the unit decompresses to.
    pub fn decompressed_len(&self) -> u64 {
        self.header_len + self.block_count * BLOCK_SIZE
    }
}

/// One frame a unit is made of, before compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameJob {
    /// The disk member's tar header (compressed as a data frame).
    Header(Vec<u8>),
    /// Present blocks `first_block..first_block + count`.
    Data {
        /// First block.
        first_block: u64,
        /// Number of blocks (at most [`DATA_FRAME_BLOCKS`]).
        count: u64,
    },
    /// Absent blocks, written as precomputed hole frames.
    Hole {
        /// Number of blocks.
        count: u64,
    },
}

/// Everything about an archive that is known before any data is read. It
/// serialises, so a workflow can plan once and write units in other processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivePlan {
    /// Time stamp of the archive (RFC 3339).
    pub stored_at: String,
    /// The AMI's metadata.
    pub image: ImageMetadata,
    /// The disks, as the manifest will list them.
    pub disks: Vec<Disk>,
    /// The units, in object order.
    pub units: Vec<UnitPlan>,
    /// Every unit is padded to at least this many bytes ([`MIN_PART_SIZE`] by
    /// default, for S3; 0 turns padding off).
    pub min_part_size: u64,
    mtime: u64,
}

impl ArchivePlan {
    /// Plans an archive with the standard unit sizes.
    pub fn new(
        image: ImageMetadata,
        disks: Vec<DiskSource>,
        stored_at: OffsetDateTime,
    ) -> Result<Self> {
        Self::with_min_unit_blocks(image, disks, stored_at, MIN_UNIT_PRESENT_BLOCKS)
    }

    /// Plans an archive whose units hold at least `min_unit_blocks` present blocks
    /// (tests use small units to get many parts from little data).
    pub fn with_min_unit_blocks(
        image: ImageMetadata,
        sources: Vec<DiskSource>,
        stored_at: OffsetDateTime,
        min_unit_blocks: u64,
    ) -> Result<Self> {
        if sources.is_empty() {
            return Err(Error::InvalidInput(
                "an archive needs at least one disk".into(),
            ));
        }
        let stored_at = format_time(stored_at);
        let mtime = mtime_of(&stored_at)?;
        let mut disks = Vec::with_capacity(sources.len());
        for (i, src) in sources.into_iter().enumerate() {
            if src.volume_size == 0
                || src.volume_size % BLOCK_SIZE != 0
                || src.volume_size > MAX_VOLUME_SIZE
            {
                return Err(Error::InvalidInput(format!(
                    "disk {} is {} bytes; a volume must be a positive multiple of 512 KiB (524288 bytes) up to 64 TiB",
                    src.device_name, src.volume_size
                ).into()));
            }
            if disks
                .iter()
                .any(|d: &Disk| d.device_name == src.device_name)
            {
                return Err(Error::InvalidInput(
                    format!("device {} is given twice", src.device_name).into(),
                ));
            }
            src.present
                .validate(src.volume_size / BLOCK_SIZE)
                .map_err(|e| {
                    Error::InvalidInput(Detail::because(format!("disk {}", src.device_name), e))
                })?;
            let member = format!("disk{i}-{}.raw", src.device_name.base());
            check_member_name(&member).map_err(|m| Error::InvalidInput(m.into()))?;
            disks.push(Disk {
                member,
                device_name: src.device_name,
                snapshot_id: src.snapshot_id,
                volume_size: src.volume_size,
                block_size: BLOCK_SIZE,
                present: src.present,
                tags: src.tags,
            });
        }
        for m in &image.block_device_mappings {
            if let Some(d) = m.ebs.as_ref().and_then(|e| e.disk)
                && d >= disks.len()
            {
                return Err(Error::InvalidInput(
                    format!(
                        "block device mapping {} refers to disk {d}, which does not exist",
                        m.device_name
                    )
                    .into(),
                ));
            }
        }
        let units = cut_units(&disks, min_unit_blocks.max(1))?;
        Ok(Self {
            stored_at,
            image,
            disks,
            units,
            min_part_size: MIN_PART_SIZE,
            mtime,
        })
    }

    /// Sets the padding target of units (see [`Self::min_part_size`]).
    pub fn with_min_part_size(mut self, bytes: u64) -> Self {
        self.min_part_size = bytes;
        self
    }

    /// The tar mtime of every member.
    pub fn mtime(&self) -> u64 {
        self.mtime
    }

    /// The frames unit `unit` is made of, in order.
    pub fn frame_jobs(&self, unit: usize) -> Result<Vec<FrameJob>> {
        if unit >= self.units.len() {
            return Err(Error::InvalidInput(
                format!("unit {unit} is not in the plan").into(),
            ));
        }
        Ok(self.unit_frame_jobs(unit))
    }

    /// [`Self::frame_jobs`] for a unit known to be in the plan.
    pub(crate) fn unit_frame_jobs(&self, unit: usize) -> Vec<FrameJob> {
        let u = &self.units[unit];
        let disk = &self.disks[u.disk];
        let mut jobs = Vec::new();
        if u.header_len > 0 {
            jobs.push(FrameJob::Header(member_header(
                &disk.member,
                disk.volume_size,
                self.mtime,
            )));
        }
        for (range, present) in disk
            .present
            .segments(u.first_block..u.first_block + u.block_count)
        {
            if !present {
                jobs.push(FrameJob::Hole {
                    count: range.end - range.start,
                });
                continue;
            }
            let mut first = range.start;
            while first < range.end {
                let count = (range.end - first).min(DATA_FRAME_BLOCKS);
                jobs.push(FrameJob::Data {
                    first_block: first,
                    count,
                });
                first += count;
            }
        }
        jobs
    }
}

fn cut_units(disks: &[Disk], min_unit_blocks: u64) -> Result<Vec<UnitPlan>> {
    let total_present: u64 = disks.iter().map(|d| d.present.present_count()).sum();
    // Each disk can end in one partly filled unit, and the final part needs a number.
    let budget = MAX_PARTS
        .checked_sub(1 + disks.len() as u64)
        .filter(|b| *b > 0)
        .ok_or_else(|| {
            Error::InvalidInput(
                format!("{} disks are too many for one archive", disks.len()).into(),
            )
        })?;
    let target = min_unit_blocks.max(total_present.div_ceil(budget));
    if target * BLOCK_SIZE > MAX_UNIT_PRESENT_BYTES {
        return Err(Error::InvalidInput(
            format!(
                "{} GiB of written data would need parts larger than S3 allows",
                (total_present * BLOCK_SIZE) >> 30
            )
            .into(),
        ));
    }
    let mut units = Vec::new();
    for (d, disk) in disks.iter().enumerate() {
        let first_unit = units.len();
        let mut start = 0u64;
        let mut filled = 0u64;
        for run in disk.present.runs() {
            let mut at = run.start;
            while at < run.end {
                let take = (run.end - at).min(target - filled);
                at += take;
                filled += take;
                if filled == target {
                    units.push(unit(d, start, at, first_unit == units.len()));
                    start = at;
                    filled = 0;
                }
            }
        }
        let end = disk.block_count();
        if start < end {
            let disk_has_units = units.len() > first_unit;
            match units.last_mut() {
                // Trailing holes join the disk's last unit instead of making a part.
                Some(last) if filled == 0 && disk_has_units => {
                    last.block_count = end - last.first_block
                }
                _ => units.push(unit(d, start, end, !disk_has_units)),
            }
        }
    }
    Ok(units)
}

fn unit(disk: usize, start: u64, end: u64, first: bool) -> UnitPlan {
    UnitPlan {
        disk,
        first_block: start,
        block_count: end - start,
        header_len: if first { MEMBER_HEADER_LEN } else { 0 },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::Architecture;

    pub(crate) fn image(name: &str) -> ImageMetadata {
        ImageMetadata::minimal(
            name.parse().unwrap(),
            Architecture::X86_64,
            "/dev/xvda".parse().unwrap(),
        )
    }

    fn disk(dev: &str, blocks: u64, present: Vec<std::ops::Range<u64>>) -> DiskSource {
        DiskSource {
            device_name: dev.parse().unwrap(),
            snapshot_id: None,
            volume_size: blocks * BLOCK_SIZE,
            present: BlockRanges::from_unsorted(present),
            tags: vec![],
        }
    }

    fn plan(disks: Vec<DiskSource>, min: u64) -> ArchivePlan {
        ArchivePlan::with_min_unit_blocks(image("test"), disks, OffsetDateTime::UNIX_EPOCH, min)
            .unwrap()
    }

    #[test]
    fn units_are_cut_by_present_blocks_and_cover_each_disk() {
        let p = plan(
            vec![
                disk("/dev/xvda", 100, vec![0..10, 50..55]),
                disk("/dev/xvdb", 40, vec![]),
            ],
            4,
        );
        let ranges: Vec<_> = p
            .units
            .iter()
            .map(|u| (u.disk, u.first_block, u.block_count, u.header_len))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0, 0, 4, 1536),
                (0, 4, 4, 0),
                (0, 8, 44, 0),  // 8,9 + 50,51 present
                (0, 52, 48, 0), // 52..55 present, trailing holes joined
                (1, 0, 40, 1536),
            ]
        );
    }

    #[test]
    fn unit_count_never_exceeds_the_part_limit() {
        // 30,000 present blocks with a 1-block minimum would be 30,000 units.
        let p = plan(vec![disk("/dev/xvda", 40_000, vec![0..30_000])], 1);
        assert!((p.units.len() as u64) < MAX_PARTS, "{}", p.units.len());
        // Scattered single blocks: every run ends mid-unit.
        let runs = (0..20_000).map(|i| i * 2..i * 2 + 1).collect();
        let p = plan(vec![disk("/dev/xvda", 40_000, runs)], 1);
        assert!((p.units.len() as u64) < MAX_PARTS, "{}", p.units.len());
    }

    #[test]
    fn frame_jobs_split_data_and_holes() {
        let p = plan(vec![disk("/dev/xvda", 64, vec![3..40])], 512);
        let jobs = p.frame_jobs(0).unwrap();
        assert!(matches!(jobs[0], FrameJob::Header(ref h) if h.len() == 1536));
        assert_eq!(
            jobs[1..].to_vec(),
            vec![
                FrameJob::Hole { count: 3 },
                FrameJob::Data {
                    first_block: 3,
                    count: 16
                },
                FrameJob::Data {
                    first_block: 19,
                    count: 16
                },
                FrameJob::Data {
                    first_block: 35,
                    count: 5
                },
                FrameJob::Hole { count: 24 },
            ]
        );
    }

    #[test]
    fn rejects_bad_disks() {
        let mut odd = disk("/dev/xvda", 1, vec![]);
        odd.volume_size += 1;
        let err =
            ArchivePlan::new(image("test"), vec![odd], OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert!(err.to_string().contains("multiple of 512 KiB"), "{err}");
        let dup = vec![disk("/dev/xvda", 1, vec![]), disk("/dev/xvda", 1, vec![])];
        assert!(ArchivePlan::new(image("test"), dup, OffsetDateTime::UNIX_EPOCH).is_err());
        let beyond = disk("/dev/xvda", 2, vec![1..3]);
        assert!(ArchivePlan::new(image("test"), vec![beyond], OffsetDateTime::UNIX_EPOCH).is_err());
        assert!(ArchivePlan::new(image("test"), vec![], OffsetDateTime::UNIX_EPOCH).is_err());
    }
}
