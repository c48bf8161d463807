//! Buckets as plain directories: the local object store.
//!
//! ```text
//! <data-dir>/s3/<bucket>/<key>                              the object, an ordinary file
//! <data-dir>/s3/<bucket>/.amistore-owner                     the owning account (absent: the local default)
//! <data-dir>/s3/<bucket>/<dirs>/.amistore.<name>.json        its metadata and tags
//! <data-dir>/s3/<bucket>/.amistore-uploads/<id>/upload.json  a multipart upload in progress
//! <data-dir>/s3/<bucket>/.amistore-uploads/<id>/…          its parts (see upload.rs)
//! ```
//!
//! A part uploaded from a file is hard-linked into the staging folder when it
//! can be (the engine spools units on the same file system), and parts are
//! joined into the object as they arrive, so completing an upload costs little.
//!
//! A bucket exists if its directory exists. An object appears only when its
//! upload completes (the parts are joined, synced, then renamed into place), so
//! nobody ever sees half an object. S3's rules are enforced as S3 enforces them:
//! every part but the last at least 5 MiB, at most 10,000 parts, user metadata at
//! most 2 KB of printable ASCII, at most 10 tags.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use amistore_core::archive::manifest::format_time;
use amistore_core::ids::{AccountId, unique_token};
use amistore_core::image::Tag;
use amistore_core::ports::{BucketAdmin, BucketSummary, MAX_LIST_KEYS, ObjectStore, ObjectSummary};
pub use amistore_core::ports::{CompletedPart, ObjectInfo};
use amistore_core::storage::{BucketName, ObjectKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Detail, Error, Result};

mod upload;
use upload::Staging;

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's part numbers run 1..=10,000.
pub const MAX_PART_NUMBER: u32 = 10_000;
/// S3's limit on user metadata: keys plus values, in bytes.
pub const MAX_METADATA_BYTES: usize = 2048;
/// S3's limit on tags per object.
pub const MAX_TAGS: usize = 10;
const UPLOADS: &str = ".amistore-uploads";
/// Names the account a bucket belongs to (absent: the local default account).
const OWNER_FILE: &str = ".amistore-owner";

#[derive(Serialize, Deserialize)]
struct UploadRecord {
    key: ObjectKey,
    metadata: BTreeMap<String, String>,
    tags: Vec<Tag>,
}

/// The local object store under `<data-dir>/s3`.
#[derive(Debug, Clone)]
pub struct FolderObjectStore {
    root: PathBuf,
    min_part_size: u64,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::io(context, e)
}

/// Writes `bytes` to `path` via a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(".amistore.tmp.{}", unique_token()));
    crate::private::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("writing {}", path.display()), e)
        })
}

impl FolderObjectStore {
    /// The store under `data_dir/s3` (created if missing).
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::at(&data_dir.join("s3"))
    }

    /// A store whose buckets are the folders of `root` (created if missing).
    pub fn at(root: &Path) -> Result<Self> {
        let root = root.to_owned();
        crate::private::create_dir_all(&root)
            .map_err(io(format!("creating {}", root.display())))?;
        Ok(Self {
            root,
            min_part_size: MIN_PART_SIZE,
        })
    }

    /// Changes the smallest allowed non-last part (tests use small parts).
    pub fn with_min_part_size(mut self, bytes: u64) -> Self {
        self.min_part_size = bytes;
        self
    }

    fn bucket_dir(&self, bucket: &BucketName) -> Result<PathBuf> {
        let dir = self.root.join(bucket.as_str());
        if !dir.is_dir() {
            return Err(Error::NotFound(
                format!("bucket {bucket} does not exist").into(),
            ));
        }
        Ok(dir)
    }

    fn object_path(&self, bucket: &BucketName, key: &ObjectKey) -> Result<PathBuf> {
        let mut path = self.bucket_dir(bucket)?;
        path.extend(key.segments());
        Ok(path)
    }

    fn sidecar(object: &Path) -> PathBuf {
        let name = object
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        object.with_file_name(format!(".amistore.{name}.json"))
    }

    fn upload_dir(&self, bucket: &BucketName, upload: &str) -> Result<PathBuf> {
        if upload.is_empty() || !upload.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotFound(
                format!("upload {upload:?} does not exist").into(),
            ));
        }
        let dir = self.bucket_dir(bucket)?.join(UPLOADS).join(upload);
        if !dir.is_dir() {
            return Err(Error::NotFound(
                format!("upload {upload} does not exist in bucket {bucket}").into(),
            ));
        }
        Ok(dir)
    }

    /// Whether a bucket of that name exists, whoever owns it.
    pub fn has_bucket(&self, bucket: &BucketName) -> bool {
        self.root.join(bucket.as_str()).is_dir()
    }

    /// Creates a bucket (a directory) for the local default account; creating
    /// an existing one is fine.
    pub fn create_bucket(&self, bucket: &BucketName) -> Result<()> {
        BucketAdmin::create_bucket(self, &AccountId::local_default(), bucket)
    }

    /// The account a bucket belongs to: the one in its owner file, or the
    /// local default account for a folder made by hand.
    fn bucket_owner(&self, bucket: &BucketName) -> Result<AccountId> {
        let dir = self.bucket_dir(bucket)?;
        match fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(owner) => owner.trim().parse(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AccountId::local_default()),
            Err(e) => Err(Error::io(
                format!("reading the owner of bucket {bucket}"),
                e,
            )),
        }
    }

    /// The upload's record, if `upload` exists in `bucket` and is for `key`
    /// (S3 ties an upload id to its key).
    fn upload_for(&self, bucket: &BucketName, upload: &str, key: &ObjectKey) -> Result<PathBuf> {
        let dir = self.upload_dir(bucket, upload)?;
        let record = read_upload(&dir, upload)?;
        if record.key != *key {
            return Err(Error::NotFound(
                format!("upload {upload} is for {}, not {key}", record.key).into(),
            ));
        }
        Ok(dir)
    }

    /// Opens an object for reading (it implements the archive reader's `ReadAt`).
    pub fn open_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<File> {
        let path = self.object_path(bucket, key)?;
        File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("object {key} does not exist in bucket {bucket}").into())
            }
            _ => Error::io(format!("opening {}", path.display()), e),
        })
    }
}

impl ObjectStore for FolderObjectStore {
    fn bucket_exists(&self, account: &AccountId, bucket: &BucketName) -> Result<bool> {
        if !self.has_bucket(bucket) {
            return Ok(false);
        }
        Ok(self.bucket_owner(bucket)? == *account)
    }

    fn create_multipart(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        metadata: &BTreeMap<String, String>,
        tags: &[Tag],
    ) -> Result<String> {
        check_metadata(metadata)?;
        if tags.len() > MAX_TAGS {
            return Err(Error::InvalidInput(
                format!("{} object tags given; S3 allows {MAX_TAGS}", tags.len()).into(),
            ));
        }
        amistore_core::image::check_unique_tag_keys(tags)?;
        let upload = unique_token();
        let dir = self.bucket_dir(bucket)?.join(UPLOADS).join(&upload);
        crate::private::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let record = serde_json::to_vec(&UploadRecord {
            key: key.clone(),
            metadata: metadata.clone(),
            tags: tags.to_vec(),
        })
        .map_err(|e| Error::InvalidInput(Detail::because("upload record does not serialise", e)))?;
        write_atomically(&dir.join("upload.json"), &record)?;
        Ok(upload)
    }

    /// Stores part `part_number` of an upload and returns its ETag; the body
    /// file stays the caller's. Uploading the same number again replaces the
    /// part, as on S3.
    fn upload_part(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        body: &Path,
    ) -> Result<String> {
        let dir = self.upload_for(bucket, upload_id, key)?;
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(Error::InvalidInput(
                format!("part number {part_number} is outside 1..={MAX_PART_NUMBER}").into(),
            ));
        }
        Staging::lock(&dir)?.stage(part_number, |target| {
            if fs::hard_link(body, target).is_ok() {
                return Ok(());
            }
            let tmp = target.with_extension("copying");
            crate::private::create(&tmp)
                .and_then(|mut out| {
                    std::io::copy(&mut File::open(body)?, &mut out)?;
                    out.sync_all()
                })
                .and_then(|()| fs::rename(&tmp, target))
                .map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    Error::io(format!("staging {}", body.display()), e)
                })
        })
    }

    /// Joins the named parts into the object, which appears atomically.
    fn complete_multipart(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let dir = self.upload_dir(bucket, upload_id)?;
        let record = read_upload(&dir, upload_id)?;
        if record.key != *key {
            return Err(Error::InvalidInput(
                format!("upload {upload_id} is for {}, not {key}", record.key).into(),
            ));
        }
        if parts.is_empty()
            || parts
                .windows(2)
                .any(|w| w[0].part_number >= w[1].part_number)
        {
            return Err(Error::InvalidInput(
                "parts must be listed once each, in ascending order (InvalidPartOrder)".into(),
            ));
        }
        let staging = Staging::lock(&dir)?;
        let (joined, size) = staging.complete(parts, self.min_part_size)?;
        let info = ObjectInfo {
            size,
            metadata: record.metadata,
            tags: record.tags,
            last_modified: format_time(OffsetDateTime::now_utc()),
            etag: String::new(),
        };
        let target = self.object_path(bucket, key)?;
        if let Some(parent) = target.parent() {
            crate::private::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let sidecar = serde_json::to_vec_pretty(&info).map_err(|e| {
            Error::InvalidInput(Detail::because("object info does not serialise", e))
        })?;
        write_atomically(&Self::sidecar(&target), &sidecar)?;
        fs::rename(&joined, &target).map_err(io(format!("publishing {}", target.display())))?;
        fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))
    }

    /// Abandons an upload and deletes its parts. The upload's folder is first
    /// renamed out of the way, atomically, so of two aborts at once one wins
    /// and the other finds no upload, as on S3.
    fn abort_multipart(&self, bucket: &BucketName, key: &ObjectKey, upload_id: &str) -> Result<()> {
        let dir = self.upload_for(bucket, upload_id, key)?;
        let trash = dir.with_file_name(format!(".aborted-{}", unique_token()));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(
                    format!("upload {upload_id} does not exist in bucket {bucket}").into(),
                ));
            }
            Err(e) => return Err(Error::io(format!("aborting upload {upload_id}"), e)),
        }
        fs::remove_dir_all(&trash).map_err(io(format!("removing {}", trash.display())))
    }

    /// Uploads in progress in `bucket`, as (upload id, key).
    fn list_multipart_uploads(&self, bucket: &BucketName) -> Result<Vec<(String, ObjectKey)>> {
        let dir = self.bucket_dir(bucket)?.join(UPLOADS);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(vec![]);
        };
        let mut uploads = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let id = entry.file_name().to_string_lossy().into_owned();
            // Upload ids are hex; anything else is an aborted upload's remains.
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let mut bytes = Vec::new();
            if File::open(entry.path().join("upload.json"))
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .is_ok()
                && let Ok(record) = serde_json::from_slice::<UploadRecord>(&bytes)
            {
                uploads.push((id, record.key));
            }
        }
        uploads.sort();
        Ok(uploads)
    }

    /// Writes a whole (small) object with no metadata, atomically.
    fn put_object(&self, bucket: &BucketName, key: &ObjectKey, body: &[u8]) -> Result<()> {
        let target = self.object_path(bucket, key)?;
        if let Some(parent) = target.parent() {
            crate::private::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let _ = fs::remove_file(Self::sidecar(&target));
        write_atomically(&target, body)
    }

    /// Removes an object, its sidecar, and folders left empty.
    fn delete_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<()> {
        let bucket_dir = self.bucket_dir(bucket)?;
        let target = self.object_path(bucket, key)?;
        for path in [Self::sidecar(&target), target.clone()] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("removing {}", path.display()), e));
                }
                _ => {}
            }
        }
        // S3 has no folders: one that only held this object goes with it.
        let mut dir = target.parent();
        while let Some(d) = dir.filter(|d| *d != bucket_dir) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn head_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<Option<ObjectInfo>> {
        let path = self.object_path(bucket, key)?;
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        let sidecar = Self::sidecar(&path);
        let etag = etag_of(&meta);
        let mut info: ObjectInfo = match fs::read(&sidecar) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    format!("reading {}", sidecar.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?,
            // A file copied in by hand: no metadata, no tags.
            Err(_) => ObjectInfo {
                size: 0,
                metadata: BTreeMap::new(),
                tags: vec![],
                last_modified: String::new(),
                etag: String::new(),
            },
        };
        info.size = meta.len();
        info.etag = etag;
        Ok(Some(info))
    }

    /// With `if_match`, reads only from the object with that ETag (checked on
    /// the open file, so a replacement between the check and the read cannot
    /// slip in).
    fn get_range(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Vec<u8>> {
        let file = self.open_object(bucket, key)?;
        if let Some(expected) = if_match {
            let meta = file
                .metadata()
                .map_err(io(format!("reading the metadata of {key}")))?;
            let now = etag_of(&meta);
            if now != expected {
                return Err(Error::IncorrectState(
                    format!("{key} in bucket {bucket} was replaced (ETag {expected}, now {now})")
                        .into(),
                ));
            }
        }
        let len = range.end.saturating_sub(range.start);
        let mut buf = vec![
            0u8;
            usize::try_from(len)
                .map_err(|_| Error::InvalidInput("range too large".into()))?
        ];
        file.read_exact_at(&mut buf, range.start)
            .map_err(io(format!(
                "reading {key} bytes {}..{}",
                range.start, range.end
            )))?;
        Ok(buf)
    }
}

impl BucketAdmin for FolderObjectStore {
    /// Creating a bucket that `account` already has is fine; one another
    /// account owns is refused.
    fn create_bucket(&self, account: &AccountId, bucket: &BucketName) -> Result<()> {
        let dir = self.root.join(bucket.as_str());
        if dir.is_dir() {
            let current = self.bucket_owner(bucket)?;
            if current != *account {
                return Err(Error::AlreadyExists(
                    format!("bucket {bucket} already exists and belongs to another account").into(),
                ));
            }
            return Ok(());
        }
        crate::private::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        if *account != AccountId::local_default() {
            write_atomically(&dir.join(OWNER_FILE), account.as_str().as_bytes())?;
        }
        Ok(())
    }
    fn list_buckets(&self, account: &AccountId) -> Result<Vec<BucketSummary>> {
        let entries =
            fs::read_dir(&self.root).map_err(io(format!("listing {}", self.root.display())))?;
        let mut buckets = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", self.root.display())))?;
            // A folder whose name S3 would refuse is not a bucket.
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<BucketName>().ok())
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() || self.bucket_owner(&name)? != *account {
                continue;
            }
            let created = meta.created().or_else(|_| meta.modified());
            buckets.push(BucketSummary {
                name,
                creation_date: format_time(
                    created.map_or(OffsetDateTime::UNIX_EPOCH, OffsetDateTime::from),
                ),
            });
        }
        buckets.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(buckets)
    }

    fn owner_of(&self, bucket: &BucketName) -> Result<Option<AccountId>> {
        if !self.has_bucket(bucket) {
            return Ok(None);
        }
        Ok(Some(self.bucket_owner(bucket)?))
    }

    fn list_objects(
        &self,
        bucket: &BucketName,
        prefix: &str,
        start_after: &str,
        max: usize,
    ) -> Result<Vec<ObjectSummary>> {
        let root = self.bucket_dir(bucket)?;
        let mut keys = Vec::new();
        let mut folders = vec![(root.clone(), String::new())];
        while let Some((dir, above)) = folders.pop() {
            let entries = fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                // The store's own files (owner, sidecars, uploads, temporaries).
                if name.starts_with(".amistore") {
                    continue;
                }
                let key = format!("{above}{name}");
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    // Only folders that can hold keys with the prefix.
                    let folder = format!("{key}/");
                    if folder.starts_with(prefix) || prefix.starts_with(&folder) {
                        folders.push((entry.path(), folder));
                    }
                } else if kind.is_file() && key.starts_with(prefix) && key.as_str() > start_after {
                    keys.push(key);
                }
            }
        }
        keys.sort_unstable();
        let mut objects = Vec::new();
        // A file copied in by hand under a name S3 would refuse is no object.
        let valid = keys.into_iter().filter_map(|k| k.parse::<ObjectKey>().ok());
        for parsed in valid.take(max.min(MAX_LIST_KEYS)) {
            let Ok(meta) = fs::metadata(self.object_path(bucket, &parsed)?) else {
                continue; // deleted meanwhile
            };
            objects.push(ObjectSummary {
                size: meta.len(),
                last_modified: format_time(
                    meta.modified()
                        .map_or(OffsetDateTime::UNIX_EPOCH, OffsetDateTime::from),
                ),
                etag: etag_of(&meta),
                key: parsed,
            });
        }
        Ok(objects)
    }
}

/// An object's ETag: its file's identity and version. Objects are written
/// under another name and renamed into place, so a replaced object is a new
/// file (a new inode), and its ETag differs.
fn etag_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "\"{:x}-{:x}-{:x}.{:x}-{:x}\"",
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len()
    )
}

fn read_upload(dir: &Path, upload: &str) -> Result<UploadRecord> {
    let bytes = fs::read(dir.join("upload.json")).map_err(|e| match e.kind() {
        // Aborted (or completed) meanwhile.
        std::io::ErrorKind::NotFound => {
            Error::NotFound(format!("upload {upload} does not exist").into())
        }
        _ => Error::io(format!("reading upload {upload}"), e),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidInput(Detail::because(format!("upload {upload} is damaged"), e)))
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    let total: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_METADATA_BYTES {
        return Err(Error::InvalidInput(format!(
            "user metadata is {total} bytes; S3 allows {MAX_METADATA_BYTES} (encode long values or shorten them)"
        ).into()));
    }
    for (k, v) in metadata {
        let key_ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(Error::InvalidInput(
                format!("metadata key {k:?} must be lowercase letters, digits, '-' or '_'").into(),
            ));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(Error::InvalidInput(
                format!("metadata {k:?} must be printable ASCII (RFC 2047-encode other text)")
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FolderObjectStore, BucketName) {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderObjectStore::open(dir.path())
            .unwrap()
            .with_min_part_size(1024);
        let bucket: BucketName = "archive-bucket".parse().unwrap();
        store.create_bucket(&bucket).unwrap();
        (dir, store, bucket)
    }

    fn key(s: &str) -> ObjectKey {
        s.parse().unwrap()
    }

    /// Uploads a part held in memory (the port takes a file, as the engine spools).
    fn put_part(
        store: &FolderObjectStore,
        bucket: &BucketName,
        key: &ObjectKey,
        upload: &str,
        part_number: u32,
        body: &[u8],
    ) -> Result<String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), body).unwrap();
        store.upload_part(bucket, key, upload, part_number, file.path())
    }

    #[test]
    fn objects_appear_only_when_their_upload_completes() {
        let (dir, store, bucket) = store();
        let k = key("p1/p2/ami-0123456789abcdef0.bin");
        let metadata = BTreeMap::from([("ami-name".to_owned(), "=?UTF-8?B?w6k=?=".to_owned())]);
        let tags = vec!["team=storage".parse().unwrap()];
        let upload = store
            .create_multipart(&bucket, &k, &metadata, &tags)
            .unwrap();
        let bodies = [vec![1u8; 2000], vec![2u8; 1500], vec![3u8; 10]];
        // Parts arrive in any order, and a retried part replaces the first try.
        let mut etags = BTreeMap::new();
        for n in [3u32, 1, 2, 2] {
            etags.insert(
                n,
                put_part(&store, &bucket, &k, &upload, n, &bodies[n as usize - 1]).unwrap(),
            );
        }
        assert_eq!(
            store.head_object(&bucket, &k).unwrap(),
            None,
            "nothing is visible before completion"
        );
        assert_eq!(
            store.list_multipart_uploads(&bucket).unwrap(),
            vec![(upload.clone(), k.clone())]
        );
        let parts: Vec<CompletedPart> = etags
            .into_iter()
            .map(|(part_number, etag)| CompletedPart { part_number, etag })
            .collect();
        store
            .complete_multipart(&bucket, &k, &upload, &parts)
            .unwrap();
        let info = store.head_object(&bucket, &k).unwrap().unwrap();
        assert_eq!(info.size, 3510);
        let head = store.head_object(&bucket, &k).unwrap().unwrap();
        assert_eq!(
            (head.size, &head.metadata, &head.tags),
            (3510, &metadata, &tags)
        );
        assert_eq!(
            store.get_range(&bucket, &k, 1999..2001, None).unwrap(),
            vec![1, 2]
        );
        let on_disk = dir
            .path()
            .join("s3/archive-bucket/p1/p2/ami-0123456789abcdef0.bin");
        assert_eq!(
            fs::read(on_disk).unwrap().len(),
            3510,
            "a plain file at <data>/s3/<bucket>/<key>"
        );
        assert!(
            store.list_multipart_uploads(&bucket).unwrap().is_empty(),
            "staging is cleaned up"
        );
    }

    #[test]
    fn parts_join_as_they_arrive_and_any_listed_subset_completes() {
        let (dir, store, bucket) = store();
        let k = key("joined.bin");
        let upload = store
            .create_multipart(&bucket, &k, &BTreeMap::new(), &[])
            .unwrap();
        let staging = dir
            .path()
            .join("s3/archive-bucket/.amistore-uploads")
            .join(&upload);
        let body = |n: u8| vec![n; 1024 + n as usize];
        let e2 = put_part(&store, &bucket, &k, &upload, 2, &body(2)).unwrap();
        assert_eq!(
            fs::metadata(staging.join("object")).map_or(0, |m| m.len()),
            0,
            "2 waits for 1"
        );
        let e1 = put_part(&store, &bucket, &k, &upload, 1, &body(1)).unwrap();
        let e3 = put_part(&store, &bucket, &k, &upload, 3, &body(3)).unwrap();
        assert_eq!(
            fs::metadata(staging.join("object")).unwrap().len(),
            (1025 + 1026 + 1027) as u64,
            "1, then 2 and 3 joined on arrival"
        );
        // A crash in the middle of an append leaves bytes past the record: cut.
        fs::OpenOptions::new()
            .append(true)
            .open(staging.join("object"))
            .unwrap()
            .write_all(b"torn")
            .unwrap();
        let e4 = put_part(&store, &bucket, &k, &upload, 4, &body(4)).unwrap();
        // Complete with 1, 3, 4 only: 2 is left out though it was joined.
        let parts = [(1, e1), (3, e3), (4, e4)]
            .map(|(part_number, etag)| CompletedPart { part_number, etag });
        store
            .complete_multipart(&bucket, &k, &upload, &parts)
            .unwrap();
        let info = store.head_object(&bucket, &k).unwrap().unwrap();
        let expected: Vec<u8> = [body(1), body(3), body(4)].concat();
        assert_eq!(info.size, expected.len() as u64);
        assert_eq!(
            store
                .get_range(&bucket, &k, 0..info.size, Some(&info.etag))
                .unwrap(),
            expected
        );
        let _ = e2;
    }

    #[test]
    fn s3_rules_are_enforced() {
        let (_dir, store, bucket) = store();
        let k = key("x.bin");
        let missing: BucketName = "no-such-bucket".parse().unwrap();
        assert!(matches!(
            store.create_multipart(&missing, &k, &BTreeMap::new(), &[]),
            Err(Error::NotFound(_))
        ));
        let big = BTreeMap::from([("k".to_owned(), "v".repeat(2048))]);
        assert!(
            store
                .create_multipart(&bucket, &k, &big, &[])
                .unwrap_err()
                .to_string()
                .contains("2048")
        );
        let non_ascii = BTreeMap::from([("k".to_owned(), "é".to_owned())]);
        assert!(
            store
                .create_multipart(&bucket, &k, &non_ascii, &[])
                .unwrap_err()
                .to_string()
                .contains("RFC 2047")
        );
        let eleven: Vec<Tag> = (0..11)
            .map(|i| format!("k{i}=v").parse().unwrap())
            .collect();
        assert!(
            store
                .create_multipart(&bucket, &k, &BTreeMap::new(), &eleven)
                .is_err()
        );

        let upload = store
            .create_multipart(&bucket, &k, &BTreeMap::new(), &[])
            .unwrap();
        assert!(put_part(&store, &bucket, &k, &upload, 0, b"x").is_err());
        assert!(put_part(&store, &bucket, &k, &upload, 10_001, b"x").is_err());
        let small = put_part(&store, &bucket, &k, &upload, 1, &[0u8; 100]).unwrap();
        let last = put_part(&store, &bucket, &k, &upload, 2, &[1u8; 100]).unwrap();
        let parts = [
            CompletedPart {
                part_number: 1,
                etag: small.clone(),
            },
            CompletedPart {
                part_number: 2,
                etag: last.clone(),
            },
        ];
        let err = store
            .complete_multipart(&bucket, &k, &upload, &parts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("EntityTooSmall"), "{err}");
        let wrong_etag = [CompletedPart {
            part_number: 1,
            etag: last.clone(),
        }];
        assert!(
            store
                .complete_multipart(&bucket, &k, &upload, &wrong_etag)
                .unwrap_err()
                .to_string()
                .contains("InvalidPart")
        );
        let reversed = [parts[1].clone(), parts[0].clone()];
        assert!(
            store
                .complete_multipart(&bucket, &k, &upload, &reversed)
                .is_err()
        );
        assert!(
            store
                .complete_multipart(&bucket, &key("other.bin"), &upload, &parts[1..])
                .is_err()
        );
        assert_eq!(
            store.head_object(&bucket, &k).unwrap(),
            None,
            "failed completions publish nothing"
        );

        store.abort_multipart(&bucket, &k, &upload).unwrap();
        assert!(store.list_multipart_uploads(&bucket).unwrap().is_empty());
        assert!(matches!(
            put_part(&store, &bucket, &k, &upload, 1, b"x"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            store.abort_multipart(&bucket, &k, "../../etc"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            store.open_object(&bucket, &k),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn an_archive_uploaded_as_parts_in_any_order_reads_back() {
        use amistore_core::archive::{
            ArchiveIndex, ArchivePlan, BlockSource, DiskSource, encode_unit,
        };
        use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
        use amistore_core::image::{Architecture, ImageMetadata};

        struct Pattern;
        impl BlockSource for Pattern {
            fn read_blocks(&self, _: usize, first: u64, buf: &mut [u8]) -> Result<()> {
                buf.iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = (first as usize * 7 + i / 4096) as u8);
                Ok(())
            }
        }
        let (_dir, store, bucket) = store();
        let image = ImageMetadata::minimal(
            "parts".parse().unwrap(),
            Architecture::Arm64,
            "/dev/xvda".parse().unwrap(),
        );
        let disk = DiskSource {
            device_name: "/dev/xvda".parse().unwrap(),
            snapshot_id: None,
            volume_size: 12 * BLOCK_SIZE,
            present: BlockRanges::from_unsorted(vec![0..5, 8..12]),
            tags: vec![],
        };
        let plan =
            ArchivePlan::with_min_unit_blocks(image, vec![disk], OffsetDateTime::UNIX_EPOCH, 2)
                .unwrap()
                .with_min_part_size(1024);
        let k = key("ami-0123456789abcdef0.bin");
        let upload = store
            .create_multipart(&bucket, &k, &BTreeMap::new(), &[])
            .unwrap();
        let mut parts = Vec::new();
        let mut records = Vec::new();
        for unit in (0..plan.units.len()).rev() {
            let (bytes, record) =
                encode_unit(&plan, unit, &Pattern, 1, Vec::new(), &mut |_| {}).unwrap();
            let part_number = unit as u32 + 1;
            parts.push(CompletedPart {
                part_number,
                etag: put_part(&store, &bucket, &k, &upload, part_number, &bytes).unwrap(),
            });
            records.push(record);
        }
        let last = plan.final_part(&records).unwrap();
        let n = plan.units.len() as u32 + 1;
        parts.push(CompletedPart {
            part_number: n,
            etag: put_part(&store, &bucket, &k, &upload, n, &last.bytes).unwrap(),
        });
        parts.sort_by_key(|p| p.part_number);
        store
            .complete_multipart(&bucket, &k, &upload, &parts)
            .unwrap();
        let index = ArchiveIndex::open(&store.open_object(&bucket, &k).unwrap()).unwrap();
        assert_eq!(index.manifest().units.len(), plan.units.len());
        assert!(plan.units.len() >= 3);
    }
}
