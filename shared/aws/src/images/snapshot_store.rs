//! [`SnapshotStore`] over the EBS direct APIs: ListSnapshotBlocks (paged),
//! GetSnapshotBlock (SHA-256 verified), StartSnapshot (ClientToken, Timeout),
//! PutSnapshotBlock (SHA-256 checksums), CompleteSnapshot (changed-block count).
//!
//! Block requests run concurrently, at most [`EbsLimits::concurrency`] at once
//! and at most [`EbsLimits::requests_per_second`] per process, paced evenly;
//! while a unit runs, the engine lowers that rate to the unit's share of the
//! account's budget ([`amistore_core::engine::budget`], through
//! [`SnapshotStore::set_request_rate`]), so that all units of all tasks
//! together stay inside EBS's 1,000 GetSnapshotBlock and 1,000
//! PutSnapshotBlock requests per second per account. The SDK clients retry
//! throttling and 5xx answers with full-jitter exponential backoff (see
//! [`crate::setup`]).
use std::collections::BTreeMap;

use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::ids::{AccountId, SnapshotId};
use amistore_core::image::{Encryption, GIB, Tag};
use amistore_core::ports::{SnapshotInfo, SnapshotStore};
use amistore_core::{Detail, Error, Result};
use aws_sdk_ebs::types::Tag as EbsTag;
use aws_sdk_ec2::types::Filter;

use super::ebs_requests::*;
use super::{Ec2Images, TOKEN_TAG, VOLUME_BYTES_TAG};
use crate::error::sdk;
use aws_sdk_ec2::error::ProvideErrorMetadata;

impl Ec2Images {
    /// StartSnapshot's `Encrypted` and `KmsKeyArn` for `encryption`: a key is
    /// used where it lives (its ARN names this region); a key of another
    /// region cannot encrypt here, so the account's default key does.
    /// Unencrypted leaves both out: an account that encrypts by default
    /// refuses `Encrypted=false`.
    pub(crate) fn encryption_here(
        &self,
        encryption: &Encryption,
    ) -> (Option<bool>, Option<String>) {
        match encryption {
            Encryption::Unencrypted => (None, None),
            Encryption::DefaultKey => (Some(true), None),
            Encryption::Key(arn) => {
                let region = arn.split(':').nth(3);
                let here = self.region.as_deref();
                let usable = arn.starts_with("arn:") && region.is_some() && region == here;
                (Some(true), usable.then(|| arn.clone()))
            }
        }
    }

    /// One page of ListSnapshotBlocks from `start` (or `page`): the blocks as
    /// (index, token) and the next page's token.
    async fn list_page(
        &self,
        snapshot: &SnapshotId,
        start: u64,
        page: Option<String>,
    ) -> Result<(Vec<(u64, String)>, Option<String>)> {
        let out = self
            .ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot.as_str())
            .max_results(10_000)
            .starting_block_index(start as i32)
            .set_next_token(page)
            .send()
            .await
            .map_err(|e| sdk(format_args!("listing the blocks of {snapshot}"), e))?;
        let blocks = out
            .blocks()
            .iter()
            .filter_map(|b| Some((b.block_index()? as u64, b.block_token()?.to_owned())))
            .collect();
        Ok((blocks, out.next_token().map(str::to_owned)))
    }

    /// Tokens for the blocks of `window`, listed once and kept: a unit's reads
    /// fall in one window, and ListSnapshotBlocks allows only 50 calls/s.
    fn tokens_for(
        &self,
        snapshot: &SnapshotId,
        window: std::ops::Range<u64>,
    ) -> Result<BTreeMap<u64, String>> {
        let cached = {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens.get(snapshot).cloned()
        };
        let listed = match cached {
            Some(w) if w.covered.start <= window.start && window.end <= w.covered.end => w,
            _ => {
                let listed = self.bridge.run(async {
                    let mut tokens = BTreeMap::new();
                    let mut page = None;
                    let mut covered_to;
                    loop {
                        let (blocks, next) = self.list_page(snapshot, window.start, page).await?;
                        covered_to = blocks.last().map_or(window.start, |(i, _)| i + 1);
                        tokens.extend(blocks);
                        match next {
                            Some(next) if covered_to < window.end => page = Some(next),
                            Some(_) => break,
                            None => {
                                covered_to = u64::MAX;
                                break;
                            }
                        }
                    }
                    Ok::<_, Error>(TokenWindow {
                        covered: window.start..covered_to,
                        tokens,
                    })
                })?;
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(snapshot.clone(), listed.clone());
                listed
            }
        };
        Ok(listed
            .tokens
            .range(window)
            .map(|(i, t)| (*i, t.clone()))
            .collect())
    }

    /// The snapshot's size in blocks (from the cache or EC2).
    fn volume_blocks(&self, snapshot: &SnapshotId) -> Result<u64> {
        let known = self
            .sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(snapshot)
            .copied();
        let bytes = match known {
            Some(b) => b,
            None => self.snapshot_facts(snapshot)?.volume_bytes,
        };
        Ok(bytes.div_ceil(BLOCK_SIZE))
    }

    /// Waits for one write started by `write_blocks`; a failure drops the
    /// snapshot's other writes in flight (the unit fails and is retried).
    fn landed(
        &self,
        snapshot: &SnapshotId,
        write: tokio::task::JoinHandle<Result<()>>,
    ) -> Result<()> {
        let outcome = self.bridge.run(write).unwrap_or_else(|e| {
            Err(Error::Transient(Detail::because(
                format!("a write to {snapshot} stopped"),
                e,
            )))
        });
        if outcome.is_err() {
            for other in self
                .behind
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(snapshot)
                .unwrap_or_default()
            {
                other.abort();
            }
        }
        outcome
    }

    /// A snapshot started with `client_token`, if there is one.
    fn snapshot_by_token(&self, client_token: &str) -> Result<Option<SnapshotId>> {
        let call = self
            .ec2
            .describe_snapshots()
            .owner_ids(self.account.as_str())
            .filters(
                Filter::builder()
                    .name(format!("tag:{TOKEN_TAG}"))
                    .values(client_token)
                    .build(),
            )
            .send();
        let out = self
            .bridge
            .run(call)
            .map_err(|e| sdk("looking up a snapshot by token", e))?;
        Ok(out
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id()?.parse().ok())
            .next())
    }
}

impl SnapshotStore for Ec2Images {
    fn describe_snapshot(
        &self,
        account: &AccountId,
        snapshot: &SnapshotId,
    ) -> Result<SnapshotInfo> {
        if *account != self.account {
            return Err(Error::NotFound(
                format!("snapshot {snapshot} does not exist").into(),
            ));
        }
        let facts = self.snapshot_facts(snapshot)?;
        Ok(SnapshotInfo {
            snapshot_id: snapshot.clone(),
            volume_size: facts.volume_bytes,
            state: facts.state,
            start_time: facts.start_time,
            tags: facts.tags,
        })
    }

    fn list_blocks(&self, account: &AccountId, snapshot: &SnapshotId) -> Result<BlockRanges> {
        if *account != self.account {
            return Err(Error::NotFound(
                format!("snapshot {snapshot} does not exist").into(),
            ));
        }
        // EC2 first: it knows whether the snapshot still exists and whose it is.
        let blocks = self
            .snapshot_facts(snapshot)?
            .volume_bytes
            .div_ceil(BLOCK_SIZE);
        let indexes = self.bridge.run(async {
            let mut indexes = Vec::new();
            let mut page = None;
            loop {
                let (listed, next) = self.list_page(snapshot, 0, page).await?;
                indexes.extend(listed.into_iter().map(|(i, _)| i));
                match next {
                    Some(next) => page = Some(next),
                    None => return Ok::<_, Error>(indexes),
                }
            }
        })?;
        let ranges = BlockRanges::from_unsorted(indexes.into_iter().map(|i| i..i + 1).collect());
        ranges.validate(blocks)?;
        Ok(ranges)
    }

    /// Blocks in the window are taken from the fetches started ahead, or
    /// fetched now; then fetches are started ahead of the reader, within the
    /// announced range, until `concurrency` are in flight beyond the window.
    /// So the pacer's slots never go unused while the reader compresses a
    /// frame: requests stay in flight across frame boundaries. Memory: at most
    /// `concurrency` blocks (512 KiB each) held ahead.
    fn read_blocks(&self, snapshot: &SnapshotId, first_block: u64, buf: &mut [u8]) -> Result<()> {
        let count = whole_blocks(buf.len())?;
        let window = first_block..first_block + count;
        let tokens = self.tokens_for(snapshot, window.clone())?;
        buf.fill(0);
        let spawn = |index: u64, token: String| {
            self.bridge.handle().spawn(fetch_block(
                self.ebs.clone(),
                self.pacer.clone(),
                snapshot.clone(),
                index,
                token,
            ))
        };
        let wanted: Vec<(u64, tokio::task::JoinHandle<Result<Vec<u8>>>)> = {
            let mut all = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            let ahead = all.entry(snapshot.clone()).or_default();
            // Fetches behind the window are for reads that will not come.
            let behind: Vec<u64> = ahead
                .pending
                .range(..window.start)
                .map(|(i, _)| *i)
                .collect();
            for index in behind {
                if let Some(fetch) = ahead.pending.remove(&index) {
                    fetch.abort();
                }
            }
            let wanted = tokens
                .iter()
                .map(|(index, token)| {
                    let fetch = ahead
                        .pending
                        .remove(index)
                        .unwrap_or_else(|| spawn(*index, token.clone()));
                    (*index, fetch)
                })
                .collect();
            if ahead.range.contains(&window.start) {
                let cached = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                let upcoming = cached
                    .get(snapshot)
                    .map(|w| w.tokens.range(window.end..ahead.range.end))
                    .into_iter()
                    .flatten();
                for (index, token) in upcoming {
                    if ahead.pending.len() >= self.limits.concurrency.max(1) {
                        break;
                    }
                    if !ahead.pending.contains_key(index) {
                        let fetch = spawn(*index, token.clone());
                        ahead.pending.insert(*index, fetch);
                    }
                }
            }
            wanted
        };
        let fetched = self.bridge.run(async {
            let mut blocks = Vec::with_capacity(wanted.len());
            for (index, fetch) in wanted {
                blocks.push(match fetch.await {
                    Ok(result) => result.map(|data| (index, data)),
                    Err(e) => Err(Error::Transient(Detail::because(
                        format!("reading block {index} of {snapshot}"),
                        e,
                    ))),
                });
            }
            blocks
        });
        for result in fetched {
            let (index, data) = match result {
                Ok(block) => block,
                Err(e) => {
                    // Tokens expire (7 days) and change on relisting: list
                    // again next time; what was fetched ahead goes too.
                    self.tokens
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(snapshot);
                    if let Some(ahead) = self
                        .ahead
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(snapshot)
                    {
                        ahead.abort_all();
                    }
                    return Err(e);
                }
            };
            let at = ((index - first_block) * BLOCK_SIZE) as usize;
            buf[at..at + BLOCK_SIZE as usize].copy_from_slice(&data);
        }
        Ok(())
    }

    fn will_read(&self, snapshot: &SnapshotId, blocks: std::ops::Range<u64>) {
        let mut all = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        let ahead = all.entry(snapshot.clone()).or_default();
        ahead.abort_all();
        ahead.range = blocks;
    }

    fn start_snapshot(
        &self,
        account: &AccountId,
        volume_size: u64,
        tags: &[Tag],
        encryption: &Encryption,
        client_token: &str,
    ) -> Result<SnapshotId> {
        if *account != self.account {
            return Err(Error::InvalidInput(
                format!("snapshots can only be started in account {}", self.account).into(),
            ));
        }
        if let Some(id) = self.snapshot_by_token(client_token)? {
            return Ok(id);
        }
        let mut ebs_tags: Vec<EbsTag> = tags
            .iter()
            .map(|t| EbsTag::builder().key(t.key()).value(t.value()).build())
            .collect();
        ebs_tags.push(EbsTag::builder().key(TOKEN_TAG).value(client_token).build());
        if !volume_size.is_multiple_of(GIB) {
            ebs_tags.push(
                EbsTag::builder()
                    .key(VOLUME_BYTES_TAG)
                    .value(volume_size.to_string())
                    .build(),
            );
        }
        let (encrypted, key) = self.encryption_here(encryption);
        let call = self
            .ebs
            .start_snapshot()
            .volume_size(volume_size.div_ceil(GIB).max(1) as i64)
            .client_token(client_token)
            .timeout(self.limits.snapshot_timeout_minutes)
            .description("amistore restore")
            .set_tags(Some(ebs_tags))
            .set_encrypted(encrypted)
            .set_kms_key_arn(key)
            .send();
        let out = self
            .bridge
            .run(call)
            .map_err(|e| sdk("starting a snapshot", e))?;
        let id: SnapshotId = out
            .snapshot_id()
            .ok_or_else(|| Error::Transient("StartSnapshot returned no snapshot id".into()))?
            .parse()?;
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), volume_size);
        Ok(id)
    }

    fn find_snapshot_by_token(
        &self,
        account: &AccountId,
        client_token: &str,
    ) -> Result<Option<SnapshotId>> {
        // DescribeSnapshots by the token tag: EC2's answers are eventually
        // consistent, so a snapshot started moments ago may not show yet. The
        // caller is crash cleanup, which runs minutes later.
        if *account != self.account {
            return Ok(None);
        }
        self.snapshot_by_token(client_token)
    }

    /// Starts the blocks' writes and returns once at most `concurrency`
    /// writes of the snapshot are in flight, so the decoder goes on while
    /// they land; [`SnapshotStore::finish_writes`] waits for the rest. Memory:
    /// at most `concurrency` blocks (512 KiB each) in flight per snapshot.
    fn write_blocks(&self, snapshot: &SnapshotId, first_block: u64, data: &[u8]) -> Result<()> {
        let count = whole_blocks(data.len())?;
        let blocks = self.volume_blocks(snapshot)?;
        if first_block + count > blocks {
            return Err(Error::InvalidInput(
                format!(
                    "blocks {first_block}..{} are past the end of {snapshot} ({blocks} blocks)",
                    first_block + count
                )
                .into(),
            ));
        }
        for (i, block) in data.chunks(BLOCK_SIZE as usize).enumerate() {
            let oldest = {
                let mut all = self.behind.lock().unwrap_or_else(|p| p.into_inner());
                let writes = all.entry(snapshot.clone()).or_default();
                let oldest = (writes.len() >= self.limits.concurrency.max(1))
                    .then(|| writes.pop_front())
                    .flatten();
                writes.push_back(self.bridge.handle().spawn(store_block(
                    self.ebs.clone(),
                    self.pacer.clone(),
                    snapshot.clone(),
                    first_block + i as u64,
                    block.to_vec(),
                )));
                oldest
            };
            if let Some(write) = oldest {
                self.landed(snapshot, write)?;
            }
        }
        Ok(())
    }

    fn set_request_rate(&self, per_second: u32) {
        self.pacer.set_rate(per_second);
    }

    fn finish_writes(&self, snapshot: &SnapshotId) -> Result<()> {
        let writes = self
            .behind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(snapshot)
            .unwrap_or_default();
        // Every write is waited for, the first failure reported.
        let mut first_failure = None;
        for write in writes {
            if let Err(e) = self.landed(snapshot, write) {
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    fn complete_snapshot(&self, snapshot: &SnapshotId, changed_blocks: u64) -> Result<()> {
        self.finish_writes(snapshot)?;
        let call = self
            .ebs
            .complete_snapshot()
            .snapshot_id(snapshot.as_str())
            .changed_blocks_count(changed_blocks as i32)
            .send();
        let out = self
            .bridge
            .run(call)
            .map_err(|e| sdk(format_args!("completing {snapshot}"), e))?;
        match out.status().map(|s| s.as_str()) {
            Some("error") => Err(Error::InvalidInput(
                format!("EBS refused to complete {snapshot} with {changed_blocks} changed blocks")
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<()> {
        let call = self
            .ec2
            .delete_snapshot()
            .snapshot_id(snapshot.as_str())
            .send();
        match self.bridge.run(call) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(()),
            Err(e) => Err(sdk(format_args!("deleting {snapshot}"), e)),
        }
    }
}
