//! [`ObjectStore`] over S3: multipart uploads with user metadata, object tags
//! and CRC32C part checksums, ranged GETs, and aborts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use amistore_core::ids::AccountId;
use amistore_core::image::Tag;
use amistore_core::ports::{CompletedPart, ObjectInfo, ObjectStore};
use amistore_core::storage::{BucketName, ObjectKey};
use amistore_core::{Detail, Error, Result};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart as S3Part};

use crate::bridge::Bridge;
use crate::error::sdk;
use aws_sdk_s3::error::ProvideErrorMetadata;

/// What separates the ETag from the part's checksum in the receipt
/// [`ObjectStore::upload_part`] returns: S3 wants both back at completion.
const RECEIPT_CHECKSUM: &str = " crc32c=";

/// S3 as the engine's object store.
#[derive(Clone, Debug)]
pub struct S3ObjectStore {
    client: Client,
    bridge: Bridge,
}

impl S3ObjectStore {
    /// An object store over `client`.
    pub fn new(client: Client, bridge: Bridge) -> Self {
        Self { client, bridge }
    }
}

/// `key=value&…`, form-encoded, as `x-amz-tagging` wants.
fn tagging_header(tags: &[Tag]) -> String {
    tags.iter()
        .map(|t| format!("{}={}", form_encode(t.key()), form_encode(t.value())))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn split_receipt(receipt: &str) -> (&str, Option<&str>) {
    match receipt.split_once(RECEIPT_CHECKSUM) {
        Some((etag, sum)) => (etag, Some(sum)),
        None => (receipt, None),
    }
}

impl ObjectStore for S3ObjectStore {
    fn bucket_exists(&self, account: &AccountId, bucket: &BucketName) -> Result<bool> {
        let call = self
            .client
            .head_bucket()
            .bucket(bucket.as_str())
            .expected_bucket_owner(account.as_str())
            .send();
        match self.bridge.run(call) {
            Ok(_) => Ok(true),
            // 404: no such bucket; 403: not the caller's (ExpectedBucketOwner).
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 403 | 404)) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk(format_args!("checking bucket {bucket}"), e)),
        }
    }

    fn create_multipart(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        metadata: &BTreeMap<String, String>,
        tags: &[Tag],
    ) -> Result<String> {
        let mut call = self
            .client
            .create_multipart_upload()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .set_metadata(Some(
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            ))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C);
        if !tags.is_empty() {
            call = call.tagging(tagging_header(tags));
        }
        let out = self.bridge.run(call.send()).map_err(|e| {
            sdk(
                format_args!("starting the upload of s3://{bucket}/{key}"),
                e,
            )
        })?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::Transient("CreateMultipartUpload returned no upload id".into()))
    }

    fn upload_part(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        body: &Path,
    ) -> Result<String> {
        let out = self.bridge.run(async {
            let stream = ByteStream::from_path(body).await.map_err(|e| {
                Error::Transient(Detail::because(format!("reading {}", body.display()), e))
            })?;
            self.client
                .upload_part()
                .bucket(bucket.as_str())
                .key(key.as_str())
                .upload_id(upload_id)
                .part_number(part_number as i32)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .body(stream)
                .send()
                .await
                .map_err(|e| sdk(format_args!("uploading part {part_number} of {key}"), e))
        })?;
        let etag = out.e_tag().ok_or_else(|| {
            Error::Transient(format!("part {part_number} of {key}: no ETag").into())
        })?;
        Ok(match out.checksum_crc32_c() {
            Some(sum) => format!("{etag}{RECEIPT_CHECKSUM}{sum}"),
            None => etag.to_owned(),
        })
    }

    fn complete_multipart(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let parts = parts
            .iter()
            .map(|p| {
                let (etag, sum) = split_receipt(&p.etag);
                S3Part::builder()
                    .part_number(p.part_number as i32)
                    .e_tag(etag)
                    .set_checksum_crc32_c(sum.map(str::to_owned))
                    .build()
            })
            .collect();
        let call = self
            .client
            .complete_multipart_upload()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send();
        self.bridge.run(call).map(|_| ()).map_err(|e| {
            sdk(
                format_args!("completing the upload of s3://{bucket}/{key}"),
                e,
            )
        })
    }

    fn abort_multipart(&self, bucket: &BucketName, key: &ObjectKey, upload_id: &str) -> Result<()> {
        let call = self
            .client
            .abort_multipart_upload()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .upload_id(upload_id)
            .send();
        self.bridge
            .run(call)
            .map(|_| ())
            .map_err(|e| sdk(format_args!("aborting upload {upload_id} of {key}"), e))
    }

    fn list_multipart_uploads(&self, bucket: &BucketName) -> Result<Vec<(String, ObjectKey)>> {
        let mut found = Vec::new();
        let (mut key_marker, mut upload_marker) = (None::<String>, None::<String>);
        loop {
            let call = self
                .client
                .list_multipart_uploads()
                .bucket(bucket.as_str())
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send();
            let page = self
                .bridge
                .run(call)
                .map_err(|e| sdk(format_args!("listing the uploads in {bucket}"), e))?;
            for upload in page.uploads() {
                if let (Some(id), Some(key)) = (upload.upload_id(), upload.key()) {
                    // A key amistore cannot name is not one of its uploads.
                    if let Ok(key) = key.parse() {
                        found.push((id.to_owned(), key));
                    }
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(found);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_marker.is_none() {
                return Ok(found);
            }
        }
    }

    fn put_object(&self, bucket: &BucketName, key: &ObjectKey, body: &[u8]) -> Result<()> {
        let call = self
            .client
            .put_object()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .body(ByteStream::from(body.to_vec()))
            .send();
        self.bridge
            .run(call)
            .map(|_| ())
            .map_err(|e| sdk(format_args!("writing s3://{bucket}/{key}"), e))
    }

    fn delete_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<()> {
        let call = self
            .client
            .delete_object()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .send();
        self.bridge
            .run(call)
            .map(|_| ())
            .map_err(|e| sdk(format_args!("deleting s3://{bucket}/{key}"), e))
    }

    fn head_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<Option<ObjectInfo>> {
        let head = self
            .client
            .head_object()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .send();
        let head = match self.bridge.run(head) {
            Ok(head) => head,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                return Ok(None);
            }
            Err(e) => return Err(sdk(format_args!("looking up s3://{bucket}/{key}"), e)),
        };
        let tagging = self
            .client
            .get_object_tagging()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .send();
        let tags = match self.bridge.run(tagging) {
            Ok(out) => out
                .tag_set()
                .iter()
                .map(|t| Tag::new(t.key(), t.value()))
                .collect::<Result<Vec<_>>>()?,
            Err(e) if e.code() == Some("NoSuchKey") => return Ok(None),
            Err(e) => return Err(sdk(format_args!("reading the tags of {key}"), e)),
        };
        Ok(Some(ObjectInfo {
            size: head.content_length().unwrap_or(0).max(0) as u64,
            metadata: head
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            tags,
            last_modified: head
                .last_modified()
                .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
                .unwrap_or_default(),
            etag: head.e_tag().unwrap_or_default().to_owned(),
        }))
    }

    fn get_range(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let want = range.end - range.start;
        let bytes = self.bridge.run(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket.as_str())
                .key(key.as_str())
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .set_if_match(if_match.map(str::to_owned))
                .send()
                .await
                .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                    Some(412) => Error::IncorrectState(
                        format!(
                            "s3://{bucket}/{key} was replaced (it no longer has ETag {})",
                            if_match.unwrap_or_default()
                        )
                        .into(),
                    ),
                    _ => sdk(format_args!("reading {key} at {range:?}"), e),
                })?;
            out.body
                .collect()
                .await
                .map(|b| b.into_bytes())
                .map_err(|e| {
                    Error::Transient(Detail::because(format!("reading {key} at {range:?}"), e))
                })
        })?;
        if bytes.len() as u64 != want {
            return Err(Error::Truncated(
                format!(
                    "s3://{bucket}/{key} returned {} bytes for the {want}-byte range {range:?}",
                    bytes.len()
                )
                .into(),
            ));
        }
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_form_encoded_and_receipts_split() {
        let tags = vec![
            Tag::new("a b", "x&y=z").unwrap(),
            Tag::new("plain", "").unwrap(),
        ];
        assert_eq!(tagging_header(&tags), "a%20b=x%26y%3Dz&plain=");
        assert_eq!(
            split_receipt("\"e1\" crc32c=AAAA"),
            ("\"e1\"", Some("AAAA"))
        );
        assert_eq!(split_receipt("\"e1\""), ("\"e1\"", None));
    }
}
