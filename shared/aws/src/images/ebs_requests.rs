//! How the snapshot store moves blocks through the EBS direct APIs: requests
//! paced evenly at a rate that can change while they wait ([`Pacer`]), block
//! reads started ahead of the reader ([`ReadAhead`]), block writes kept in
//! flight behind the writer ([`WritesBehind`]), block tokens from
//! ListSnapshotBlocks ([`TokenWindow`]), and one block's GetSnapshotBlock or
//! PutSnapshotBlock with its SHA-256 checksum.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::ids::SnapshotId;
use amistore_core::{Detail, Error, Result};
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::sdk;

/// How hard the snapshot store may push the EBS direct APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbsLimits {
    /// Block requests in flight at once.
    pub concurrency: usize,
    /// Block requests per second (EBS allows 1,000 per snapshot and per account).
    pub requests_per_second: u32,
    /// StartSnapshot's Timeout, minutes (10..=4320): how long a snapshot may wait
    /// between writes before EBS cancels it. Restores queue and plan before
    /// they write, so the default is the maximum.
    pub snapshot_timeout_minutes: i32,
}

impl Default for EbsLimits {
    fn default() -> Self {
        Self {
            concurrency: 64,
            requests_per_second: 1000,
            snapshot_timeout_minutes: 4320,
        }
    }
}

/// Spaces requests evenly (one per interval, no bursts) at a rate that may
/// change while requests wait: a unit's share of the account's budget.
#[derive(Debug)]
pub struct Pacer {
    interval_nanos: AtomicU64,
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer allowing `per_second` requests a second.
    pub fn new(per_second: u32) -> Self {
        Self {
            interval_nanos: AtomicU64::new(Self::interval(per_second)),
            next: tokio::sync::Mutex::new(None),
        }
    }

    fn interval(per_second: u32) -> u64 {
        1_000_000_000 / u64::from(per_second.max(1))
    }

    /// Allows `per_second` requests a second from the next request on.
    pub fn set_rate(&self, per_second: u32) {
        self.interval_nanos
            .store(Self::interval(per_second), Ordering::Relaxed);
    }

    /// Waits for this request's turn. Waiters queue on the lock (tokio's is
    /// first come, first served) and each sleeps its slot out holding it, so
    /// a slot is spaced from the one before at the rate in force when it
    /// comes up: waiters queued while the rate was low are not held to it
    /// after it rises.
    pub async fn wait(&self) {
        let mut next = self.next.lock().await;
        let at = next.map_or_else(Instant::now, |n| n.max(Instant::now()));
        tokio::time::sleep_until(at).await;
        let interval = Duration::from_nanos(self.interval_nanos.load(Ordering::Relaxed));
        *next = Some(at + interval);
    }
}

/// Reads started ahead of the reader, for one snapshot: the blocks the
/// reader announced ([`SnapshotStore::will_read`](amistore_core::ports::SnapshotStore::will_read)) and the fetches in flight
/// or done, by block index.
#[derive(Debug, Default)]
pub struct ReadAhead {
    pub(super) range: std::ops::Range<u64>,
    pub(super) pending: BTreeMap<u64, tokio::task::JoinHandle<Result<Vec<u8>>>>,
}

impl ReadAhead {
    pub(super) fn abort_all(&mut self) {
        for (_, fetch) in std::mem::take(&mut self.pending) {
            fetch.abort();
        }
    }
}

/// GetSnapshotBlock of one block, paced, its checksum checked.
pub(super) async fn fetch_block(
    ebs: aws_sdk_ebs::Client,
    pacer: Arc<Pacer>,
    snapshot: SnapshotId,
    index: u64,
    token: String,
) -> Result<Vec<u8>> {
    pacer.wait().await;
    let out = ebs
        .get_snapshot_block()
        .snapshot_id(snapshot.as_str())
        .block_index(index as i32)
        .block_token(token)
        .send()
        .await
        .map_err(|e| sdk(format_args!("reading block {index} of {snapshot}"), e))?;
    let expected = out.checksum().map(str::to_owned);
    let data = out
        .block_data
        .collect()
        .await
        .map_err(|e| {
            Error::Transient(Detail::because(
                format!("reading block {index} of {snapshot}"),
                e,
            ))
        })?
        .to_vec();
    if data.len() as u64 != BLOCK_SIZE {
        return Err(Error::Transient(
            format!(
                "block {index} of {snapshot} came back with {} bytes, not 524288",
                data.len()
            )
            .into(),
        ));
    }
    match expected {
        Some(sum) if sum == checksum(&data) => Ok(data),
        Some(_) => Err(Error::Transient(format!(
            "block {index} of {snapshot} does not match its SHA-256 checksum (damaged in transit)"
        ).into())),
        None => Err(Error::Transient(format!(
            "block {index} of {snapshot} came without a checksum"
        ).into())),
    }
}

/// PutSnapshotBlock of one block, paced, with its checksum.
pub(super) async fn store_block(
    ebs: aws_sdk_ebs::Client,
    pacer: Arc<Pacer>,
    snapshot: SnapshotId,
    index: u64,
    data: Vec<u8>,
) -> Result<()> {
    pacer.wait().await;
    let sum = checksum(&data);
    ebs.put_snapshot_block()
        .snapshot_id(snapshot.as_str())
        .block_index(index as i32)
        .data_length(BLOCK_SIZE as i32)
        .checksum(sum)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .block_data(ByteStream::from(data))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| sdk(format_args!("writing block {index} of {snapshot}"), e))
}

/// Writes in flight for one snapshot, oldest first.
pub type WritesBehind = std::collections::VecDeque<tokio::task::JoinHandle<Result<()>>>;

/// Block tokens of one snapshot for blocks `covered` (absent blocks in the
/// window have no token: they hold no data).
#[derive(Debug, Default, Clone)]
pub struct TokenWindow {
    pub(super) covered: std::ops::Range<u64>,
    pub(super) tokens: BTreeMap<u64, String>,
}

pub(super) fn checksum(data: &[u8]) -> String {
    BASE64.encode(Sha256::digest(data))
}

pub(super) fn whole_blocks(len: usize) -> Result<u64> {
    if !(len as u64).is_multiple_of(BLOCK_SIZE) {
        return Err(Error::InvalidInput(
            format!("{len} bytes is not a whole number of 512 KiB blocks").into(),
        ));
    }
    Ok(len as u64 / BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_base64_sha256() {
        // SHA-256 of 512 KiB of zeros, as EBS sends it.
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        assert_eq!(
            checksum(&zeros),
            "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE="
        );
        assert!(whole_blocks(BLOCK_SIZE as usize * 3).is_ok_and(|n| n == 3));
        assert!(whole_blocks(100).is_err());
    }

    /// Waits for `n` requests queued at once on `pacer`, the rate raised to
    /// `raised` once the first has gone; returns when the last went.
    async fn last_of(pacer: Arc<Pacer>, n: usize, raised: u32) -> Duration {
        let start = Instant::now();
        let waiting: Vec<_> = (0..n)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        pacer.set_rate(raised);
        for w in waiting {
            w.await.unwrap();
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_at_the_rate_in_force_when_their_turn_comes() {
        // Ten requests at 10 a second: the last goes after 0.9 s.
        let steady = last_of(Arc::new(Pacer::new(10)), 10, 10).await;
        assert_eq!(steady, Duration::from_millis(900));
        // Queued at 1 a second, then raised to 1,000: only the slot already
        // taken (one second) is kept, then a millisecond each.
        let raised = last_of(Arc::new(Pacer::new(1)), 10, 1000).await;
        assert_eq!(raised, Duration::from_millis(1000 + 8));
    }
}
