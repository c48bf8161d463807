//! Block addressing and the block-presence map.
//!
//! EBS snapshots are read and written in 512 KiB blocks, and a snapshot only has
//! the blocks that were ever written. [`BlockRanges`] records which blocks are
//! present as sorted, disjoint, non-adjacent runs: compact for real disks, and in
//! JSON a plain list of `[first, count]` pairs.

use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// The EBS block size, and the only block size format version 1 uses.
pub const BLOCK_SIZE: u64 = 512 * 1024;

/// Which blocks of a volume are present, as sorted, disjoint, non-adjacent runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockRanges {
    runs: Vec<Range<u64>>,
}

impl BlockRanges {
    /// Builds the map from runs in any order; overlapping or touching runs merge.
    pub fn from_unsorted(mut runs: Vec<Range<u64>>) -> Self {
        runs.retain(|r| r.start < r.end);
        runs.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(runs.len());
        for run in runs {
            match merged.last_mut() {
                Some(last) if run.start <= last.end => last.end = last.end.max(run.end),
                _ => merged.push(run),
            }
        }
        Self { runs: merged }
    }

    /// Accepts runs only if they are already in canonical form and end by `block_count`.
    pub fn from_canonical(runs: Vec<Range<u64>>, block_count: u64) -> Result<Self> {
        let mut previous_end: Option<u64> = None;
        for run in &runs {
            if run.start >= run.end {
                return Err(Error::malformed(format!(
                    "block run {}..{} is empty or reversed",
                    run.start, run.end
                )));
            }
            if let Some(end) = previous_end
                && run.start <= end
            {
                return Err(Error::malformed(format!(
                    "block run starting at {} overlaps, touches or precedes the previous run",
                    run.start
                )));
            }
            if run.end > block_count {
                return Err(Error::malformed(format!(
                    "block run {}..{} lies beyond the volume's {block_count} blocks",
                    run.start, run.end
                )));
            }
            previous_end = Some(run.end);
        }
        Ok(Self { runs })
    }

    /// The runs of present blocks, ascending.
    pub fn runs(&self) -> &[Range<u64>] {
        &self.runs
    }

    /// How many blocks are present.
    pub fn present_count(&self) -> u64 {
        self.runs.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether block `index` is present.
    pub fn contains(&self, index: u64) -> bool {
        let i = self.runs.partition_point(|r| r.end <= index);
        self.runs.get(i).is_some_and(|r| r.start <= index)
    }

    /// How many blocks of `window` are present.
    pub fn present_in(&self, window: Range<u64>) -> u64 {
        self.segments(window)
            .filter(|(_, present)| *present)
            .map(|(r, _)| r.end - r.start)
            .sum()
    }

    /// Splits `window` into maximal segments that are wholly present or wholly absent.
    pub fn segments(&self, window: Range<u64>) -> impl Iterator<Item = (Range<u64>, bool)> + '_ {
        let first = self.runs.partition_point(|r| r.end <= window.start);
        let mut runs = self.runs[first..].iter().peekable();
        let mut cursor = window.start;
        std::iter::from_fn(move || {
            if cursor >= window.end {
                return None;
            }
            while runs.peek().is_some_and(|r| r.end <= cursor) {
                runs.next();
            }
            let segment = match runs.peek() {
                Some(r) if r.start <= cursor => (cursor..r.end.min(window.end), true),
                Some(r) => (cursor..r.start.min(window.end), false),
                None => (cursor..window.end, false),
            };
            cursor = segment.0.end;
            Some(segment)
        })
    }
}

impl Serialize for BlockRanges {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.runs.iter().map(|r| [r.start, r.end - r.start]))
    }
}

impl<'de> Deserialize<'de> for BlockRanges {
    /// Deserialises the pairs without judging them; [`BlockRanges::from_canonical`]
    /// checks them once the volume size is known.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<[u64; 2]>::deserialize(deserializer)?;
        let mut runs = Vec::with_capacity(pairs.len());
        for [start, count] in pairs {
            let end = start.checked_add(count).ok_or_else(|| {
                serde::de::Error::custom(format!("block run {start}+{count} overflows"))
            })?;
            runs.push(start..end);
        }
        Ok(Self { runs })
    }
}

impl BlockRanges {
    /// Re-checks a deserialised map against the volume's block count.
    pub fn validate(&self, block_count: u64) -> Result<()> {
        Self::from_canonical(self.runs.clone(), block_count).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_sorts_runs() {
        let map = BlockRanges::from_unsorted(vec![5..7, 0..2, 2..3, 6..9, 4..4]);
        assert_eq!(map.runs(), &[0..3, 5..9]);
        assert_eq!(map.present_count(), 7);
        assert!(map.contains(0) && map.contains(2) && !map.contains(3) && map.contains(8));
        assert!(!map.contains(9));
    }

    #[test]
    fn segments_cover_the_window_exactly() {
        let map = BlockRanges::from_unsorted(vec![2..4, 6..10]);
        let segs: Vec<_> = map.segments(1..8).collect();
        assert_eq!(
            segs,
            vec![(1..2, false), (2..4, true), (4..6, false), (6..8, true)]
        );
        assert_eq!(
            map.segments(10..12).collect::<Vec<_>>(),
            vec![(10..12, false)]
        );
        assert_eq!(map.present_in(0..100), 6);
        assert_eq!(map.segments(3..3).count(), 0);
    }

    #[test]
    fn canonical_form_is_enforced() {
        assert!(BlockRanges::from_canonical(vec![0..2, 3..4], 4).is_ok());
        for bad in [vec![0..2, 2..4], vec![3..4, 0..1], vec![1..1], vec![0..5]] {
            assert!(
                BlockRanges::from_canonical(bad.clone(), 4).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_round_trip_and_overflow() {
        let map = BlockRanges::from_unsorted(vec![0..3, 10..11]);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, "[[0,3],[10,1]]");
        assert_eq!(serde_json::from_str::<BlockRanges>(&json).unwrap(), map);
        assert!(serde_json::from_str::<BlockRanges>("[[18446744073709551615,2]]").is_err());
    }
}
