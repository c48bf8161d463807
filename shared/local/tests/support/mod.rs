//! Helpers for the engine suites: images on disk, an engine over a temporary
//! data directory, and port wrappers that inject failures.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::ids::{AccountId, ImageId, ResourceState, SnapshotId, TaskId};
use amistore_core::image::{Architecture, Encryption, ImageMetadata, ImageName, ImageSpec, Tag};
use amistore_core::ports::{
    CompletedPart, Image, ImageCatalog, ObjectInfo, ObjectStore, RateLease, SnapshotInfo,
    SnapshotStore, TaskStore,
};
use amistore_core::storage::{BucketName, ObjectKey};
use amistore_core::task::{Claim, ClaimRequest, Ending, Task, TaskKind};
use amistore_core::{Error, Result};
use amistore_local::embedded::{LocalEngine, LocalOptions, Ports};
use amistore_local::object_store::FolderObjectStore;
use amistore_local::workflow::RunnerOptions;

pub const MIB: u64 = 1 << 20;

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A raw disk of `blocks` blocks with `runs` written: odd runs random, even
/// runs allocated zeros.
pub fn disk(dir: &Path, name: &str, blocks: u64, runs: &[Range<u64>]) -> PathBuf {
    let path = dir.join(name);
    let f = File::create(&path).unwrap();
    f.set_len(blocks * BLOCK_SIZE).unwrap();
    for (i, run) in runs.iter().enumerate() {
        let len = ((run.end - run.start) * BLOCK_SIZE) as usize;
        let bytes = if i % 2 == 0 {
            noise(len, run.start + 1)
        } else {
            vec![0; len]
        };
        f.write_all_at(&bytes, run.start * BLOCK_SIZE).unwrap();
    }
    path
}

pub fn me() -> AccountId {
    AccountId::local_default()
}

/// A test world: a data directory, an engine over it, and a bucket.
pub struct World {
    pub dir: tempfile::TempDir,
    pub local: LocalEngine,
    pub faults: Faults,
    pub bucket: BucketName,
}

/// Small units and parts so a few MiB make several parts; no retry delays.
pub fn options() -> LocalOptions {
    LocalOptions {
        runner: RunnerOptions {
            max_map_concurrency: 3,
            retry_delay_scale: 0.0,
            ..RunnerOptions::default()
        },
        min_unit_blocks: Some(2),
        min_part_size: Some(64 * 1024),
        ..LocalOptions::default()
    }
}

pub fn world_with(options: LocalOptions) -> World {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let f = faults.clone();
    let data = dir.path().join("data");
    let objects_dir = data.clone();
    let local = LocalEngine::open_with(&data, options, None, move |ports| {
        let objects = FolderObjectStore::open(&objects_dir)
            .unwrap()
            .with_min_part_size(64 * 1024);
        Ports {
            catalog: Arc::new(Faulty(ports.catalog, f.clone())),
            snapshots: Arc::new(Faulty(ports.snapshots, f.clone())),
            objects: Arc::new(Faulty(Arc::new(objects) as Arc<dyn ObjectStore>, f.clone())),
            work: Arc::new(Faulty(ports.work, f.named("work."))),
            tasks: Arc::new(Faulty(ports.tasks, f.clone())),
            runner: None,
        }
    })
    .unwrap();
    let bucket: BucketName = "test-bucket".parse().unwrap();
    local.buckets.create_bucket(&bucket).unwrap();
    World {
        dir,
        local,
        faults,
        bucket,
    }
}

pub fn world() -> World {
    world_with(options())
}

impl World {
    /// Imports the standard 2-disk test image: holes, random data, allocated
    /// zeros, a partly written last block region.
    pub fn image(&self, name: &str) -> (ImageId, Vec<PathBuf>) {
        let d = self.dir.path();
        let a = disk(
            d,
            &format!("{name}-a.raw"),
            40,
            &[0..3, 3..5, 9..10, 20..21, 30..40],
        );
        let b = disk(d, &format!("{name}-b.raw"), 16, &[5..7]);
        let spec = ImageSpec {
            name: name.parse().unwrap(),
            description: Some("engine test".into()),
            architecture: Architecture::Arm64,
            boot_mode: None,
            root_device_name: None,
            tags: vec!["Name=source".parse().unwrap()],
        };
        let disks = vec![
            ("/dev/xvda".parse().unwrap(), a.clone()),
            ("/dev/xvdb".parse().unwrap(), b.clone()),
        ];
        let image = self.local.library.import(&me(), &spec, &disks).unwrap();
        (image.image_id, vec![a, b])
    }

    pub fn task(&self, id: &TaskId) -> Task {
        self.local.engine.task(id).unwrap()
    }

    pub fn in_progress_gib(&self, kind: TaskKind) -> u64 {
        self.local
            .engine
            .tasks
            .in_progress_gib(&me(), kind)
            .unwrap()
    }

    pub fn uploads(&self) -> usize {
        self.local
            .buckets
            .list_multipart_uploads(&self.bucket)
            .unwrap()
            .len()
    }
}

/// Which calls fail: a method name, the call numbers (1-based) that fail, and
/// the error they fail with.
#[derive(Clone, Default)]
pub struct Faults {
    prefix: &'static str,
    state: Arc<(Mutex<FaultState>, Condvar)>,
}

/// Makes the error an injected failure returns.
pub type MakeError = fn(String) -> Error;

#[derive(Default)]
struct FaultState {
    /// Method, failing call numbers, error.
    rules: Vec<(String, Vec<usize>, MakeError)>,
    calls: BTreeMap<String, usize>,
    held: Vec<String>,
    /// The size of each part uploaded, by part number.
    part_sizes: BTreeMap<u32, u64>,
}

/// While it lives, calls of a method wait.
pub struct Gate {
    faults: Faults,
    method: String,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let (lock, wake) = &*self.faults.state;
        lock.lock().unwrap().held.retain(|m| *m != self.method);
        wake.notify_all();
    }
}

pub fn transient(m: String) -> Error {
    Error::Transient(m.into())
}
pub fn permanent(m: String) -> Error {
    Error::InvalidInput(m.into())
}

impl Faults {
    fn named(&self, prefix: &'static str) -> Self {
        Self {
            prefix,
            state: self.state.clone(),
        }
    }

    /// Makes calls `nth` (1-based) of `method` fail with `error`.
    pub fn fail(&self, method: &str, nth: &[usize], error: MakeError) {
        self.state
            .0
            .lock()
            .unwrap()
            .rules
            .push((method.to_owned(), nth.to_vec(), error));
    }

    /// Ends every injected failure.
    pub fn clear(&self) {
        self.state.0.lock().unwrap().rules.clear();
    }

    /// Makes calls of `method` wait until the gate is dropped.
    pub fn hold(&self, method: &str) -> Gate {
        self.state.0.lock().unwrap().held.push(method.to_owned());
        Gate {
            faults: self.clone(),
            method: method.to_owned(),
        }
    }

    /// How often `method` was called.
    pub fn calls(&self, method: &str) -> usize {
        self.state
            .0
            .lock()
            .unwrap()
            .calls
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// The size of each part uploaded through a wrapped object store, by
    /// part number (the last upload of a number counts).
    pub fn part_sizes(&self) -> BTreeMap<u32, u64> {
        self.state.0.lock().unwrap().part_sizes.clone()
    }

    fn check(&self, method: &str) -> Result<()> {
        let method = format!("{}{method}", self.prefix);
        let (lock, wake) = &*self.state;
        let mut s = wake
            .wait_while(lock.lock().unwrap(), |s| s.held.contains(&method))
            .unwrap();
        let n = {
            let c = s.calls.entry(method.clone()).or_default();
            *c += 1;
            *c
        };
        for (m, nth, error) in &s.rules {
            if *m == method && nth.contains(&n) {
                return Err(error(format!("injected failure of {method} (call {n})")));
            }
        }
        Ok(())
    }
}

/// A port wrapped so that calls can be made to fail.
pub struct Faulty<P: ?Sized>(pub Arc<P>, pub Faults);

impl ImageCatalog for Faulty<dyn ImageCatalog> {
    fn describe_image(&self, a: &AccountId, id: &ImageId) -> Result<Image> {
        self.1.check("describe_image")?;
        self.0.describe_image(a, id)
    }
    fn list_images(&self, a: &AccountId) -> Result<Vec<Image>> {
        self.1.check("list_images")?;
        self.0.list_images(a)
    }
    fn image_name_taken(&self, a: &AccountId, n: &ImageName) -> Result<bool> {
        self.1.check("image_name_taken")?;
        self.0.image_name_taken(a, n)
    }
    fn register_image(
        &self,
        a: &AccountId,
        m: &ImageMetadata,
        s: &[SnapshotId],
        t: &str,
    ) -> Result<ImageId> {
        self.1.check("register_image")?;
        self.0.register_image(a, m, s, t)
    }
    fn find_image_by_token(&self, a: &AccountId, t: &str) -> Result<Option<Image>> {
        self.1.check("find_image_by_token")?;
        self.0.find_image_by_token(a, t)
    }
    fn deregister_image(&self, a: &AccountId, id: &ImageId) -> Result<()> {
        self.1.check("deregister_image")?;
        self.0.deregister_image(a, id)
    }
    fn set_image_state(
        &self,
        a: &AccountId,
        id: &ImageId,
        s: ResourceState,
        r: Option<&str>,
    ) -> Result<()> {
        self.1.check("set_image_state")?;
        self.0.set_image_state(a, id, s, r)
    }
}

impl SnapshotStore for Faulty<dyn SnapshotStore> {
    fn finish_writes(&self, snapshot: &SnapshotId) -> Result<()> {
        self.0.finish_writes(snapshot)
    }
    fn will_read(&self, snapshot: &SnapshotId, blocks: std::ops::Range<u64>) {
        self.0.will_read(snapshot, blocks);
    }
    fn set_request_rate(&self, per_second: u32) {
        self.0.set_request_rate(per_second);
    }
    fn describe_snapshot(&self, a: &AccountId, s: &SnapshotId) -> Result<SnapshotInfo> {
        self.1.check("describe_snapshot")?;
        self.0.describe_snapshot(a, s)
    }
    fn list_blocks(&self, a: &AccountId, s: &SnapshotId) -> Result<BlockRanges> {
        self.1.check("list_blocks")?;
        self.0.list_blocks(a, s)
    }
    fn read_blocks(&self, s: &SnapshotId, first: u64, buf: &mut [u8]) -> Result<()> {
        self.1.check("read_blocks")?;
        self.0.read_blocks(s, first, buf)
    }
    fn start_snapshot(
        &self,
        a: &AccountId,
        size: u64,
        tags: &[Tag],
        e: &Encryption,
        t: &str,
    ) -> Result<SnapshotId> {
        self.1.check("start_snapshot")?;
        self.0.start_snapshot(a, size, tags, e, t)
    }
    fn find_snapshot_by_token(&self, a: &AccountId, t: &str) -> Result<Option<SnapshotId>> {
        self.1.check("find_snapshot_by_token")?;
        self.0.find_snapshot_by_token(a, t)
    }
    fn write_blocks(&self, s: &SnapshotId, first: u64, data: &[u8]) -> Result<()> {
        self.1.check("write_blocks")?;
        self.0.write_blocks(s, first, data)
    }
    fn complete_snapshot(&self, s: &SnapshotId, n: u64) -> Result<()> {
        self.1.check("complete_snapshot")?;
        self.0.complete_snapshot(s, n)
    }
    fn delete_snapshot(&self, s: &SnapshotId) -> Result<()> {
        self.1.check("delete_snapshot")?;
        self.0.delete_snapshot(s)
    }
}

impl ObjectStore for Faulty<dyn ObjectStore> {
    fn bucket_exists(&self, a: &AccountId, b: &BucketName) -> Result<bool> {
        self.1.check("bucket_exists")?;
        self.0.bucket_exists(a, b)
    }
    fn create_multipart(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        m: &BTreeMap<String, String>,
        t: &[Tag],
    ) -> Result<String> {
        self.1.check("create_multipart")?;
        self.0.create_multipart(b, k, m, t)
    }
    fn upload_part(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        u: &str,
        n: u32,
        body: &Path,
    ) -> Result<String> {
        self.1.check("upload_part")?;
        let size = std::fs::metadata(body).map_or(0, |m| m.len());
        self.1.state.0.lock().unwrap().part_sizes.insert(n, size);
        self.0.upload_part(b, k, u, n, body)
    }
    fn complete_multipart(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        u: &str,
        p: &[CompletedPart],
    ) -> Result<()> {
        self.1.check("complete_multipart")?;
        self.0.complete_multipart(b, k, u, p)
    }
    fn abort_multipart(&self, b: &BucketName, k: &ObjectKey, u: &str) -> Result<()> {
        self.1.check("abort_multipart")?;
        self.0.abort_multipart(b, k, u)
    }
    fn list_multipart_uploads(&self, b: &BucketName) -> Result<Vec<(String, ObjectKey)>> {
        self.1.check("list_multipart_uploads")?;
        self.0.list_multipart_uploads(b)
    }
    fn put_object(&self, b: &BucketName, k: &ObjectKey, body: &[u8]) -> Result<()> {
        self.1.check("put_object")?;
        self.0.put_object(b, k, body)
    }
    fn delete_object(&self, b: &BucketName, k: &ObjectKey) -> Result<()> {
        self.1.check("delete_object")?;
        self.0.delete_object(b, k)
    }
    fn head_object(&self, b: &BucketName, k: &ObjectKey) -> Result<Option<ObjectInfo>> {
        self.1.check("head_object")?;
        self.0.head_object(b, k)
    }
    fn get_range(
        &self,
        b: &BucketName,
        k: &ObjectKey,
        r: Range<u64>,
        m: Option<&str>,
    ) -> Result<Vec<u8>> {
        self.1.check("get_range")?;
        self.0.get_range(b, k, r, m)
    }
}

impl TaskStore for Faulty<dyn TaskStore> {
    fn admit(&self, t: &Task, l: u64) -> Result<()> {
        self.1.check("admit")?;
        self.0.admit(t, l)
    }
    fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        self.0.get(id)
    }
    fn set_upload(&self, id: &TaskId, u: &str) -> Result<()> {
        self.1.check("set_upload")?;
        self.0.set_upload(id, u)
    }
    fn set_image(&self, id: &TaskId, i: &ImageId) -> Result<()> {
        self.1.check("set_image")?;
        self.0.set_image(id, i)
    }
    fn set_units_total(&self, id: &TaskId, n: u64) -> Result<()> {
        self.1.check("set_units_total")?;
        self.0.set_units_total(id, n)
    }
    fn record_unit(&self, id: &TaskId, u: u64, r: &str) -> Result<bool> {
        self.1.check("record_unit")?;
        self.0.record_unit(id, u, r)
    }
    fn unit_recorded(&self, id: &TaskId, u: u64) -> Result<bool> {
        self.0.unit_recorded(id, u)
    }
    fn units(&self, id: &TaskId) -> Result<Vec<(u64, String)>> {
        self.0.units(id)
    }
    fn claim_end(&self, id: &TaskId, c: &ClaimRequest<'_>) -> Result<Claim> {
        self.1.check("claim_end")?;
        self.0.claim_end(id, c)
    }
    fn finish(&self, id: &TaskId, e: Ending, now: i64) -> Result<bool> {
        self.1.check("finish")?;
        self.0.finish(id, e, now)
    }
    fn list(&self, a: &AccountId, k: TaskKind, now: i64) -> Result<Vec<Task>> {
        self.0.list(a, k, now)
    }
    fn in_progress(&self) -> Result<Vec<Task>> {
        self.0.in_progress()
    }
    fn in_progress_gib(&self, a: &AccountId, k: TaskKind) -> Result<u64> {
        self.0.in_progress_gib(a, k)
    }
    fn counters(&self) -> Result<Vec<(AccountId, TaskKind, u64)>> {
        self.0.counters()
    }
    fn correct_counter(&self, a: &AccountId, k: TaskKind, from: u64, to: u64) -> Result<bool> {
        self.1.check("correct_counter")?;
        self.0.correct_counter(a, k, from, to)
    }
    fn renew_lease(
        &self,
        a: &AccountId,
        k: TaskKind,
        lease: &RateLease,
        now_ms: i64,
    ) -> Result<Vec<RateLease>> {
        self.1.check("renew_lease")?;
        self.0.renew_lease(a, k, lease, now_ms)
    }
    fn drop_lease(&self, a: &AccountId, k: TaskKind, holder: &str) -> Result<()> {
        self.1.check("drop_lease")?;
        self.0.drop_lease(a, k, holder)
    }
}

/// The allocated-block layout of a file.
pub fn layout(path: &Path) -> BlockRanges {
    amistore_local::raw_disk::RawDisk::open(path)
        .unwrap()
        .present
}
