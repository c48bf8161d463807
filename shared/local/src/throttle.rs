//! A bandwidth cap shared by every task of a process (`serve
//! --max-bandwidth`): snapshot blocks read by stores and written by restores
//! pass through one token bucket, so all task data together stays under the
//! rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amistore_core::Result;
use amistore_core::blocks::BlockRanges;
use amistore_core::ids::{AccountId, SnapshotId};
use amistore_core::image::{Encryption, Tag};
use amistore_core::ports::{SnapshotInfo, SnapshotStore};

/// A token bucket: `rate` bytes per second, with one second of burst.
pub struct Bandwidth {
    rate: f64,
    /// When the bucket is next empty: reservations push it forward.
    next_free: Mutex<Instant>,
}

impl Bandwidth {
    /// A cap of `mib_per_s` MiB/s (at least 1).
    pub fn new(mib_per_s: u64) -> Self {
        Self {
            rate: (mib_per_s.max(1) << 20) as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may pass.
    pub fn take(&self, bytes: usize) {
        let wait = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let burst = Duration::from_secs(1);
            let start = (*next).max(now.checked_sub(burst).unwrap_or(now));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            next.saturating_duration_since(now + burst)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// A snapshot store whose block data passes through a [`Bandwidth`].
pub struct Throttled(pub Arc<dyn SnapshotStore>, pub Arc<Bandwidth>);

impl SnapshotStore for Throttled {
    fn finish_writes(&self, snapshot: &SnapshotId) -> Result<()> {
        self.0.finish_writes(snapshot)
    }
    fn will_read(&self, snapshot: &SnapshotId, blocks: std::ops::Range<u64>) {
        self.0.will_read(snapshot, blocks);
    }
    fn set_request_rate(&self, per_second: u32) {
        self.0.set_request_rate(per_second);
    }
    fn describe_snapshot(
        &self,
        account: &AccountId,
        snapshot: &SnapshotId,
    ) -> Result<SnapshotInfo> {
        self.0.describe_snapshot(account, snapshot)
    }
    fn list_blocks(&self, account: &AccountId, snapshot: &SnapshotId) -> Result<BlockRanges> {
        self.0.list_blocks(account, snapshot)
    }
    fn read_blocks(&self, snapshot: &SnapshotId, first_block: u64, buf: &mut [u8]) -> Result<()> {
        self.1.take(buf.len());
        self.0.read_blocks(snapshot, first_block, buf)
    }
    fn start_snapshot(
        &self,
        account: &AccountId,
        volume_size: u64,
        tags: &[Tag],
        encryption: &Encryption,
        client_token: &str,
    ) -> Result<SnapshotId> {
        self.0
            .start_snapshot(account, volume_size, tags, encryption, client_token)
    }
    fn find_snapshot_by_token(
        &self,
        account: &AccountId,
        client_token: &str,
    ) -> Result<Option<SnapshotId>> {
        self.0.find_snapshot_by_token(account, client_token)
    }
    fn write_blocks(&self, snapshot: &SnapshotId, first_block: u64, data: &[u8]) -> Result<()> {
        self.1.take(data.len());
        self.0.write_blocks(snapshot, first_block, data)
    }
    fn complete_snapshot(&self, snapshot: &SnapshotId, changed_blocks: u64) -> Result<()> {
        self.0.complete_snapshot(snapshot, changed_blocks)
    }
    fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<()> {
        self.0.delete_snapshot(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_across_threads_after_the_burst() {
        let cap = Arc::new(Bandwidth::new(8));
        let start = Instant::now();
        // 8 MiB of burst, then 16 MiB at 8 MiB/s: about two seconds, shared by
        // four threads.
        std::thread::scope(|s| {
            for _ in 0..4 {
                let cap = cap.clone();
                s.spawn(move || {
                    for _ in 0..6 {
                        cap.take(1 << 20);
                    }
                });
            }
        });
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
    }
}
