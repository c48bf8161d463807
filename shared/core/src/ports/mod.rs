//! The engine's ports: small traits, in amistore's own types, over everything the
//! store and restore workflows touch. Local adapters (a data directory) and AWS
//! adapters (EC2, EBS direct APIs, S3, DynamoDB, Step Functions) implement them;
//! no SDK type ever crosses one.
//!
//! The ports are synchronous. The engine's heavy work (compression, hashing) runs
//! on threads, and an adapter over an async SDK bridges with its runtime's handle.
//! Every method reports failures as [`Error`]: [`Error::NotFound`] for what the
//! caller cannot see, [`Error::Transient`] for what may pass on retry.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::blocks::BlockRanges;
use crate::ids::{AccountId, ImageId, ResourceState, SnapshotId, TaskId};
use crate::image::{DeviceName, Encryption, ImageMetadata, ImageName, Tag};
use crate::storage::{BucketName, ObjectKey};
use crate::task::{Claim, ClaimRequest, Ending, Task, TaskKind};
use crate::{Error, Result};

/// A snapshot as the image catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The snapshot's id.
    pub snapshot_id: SnapshotId,
    /// Device the image maps it to.
    pub device_name: DeviceName,
    /// Volume size in bytes (a whole number of 512 KiB blocks).
    pub volume_size: u64,
    /// Lifecycle state.
    pub state: ResourceState,
    /// Snapshot tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A snapshot as the EBS direct APIs see it, whether or not an image uses it
/// yet (one started with [`SnapshotStore::start_snapshot`] and not yet
/// registered is `pending` until completed, then `available`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's id.
    pub snapshot_id: SnapshotId,
    /// Volume size in bytes (a whole number of 512 KiB blocks).
    pub volume_size: u64,
    /// Lifecycle state.
    pub state: ResourceState,
    /// When the snapshot was started (ISO 8601, UTC), if the adapter knows.
    pub start_time: Option<String>,
    /// Snapshot tags.
    pub tags: Vec<Tag>,
}

/// An image as the image catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The image's id.
    pub image_id: ImageId,
    /// Owning account.
    pub owner_id: AccountId,
    /// Lifecycle state.
    pub state: ResourceState,
    /// Why the image failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Registration time (ISO 8601, UTC).
    pub creation_date: String,
    /// Metadata; `blockDeviceMappings[].ebs.disk` indexes `snapshots`.
    pub metadata: ImageMetadata,
    /// The snapshots, in disk order.
    pub snapshots: Vec<Snapshot>,
    /// The token the image was registered with, if any (makes registration
    /// idempotent, and lets recovery find an image a crashed task registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl Image {
    /// Sum of the volume sizes in whole GiB: what a task on this image counts
    /// against the quota.
    pub fn size_gib(&self) -> u64 {
        self.snapshots
            .iter()
            .map(|s| s.volume_size.div_ceil(crate::image::GIB))
            .sum()
    }
}

/// The image catalog: EC2's images and their snapshots' descriptions.
pub trait ImageCatalog: Send + Sync {
    /// The image `id` with its snapshots and tags, if `account` can see it.
    fn describe_image(&self, account: &AccountId, id: &ImageId) -> Result<Image>;

    /// Every image `account` owns, oldest first.
    fn list_images(&self, account: &AccountId) -> Result<Vec<Image>>;

    /// Whether `account` already has an image called `name`.
    fn image_name_taken(&self, account: &AccountId, name: &ImageName) -> Result<bool>;

    /// Registers a `pending` image over `snapshots` (mapping disk `i` is
    /// `snapshots[i]`). Fails with [`Error::AlreadyExists`] if the name is taken.
    /// Registering again with the same `client_token` returns the first image.
    fn register_image(
        &self,
        account: &AccountId,
        metadata: &ImageMetadata,
        snapshots: &[SnapshotId],
        client_token: &str,
    ) -> Result<ImageId>;

    /// The image registered with `client_token`, if there is one.
    fn find_image_by_token(&self, account: &AccountId, client_token: &str)
    -> Result<Option<Image>>;

    /// Removes an image and its snapshots (DeregisterImage). An image still
    /// being restored (`pending`) cannot be removed ([`Error::IncorrectState`]).
    fn deregister_image(&self, account: &AccountId, id: &ImageId) -> Result<()>;

    /// Sets the state of an image and all its snapshots.
    fn set_image_state(
        &self,
        account: &AccountId,
        id: &ImageId,
        state: ResourceState,
        reason: Option<&str>,
    ) -> Result<()>;
}

/// Snapshot blocks: EBS direct APIs' view of snapshot contents, in 512 KiB blocks.
pub trait SnapshotStore: Send + Sync {
    /// Blocks of a completed snapshot that hold data (zero blocks that were
    /// written count; blocks never written do not).
    fn list_blocks(&self, account: &AccountId, snapshot: &SnapshotId) -> Result<BlockRanges>;

    /// The snapshot `snapshot`, if `account` owns it ([`Error::NotFound`]
    /// otherwise), in an image or not.
    fn describe_snapshot(&self, account: &AccountId, snapshot: &SnapshotId)
    -> Result<SnapshotInfo>;

    /// Announces that the next reads of `snapshot` are of `blocks`, in
    /// order (a store unit's range): an adapter may fetch ahead within it.
    /// Reads outside it are still answered.
    fn will_read(&self, snapshot: &SnapshotId, blocks: Range<u64>) {
        let _ = (snapshot, blocks);
    }

    /// Fills `buf` (a whole number of blocks) with blocks from `first_block`.
    /// Blocks that hold no data read as zeros.
    fn read_blocks(&self, snapshot: &SnapshotId, first_block: u64, buf: &mut [u8]) -> Result<()>;

    /// Starts a new, empty, `pending` snapshot of `volume_size` bytes,
    /// encrypted as `encryption` says. Starting again with the same
    /// `client_token` returns the same snapshot.
    fn start_snapshot(
        &self,
        account: &AccountId,
        volume_size: u64,
        tags: &[Tag],
        encryption: &Encryption,
        client_token: &str,
    ) -> Result<SnapshotId>;

    /// The snapshot `account` started with `client_token`, while it is not
    /// part of an image (after registration, adapters need not find it). A
    /// restore that died between starting its snapshots and registering its
    /// image leaves them behind; this is how they are found again.
    fn find_snapshot_by_token(
        &self,
        account: &AccountId,
        client_token: &str,
    ) -> Result<Option<SnapshotId>>;

    /// Writes `data` (a whole number of blocks) from `first_block`. Writing the
    /// same blocks again is harmless. An adapter may return before the
    /// blocks land; [`Self::finish_writes`] waits for them.
    fn write_blocks(&self, snapshot: &SnapshotId, first_block: u64, data: &[u8]) -> Result<()>;

    /// Waits until every block written to `snapshot` has landed, and reports
    /// the first write that failed. Completing a snapshot implies it.
    fn finish_writes(&self, snapshot: &SnapshotId) -> Result<()> {
        let _ = snapshot;
        Ok(())
    }

    /// Sets how many block requests a second this store may make from now
    /// on (a unit's share of the account's budget, which changes as other
    /// units start and end). Adapters with no request limit ignore it.
    fn set_request_rate(&self, per_second: u32) {
        let _ = per_second;
    }

    /// Seals a snapshot once `changed_blocks` blocks have been written.
    fn complete_snapshot(&self, snapshot: &SnapshotId, changed_blocks: u64) -> Result<()>;

    /// Deletes a snapshot no image uses (one a failed restore started);
    /// deleting an absent one is fine.
    fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<()>;
}

/// What HeadObject tells about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// User metadata (keys lowercase, values printable ASCII).
    pub metadata: BTreeMap<String, String>,
    /// Object tags.
    pub tags: Vec<Tag>,
    /// When the object was completed (ISO 8601).
    pub last_modified: String,
    /// The object's version tag: it changes whenever the object is replaced,
    /// so a reader that pins it never mixes two objects.
    #[serde(default)]
    pub etag: String,
}

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSummary {
    /// The key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// When the object was completed (ISO 8601).
    pub last_modified: String,
    /// The object's version tag (as [`ObjectInfo::etag`]).
    pub etag: String,
}

/// A bucket as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketSummary {
    /// The bucket's name.
    pub name: BucketName,
    /// When it was created (ISO 8601).
    pub creation_date: String,
}

/// Keys in one listing page at most (S3's ListObjectsV2 `MaxKeys` bound).
pub const MAX_LIST_KEYS: usize = 1000;

/// Bucket administration: making, listing and browsing buckets, as
/// `amistore bucket` and `amistore serve`'s S3 front need it. The workflows
/// never call it; on AWS, S3 itself is the administration, so only the local
/// bucket store implements it.
pub trait BucketAdmin: Send + Sync {
    /// Creates `bucket` for `account`. Creating one `account` already has is
    /// fine; one another account has is [`Error::AlreadyExists`].
    fn create_bucket(&self, account: &AccountId, bucket: &BucketName) -> Result<()>;

    /// The buckets `account` owns, by name.
    fn list_buckets(&self, account: &AccountId) -> Result<Vec<BucketSummary>>;

    /// The account `bucket` belongs to, or `None` if there is no such bucket.
    fn owner_of(&self, bucket: &BucketName) -> Result<Option<AccountId>>;

    /// At most `max` (≤ [`MAX_LIST_KEYS`]) objects of `bucket` whose keys
    /// start with `prefix` and sort after `start_after`, in key order (UTF-8
    /// bytes, as S3 orders them). Uploads in progress are not objects.
    fn list_objects(
        &self,
        bucket: &BucketName,
        prefix: &str,
        start_after: &str,
        max: usize,
    ) -> Result<Vec<ObjectSummary>>;
}

/// A part the caller uploaded, as CompleteMultipartUpload names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedPart {
    /// Part number, 1..=10,000.
    pub part_number: u32,
    /// The ETag UploadPart returned.
    pub etag: String,
}

/// The object store: S3's multipart upload, whole-object put and ranged reads.
pub trait ObjectStore: Send + Sync {
    /// Whether `bucket` exists and belongs to `account` (on S3: HeadBucket with
    /// ExpectedBucketOwner), so one account never writes to or restores from
    /// another's bucket.
    fn bucket_exists(&self, account: &AccountId, bucket: &BucketName) -> Result<bool>;

    /// Starts a multipart upload of `key` with user metadata and object tags;
    /// returns the upload id.
    fn create_multipart(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        metadata: &BTreeMap<String, String>,
        tags: &[Tag],
    ) -> Result<String>;

    /// Uploads the file at `body` as part `part_number`; returns its ETag once
    /// the part is durable. The file stays the caller's. Uploading a number
    /// again replaces the part.
    fn upload_part(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        body: &Path,
    ) -> Result<String>;

    /// Joins the parts into the object, which appears only now, whole.
    fn complete_multipart(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<()>;

    /// Abandons an upload and deletes its parts. An unknown upload is
    /// [`Error::NotFound`].
    fn abort_multipart(&self, bucket: &BucketName, key: &ObjectKey, upload_id: &str) -> Result<()>;

    /// Uploads in progress in `bucket`, as (upload id, key).
    fn list_multipart_uploads(&self, bucket: &BucketName) -> Result<Vec<(String, ObjectKey)>>;

    /// Writes a small whole object.
    fn put_object(&self, bucket: &BucketName, key: &ObjectKey, body: &[u8]) -> Result<()>;

    /// Deletes an object; deleting an absent one is fine.
    fn delete_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<()>;

    /// The object's size, metadata and tags, or `None` if it does not exist.
    fn head_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<Option<ObjectInfo>>;

    /// Bytes `range` of the object; with `if_match`, only if the object's
    /// ETag still is that ([`Error::IncorrectState`] if it was replaced).
    fn get_range(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Vec<u8>>;
}

/// An object seen through ranged reads: lets the archive reader open and decode
/// an archive in any object store. Every read is pinned to the object's ETag,
/// so reading an object that is replaced meanwhile fails instead of mixing
/// the two.
pub struct ObjectReader<'a> {
    store: &'a dyn ObjectStore,
    bucket: &'a BucketName,
    key: &'a ObjectKey,
    size: u64,
    etag: &'a str,
}

impl<'a> ObjectReader<'a> {
    /// A reader over the object `info` describes (from
    /// [`ObjectStore::head_object`]).
    pub fn new(
        store: &'a dyn ObjectStore,
        bucket: &'a BucketName,
        key: &'a ObjectKey,
        info: &'a ObjectInfo,
    ) -> Self {
        Self {
            store,
            bucket,
            key,
            size: info.size,
            etag: &info.etag,
        }
    }
}

impl crate::archive::ReadAt for ObjectReader<'_> {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(Error::Truncated(
                format!(
                    "read of {} bytes at {offset} passes the end of {} ({} bytes)",
                    buf.len(),
                    self.key,
                    self.size
                )
                .into(),
            ));
        }
        let pin = (!self.etag.is_empty()).then_some(self.etag);
        let bytes = self
            .store
            .get_range(self.bucket, self.key, offset..end, pin)?;
        if bytes.len() != buf.len() {
            return Err(Error::Truncated(
                format!(
                    "{} returned {} bytes for a {}-byte range",
                    self.key,
                    bytes.len(),
                    buf.len()
                )
                .into(),
            ));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }
}

/// One running unit's hold on its share of the account's EBS block-request
/// budget (GetSnapshotBlock for store units, PutSnapshotBlock for restore
/// units: EBS limits each per account). Units publish a lease while they run
/// and size their request rate from everyone's leases
/// ([`crate::engine::budget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLease {
    /// Who holds it: one unit of one task.
    pub holder: String,
    /// The holder's task: the budget is shared fairly between tasks.
    pub task: TaskId,
    /// Block requests a second the holder may be making until it renews.
    pub rate: u32,
    /// When the lease lapses unless renewed (ms since the epoch): a unit
    /// that died stops counting then.
    pub expires_ms: i64,
}

/// The task store: tasks, their units and the per-account quota counters, with
/// the conditional semantics of the design (admission and release are atomic,
/// a unit counts once).
pub trait TaskStore: Send + Sync {
    /// Admits `task` if its account's in-progress GiB of its kind are below
    /// `limit_gib`: adds its size to the counter and stores the task, atomically
    /// ([`Error::LimitExceeded`] otherwise). A store task is also refused with
    /// [`Error::AlreadyExists`] while another store of the same image into the
    /// same bucket is in progress.
    fn admit(&self, task: &Task, limit_gib: u64) -> Result<()>;

    /// One task.
    fn get(&self, id: &TaskId) -> Result<Option<Task>>;

    /// Records the multipart upload of a store task.
    fn set_upload(&self, id: &TaskId, upload_id: &str) -> Result<()>;

    /// Records the image a restore task creates.
    fn set_image(&self, id: &TaskId, image: &ImageId) -> Result<()>;

    /// Records how many units a task has, once planned.
    fn set_units_total(&self, id: &TaskId, units: u64) -> Result<()>;

    /// Records unit `unit` (its record, as JSON) unless already recorded.
    /// Returns whether this call recorded it. Writes nothing but the unit's own
    /// record, so units finishing together never contend for one item.
    fn record_unit(&self, id: &TaskId, unit: u64, record_json: &str) -> Result<bool>;

    /// Whether unit `unit` of a task is recorded (one key lookup: a unit step
    /// asks this before doing its work).
    fn unit_recorded(&self, id: &TaskId, unit: u64) -> Result<bool>;

    /// The recorded units of a task, in unit order.
    fn units(&self, id: &TaskId) -> Result<Vec<(u64, String)>>;

    /// Claims the end of an in-progress task, in one conditional write: held
    /// if nothing had claimed it, if the same ending had (a retried step
    /// re-enters its claim; the first claim's reason and time stay), or if
    /// another ending's claim is older than `overrule_before_ms`. Otherwise,
    /// and once the task has ended, it is [`Claim::Taken`] and nothing
    /// changes. [`Error::NotFound`] for an unknown task.
    fn claim_end(&self, id: &TaskId, request: &ClaimRequest<'_>) -> Result<Claim>;

    /// Ends a task whose end `ending` holds: Completed, or Failed with its
    /// claim's reason, and its quota released, atomically. Returns false,
    /// changing nothing, if `ending` no longer holds it (it was overruled, or
    /// the task has ended).
    fn finish(&self, id: &TaskId, ending: Ending, now_ms: i64) -> Result<bool>;

    /// An account's tasks of `kind` started within the retention window
    /// before `now_ms`, newest first.
    fn list(&self, account: &AccountId, kind: TaskKind, now_ms: i64) -> Result<Vec<Task>>;

    /// Every task still in progress, oldest first.
    fn in_progress(&self) -> Result<Vec<Task>>;

    /// GiB of `kind` tasks in progress for `account`.
    fn in_progress_gib(&self, account: &AccountId, kind: TaskKind) -> Result<u64>;

    /// Every quota counter, as (account, kind, GiB in progress).
    fn counters(&self) -> Result<Vec<(AccountId, TaskKind, u64)>>;

    /// Sets a counter to `to` if it still reads `from` (the sweeper's
    /// reconciliation: a concurrent admission or release makes it a no-op).
    /// Returns whether it changed.
    fn correct_counter(
        &self,
        account: &AccountId,
        kind: TaskKind,
        from: u64,
        to: u64,
    ) -> Result<bool>;

    /// Publishes `lease` in the budget of `account`'s `kind` units, replacing
    /// the holder's earlier one, and returns every lease of that budget that
    /// has not lapsed by `now_ms` (this one included), ordered by holder.
    fn renew_lease(
        &self,
        account: &AccountId,
        kind: TaskKind,
        lease: &RateLease,
        now_ms: i64,
    ) -> Result<Vec<RateLease>>;

    /// Withdraws a holder's lease (its unit has ended); withdrawing an
    /// absent one is fine.
    fn drop_lease(&self, account: &AccountId, kind: TaskKind, holder: &str) -> Result<()>;
}

/// Whether a task's workflow execution is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// Still running: its steps will end the task.
    Running,
    /// Ended (succeeded, failed, timed out or stopped).
    Ended,
    /// The runner knows no execution for the task.
    Missing,
}

/// Runs the store and restore state machines.
pub trait WorkflowRunner: Send + Sync {
    /// Starts the workflow of `kind` for task `task`; the execution is named after
    /// the task, so starting it twice starts it once.
    fn start(&self, kind: TaskKind, task: &TaskId) -> Result<()>;

    /// Whether the execution of `task` is running (the sweeper fails in-progress
    /// tasks whose execution is gone).
    fn status(&self, kind: TaskKind, task: &TaskId) -> Result<ExecutionStatus>;

    /// Stops the execution of `task` (a cancelled task); stopping one that has
    /// ended, or was never started, is fine.
    fn stop(&self, kind: TaskKind, task: &TaskId, cause: &str) -> Result<()>;
}

#[cfg(feature = "contract")]
pub mod contract;
#[cfg(feature = "contract")]
pub mod races;
