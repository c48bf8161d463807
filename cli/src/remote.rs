//! The task commands' remote mode (`--endpoint URL`): the same commands, sent to
//! an amistore server (or any EC2-compatible endpoint) instead of run in this
//! process, signed with the usual AWS credentials for the usual region (see
//! [`crate::credentials`]).

use std::process::ExitCode;
use std::time::Duration;

use amistore_api::client::{
    Answer, ClientCredentials, Endpoint, MAX_CA_BUNDLE_BYTES, Outgoing, call, send,
};
use amistore_api::sigv4::uri_encode;
use amistore_api::xml::{items, text_of};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::progress::Bar;
use crate::task_cmd::{
    CancelArgs, DeregisterArgs, DescribeArgs, RestoreArgs, StoreArgs, quota_json, results_name,
};
use std::path::{Path, PathBuf};

use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::ids::ImageId;
use amistore_core::image::{DeviceName, GIB, ImageSpec};
use amistore_core::ports::{BucketSummary, ObjectSummary};
use amistore_core::storage::{BucketName, ObjectKey};
use amistore_core::task::TaskKind;
use amistore_local::Progress;
use amistore_local::raw_disk::open_image_disks;

/// A server to send the task commands to.
pub struct Remote {
    endpoint: Endpoint,
    credentials: ClientCredentials,
    region: String,
}

impl Remote {
    /// The server at `url`, with credentials and region from the environment;
    /// with `ca_bundle`, trusting only the certificates in that PEM file.
    pub fn new(url: &str, ca_bundle: Option<&Path>) -> Result<Self> {
        let mut endpoint = Endpoint::parse(url).map_err(|e| anyhow!(e))?;
        if let Some(path) = ca_bundle {
            let mut pem = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| {
                    use std::io::Read;
                    f.take(MAX_CA_BUNDLE_BYTES as u64 + 1).read_to_end(&mut pem)
                })
                .with_context(|| format!("reading the CA bundle {}", path.display()))?;
            endpoint = endpoint
                .trusting_only(&pem)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        }
        let (credentials, region) = crate::credentials::caller()?;
        Ok(Self {
            endpoint,
            credentials,
            region,
        })
    }

    fn call(&self, action: &str, params: Vec<(String, String)>) -> Result<String> {
        call(
            &self.endpoint,
            &self.credentials,
            &self.region,
            action,
            &params,
        )
        // A server's error names its code (`AuthFailure: …`), known here or not.
        .map_err(|e| match e.code == "Unavailable" {
            true => anyhow!("{}", e.message),
            false => anyhow!("{e}"),
        })
    }

    /// Sends one request of another of the server's APIs (`s3`, `ebs`).
    pub fn send(&self, request: &Outgoing<'_>) -> Result<Answer> {
        send(&self.endpoint, &self.credentials, &self.region, request)
            .map_err(|e| anyhow!("{}", e.message))
    }

    /// An S3 request; an error answer becomes an error naming S3's code.
    fn s3(&self, method: &str, path: &str, query: &str) -> Result<Answer> {
        let answer = self.send(&Outgoing {
            service: "s3",
            method,
            path,
            query,
            headers: &[],
            body: b"",
        })?;
        if answer.status >= 300 {
            let text = answer.text();
            let doc = roxmltree::Document::parse(&text).ok();
            let field = |name: &str| {
                doc.as_ref().and_then(|d| {
                    d.descendants()
                        .find(|n| n.has_tag_name(name))
                        .and_then(|n| n.text())
                        .map(str::to_owned)
                })
            };
            bail!(
                "{}: {}",
                field("Code").unwrap_or_else(|| format!("HTTP {}", answer.status)),
                field("Message").unwrap_or(text)
            );
        }
        Ok(answer)
    }

    /// CreateBucket, for the caller's account.
    pub fn create_bucket(&self, bucket: &BucketName) -> Result<()> {
        self.s3("PUT", &format!("/{bucket}"), "").map(|_| ())
    }

    /// ListBuckets.
    pub fn list_buckets(&self) -> Result<Vec<BucketSummary>> {
        let answer = self.s3("GET", "/", "")?;
        let text = answer.text();
        let doc = roxmltree::Document::parse(&text).context("the bucket list is not XML")?;
        doc.descendants()
            .filter(|n| n.has_tag_name("Bucket"))
            .map(|b| {
                let field = |name: &str| child_text(&b, name).unwrap_or_default();
                Ok(BucketSummary {
                    name: field("Name").parse()?,
                    creation_date: field("CreationDate"),
                })
            })
            .collect()
    }

    /// ListObjectsV2 under `prefix`, every page.
    pub fn list_objects(&self, bucket: &BucketName, prefix: &str) -> Result<Vec<ObjectSummary>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(t) = &token {
                query.push(("continuation-token", t.clone()));
            }
            let query = query
                .iter()
                .map(|(k, v)| format!("{k}={}", uri_encode(v, false)))
                .collect::<Vec<_>>()
                .join("&");
            let text = self.s3("GET", &format!("/{bucket}"), &query)?.text();
            let doc = roxmltree::Document::parse(&text).context("the object list is not XML")?;
            let root = doc.root_element();
            for c in root.children().filter(|n| n.has_tag_name("Contents")) {
                let field = |name: &str| child_text(&c, name).unwrap_or_default();
                all.push(ObjectSummary {
                    key: field("Key").parse()?,
                    size: field("Size").parse().unwrap_or_default(),
                    last_modified: field("LastModified"),
                    etag: field("ETag"),
                });
            }
            match child_text(&root, "NextContinuationToken") {
                Some(t) if child_text(&root, "IsTruncated").as_deref() == Some("true") => {
                    token = Some(t);
                }
                _ => return Ok(all),
            }
        }
    }

    /// DeleteObject.
    pub fn delete_object(&self, bucket: &BucketName, key: &ObjectKey) -> Result<()> {
        let path: String = key
            .segments()
            .map(|s| uri_encode(s, false))
            .collect::<Vec<_>>()
            .join("/");
        self.s3("DELETE", &format!("/{bucket}/{path}"), "")
            .map(|_| ())
    }

    /// The DescribeImages answer for the caller's images (or one image).
    pub fn describe_images(&self, image: Option<&ImageId>) -> Result<String> {
        let mut params = vec![("Owner.1".to_owned(), "self".to_owned())];
        if let Some(id) = image {
            params.push(("ImageId.1".to_owned(), id.to_string()));
        }
        self.call("DescribeImages", params)
    }

    /// An EBS direct API request; an error answer becomes an error naming
    /// EBS's type and message.
    fn ebs(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer> {
        let answer = self.send(&Outgoing {
            service: "ebs",
            method,
            path,
            query,
            headers,
            body,
        })?;
        if answer.status >= 300 {
            let detail: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            bail!(
                "{}: {}",
                answer.header("x-amzn-ErrorType").unwrap_or("error"),
                detail["message"].as_str().unwrap_or(&answer.text())
            );
        }
        Ok(answer)
    }

    /// Imports raw disks as an image of the caller's through the EBS direct
    /// APIs (each present block written with its checksum, each snapshot
    /// completed with the aggregated one) and RegisterImage.
    pub fn import_image(
        &self,
        spec: &ImageSpec,
        disks: &[(DeviceName, PathBuf)],
        quiet: bool,
    ) -> Result<ImageId> {
        use sha2::{Digest, Sha256};
        let (metadata, opened) = open_image_disks(spec, disks)?;
        let total: u64 = opened.iter().map(|(_, d)| d.present.present_count()).sum();
        let mut bar = Bar::new("importing", quiet);
        bar.begin(total * BLOCK_SIZE);
        let token = amistore_core::ids::unique_token();
        let mut snapshots = Vec::new();
        for (i, (device, disk)) in opened.iter().enumerate() {
            let gib = disk.size.div_ceil(GIB).max(1);
            let started = self.ebs(
                "POST",
                "/snapshots",
                "",
                &[("content-type".into(), "application/json".into())],
                json!({"VolumeSize": gib, "ClientToken": format!("{token}-{i}"),
                       "Description": format!("{device} of {}", metadata.name.as_str())})
                .to_string()
                .as_bytes(),
            )?;
            let started: Value = serde_json::from_slice(&started.body)?;
            let id = started["SnapshotId"]
                .as_str()
                .context("StartSnapshot answered no SnapshotId")?
                .to_owned();
            let file = std::fs::File::open(&disk.path)
                .with_context(|| format!("opening {}", disk.path.display()))?;
            let mut digests = Vec::new();
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            for run in disk.present.runs() {
                for index in run.clone() {
                    std::os::unix::fs::FileExt::read_exact_at(
                        &file,
                        &mut block,
                        index * BLOCK_SIZE,
                    )
                    .with_context(|| format!("reading {}", disk.path.display()))?;
                    let digest = Sha256::digest(&block);
                    self.ebs(
                        "PUT",
                        &format!("/snapshots/{id}/blocks/{index}"),
                        "",
                        &[
                            ("x-amz-data-length".into(), BLOCK_SIZE.to_string()),
                            ("x-amz-checksum".into(), b64(&digest)),
                            ("x-amz-checksum-algorithm".into(), "SHA256".into()),
                            ("content-type".into(), "application/octet-stream".into()),
                        ],
                        &block,
                    )?;
                    digests.extend_from_slice(&digest);
                    bar.advance(BLOCK_SIZE);
                }
            }
            self.ebs(
                "POST",
                &format!("/snapshots/completion/{id}"),
                "",
                &[
                    (
                        "x-amz-changedblockscount".into(),
                        disk.present.present_count().to_string(),
                    ),
                    ("x-amz-checksum".into(), b64(&Sha256::digest(&digests))),
                    ("x-amz-checksum-algorithm".into(), "SHA256".into()),
                    ("x-amz-checksum-aggregation-method".into(), "LINEAR".into()),
                ],
                b"",
            )?;
            snapshots.push((device.clone(), id));
        }
        drop(bar);
        let m = &metadata;
        let mut params = vec![
            ("Name".to_owned(), m.name.as_str().to_owned()),
            (
                "Architecture".to_owned(),
                m.architecture.as_str().to_owned(),
            ),
            (
                "RootDeviceName".to_owned(),
                m.root_device_name.as_str().to_owned(),
            ),
            (
                "VirtualizationType".to_owned(),
                m.virtualization_type.as_str().to_owned(),
            ),
            ("EnaSupport".to_owned(), m.ena_support.to_string()),
        ];
        if let Some(d) = &m.description {
            params.push(("Description".into(), d.clone()));
        }
        if let Some(b) = m.boot_mode {
            params.push(("BootMode".into(), b.as_str().into()));
        }
        for (n, (device, id)) in snapshots.iter().enumerate() {
            let p = format!("BlockDeviceMapping.{}", n + 1);
            params.push((format!("{p}.DeviceName"), device.as_str().to_owned()));
            params.push((format!("{p}.Ebs.SnapshotId"), id.clone()));
            params.push((format!("{p}.Ebs.VolumeType"), "gp3".into()));
            params.push((format!("{p}.Ebs.DeleteOnTermination"), "true".into()));
        }
        if !m.tags.is_empty() {
            params.push(("TagSpecification.1.ResourceType".into(), "image".into()));
            for (n, t) in m.tags.iter().enumerate() {
                let p = format!("TagSpecification.1.Tag.{}", n + 1);
                params.push((format!("{p}.Key"), t.key().to_owned()));
                params.push((format!("{p}.Value"), t.value().to_owned()));
            }
        }
        let doc = self.call("RegisterImage", params)?;
        Ok(text_of(&doc, "imageId")
            .context("RegisterImage answered no imageId")?
            .parse()?)
    }

    /// Writes an image's disks into `dir` as sparse raw files
    /// (`disk<i>-<device>.raw`), read with ListSnapshotBlocks and
    /// GetSnapshotBlock (each block's checksum checked). A disk is its
    /// volume's whole-GiB size, the EBS direct APIs' unit.
    pub fn export_image(
        &self,
        image: &ImageId,
        dir: &Path,
        force: bool,
        quiet: bool,
    ) -> Result<Vec<PathBuf>> {
        use sha2::{Digest, Sha256};
        let described = crate::output::ec2_json(&self.describe_images(Some(image))?)?;
        let found = &described["Images"][0];
        if found["State"] != "available" {
            bail!("image {image} is {}, not available", found["State"]);
        }
        let disks: Vec<(String, String)> = found["BlockDeviceMappings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let device = m["DeviceName"].as_str()?;
                let base = device.rsplit('/').next().unwrap_or(device).to_owned();
                Some((base, m["Ebs"]["SnapshotId"].as_str()?.to_owned()))
            })
            .collect();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bar = Bar::new("exporting", quiet);
        bar.begin(0);
        let mut written = Vec::new();
        for (i, (device, snapshot)) in disks.iter().enumerate() {
            let target = dir.join(format!("disk{i}-{device}.raw"));
            if target.exists() && !force {
                bail!("{} exists; pass --force to replace it", target.display());
            }
            let tmp = dir.join(format!(".disk{i}.{}.partial", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let exported = (|| -> Result<()> {
                let out = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                let mut page = String::new();
                loop {
                    let listed = self.ebs(
                        "GET",
                        &format!("/snapshots/{snapshot}/blocks"),
                        &page,
                        &[],
                        b"",
                    )?;
                    let listed: Value = serde_json::from_slice(&listed.body)?;
                    let gib = listed["VolumeSize"].as_u64().context("no VolumeSize")?;
                    out.set_len(gib * GIB)?;
                    let blocks = listed["Blocks"].as_array().cloned().unwrap_or_default();
                    bar.handle().inc_length(blocks.len() as u64 * BLOCK_SIZE);
                    for b in blocks {
                        let index = b["BlockIndex"].as_u64().context("no BlockIndex")?;
                        let token = b["BlockToken"].as_str().context("no BlockToken")?;
                        let got = self.ebs(
                            "GET",
                            &format!("/snapshots/{snapshot}/blocks/{index}"),
                            &format!("blockToken={}", uri_encode(token, false)),
                            &[],
                            b"",
                        )?;
                        let sum = b64(&Sha256::digest(&got.body));
                        if got.header("x-amz-checksum") != Some(sum.as_str())
                            || got.body.len() as u64 != BLOCK_SIZE
                        {
                            bail!("block {index} of {snapshot} does not match its checksum");
                        }
                        std::os::unix::fs::FileExt::write_all_at(
                            &out,
                            &got.body,
                            index * BLOCK_SIZE,
                        )?;
                        bar.advance(BLOCK_SIZE);
                    }
                    match listed["NextToken"].as_str() {
                        Some(next) => page = format!("pageToken={}", uri_encode(next, false)),
                        None => break,
                    }
                }
                out.sync_all()?;
                std::fs::rename(&tmp, &target)
                    .with_context(|| format!("renaming to {}", target.display()))?;
                Ok(())
            })();
            if let Err(e) = exported {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            written.push(target);
        }
        drop(bar);
        Ok(written)
    }

    /// Follows the task of `image` through `describe` until it ends, with a
    /// bar: bytes moved and their rate when the server reports them
    /// (`bytesMoved`/`bytesTotal`, amistore's extension), else the
    /// percentage; fails if the task failed. With bytes, prints what was
    /// moved and how fast once it has ended (unless quiet).
    fn wait(&self, kind: &Followed, image: &str, bar: &mut Bar, quiet: bool) -> Result<()> {
        let Followed {
            describe,
            list,
            state_tag,
            reason_tag,
        } = *kind;
        bar.begin(100);
        let started = std::time::Instant::now();
        let mut shown = 0u64;
        let mut bytes: Option<(u64, u64)> = None;
        loop {
            let doc = self.call(describe, vec![("ImageId.1".into(), image.into())])?;
            let item = items(&doc, list)
                .first()
                .map(|s| s.to_string())
                .ok_or_else(|| anyhow!("the server shows no task for {image}"))?;
            let number = |tag: &str| text_of(&item, tag).and_then(|p| p.parse::<u64>().ok());
            match (number("bytesMoved"), number("bytesTotal")) {
                (Some(moved), Some(total)) => {
                    if bytes.is_none() {
                        bar.show_bytes(total);
                    }
                    bar.set_position(moved);
                    bytes = Some((moved, total));
                }
                _ if bytes.is_none() => {
                    let percent = number("progressPercentage").unwrap_or(0);
                    bar.advance(percent.saturating_sub(shown));
                    shown = shown.max(percent);
                }
                // The task ended: its counts went with it.
                _ => {}
            }
            match text_of(&item, state_tag).as_deref() {
                Some("Completed") => {
                    if let Some((_, total)) = bytes.filter(|_| !quiet) {
                        let secs = started.elapsed().as_secs_f64().max(0.001);
                        eprintln!(
                            "moved {} in {secs:.1} s ({}/s)",
                            human_bytes(total),
                            human_bytes((total as f64 / secs) as u64)
                        );
                    }
                    return Ok(());
                }
                Some("Failed") => bail!(
                    "the task failed: {}",
                    text_of(&item, reason_tag).unwrap_or_else(|| "no reason given".into())
                ),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    pub fn store(&self, args: StoreArgs, wait: bool, quiet: bool) -> Result<ExitCode> {
        let mut params = vec![
            ("ImageId".to_owned(), args.image_id.to_string()),
            ("Bucket".to_owned(), args.bucket.to_string()),
        ];
        for (i, tag) in args.object_tags.iter().enumerate() {
            params.push((format!("S3ObjectTag.{}.Key", i + 1), tag.key().to_owned()));
            params.push((
                format!("S3ObjectTag.{}.Value", i + 1),
                tag.value().to_owned(),
            ));
        }
        let doc = self.call("CreateStoreImageTask", params)?;
        let key = text_of(&doc, "objectKey").context("the answer has no objectKey")?;
        if wait {
            let mut bar = Bar::percent("storing", quiet);
            self.wait(&STORE, args.image_id.as_str(), &mut bar, quiet)?;
        }
        println!("{key}");
        Ok(ExitCode::SUCCESS)
    }

    pub fn restore(&self, args: RestoreArgs, wait: bool, quiet: bool) -> Result<ExitCode> {
        let mut params = vec![
            ("Bucket".to_owned(), args.bucket.to_string()),
            ("ObjectKey".to_owned(), args.object_key.to_string()),
        ];
        if let Some(name) = &args.name {
            params.push(("Name".into(), name.to_string()));
        }
        let mut n = 0;
        for (resource, for_image) in [("image", true), ("snapshot", false)] {
            let tags: Vec<_> = args
                .tags
                .iter()
                .filter(|(i, _)| *i == for_image)
                .map(|(_, t)| t)
                .collect();
            if tags.is_empty() {
                continue;
            }
            n += 1;
            params.push((
                format!("TagSpecification.{n}.ResourceType"),
                resource.into(),
            ));
            for (i, tag) in tags.iter().enumerate() {
                params.push((
                    format!("TagSpecification.{n}.Tag.{}.Key", i + 1),
                    tag.key().into(),
                ));
                params.push((
                    format!("TagSpecification.{n}.Tag.{}.Value", i + 1),
                    tag.value().into(),
                ));
            }
        }
        let doc = self.call("CreateRestoreImageTask", params)?;
        let image = text_of(&doc, "imageId").context("the answer has no imageId")?;
        if wait {
            let mut bar = Bar::percent("restoring", quiet);
            self.wait(&RESTORE, &image, &mut bar, quiet)?;
        }
        println!("{image}");
        Ok(ExitCode::SUCCESS)
    }

    /// DescribeStoreImageTasks or DescribeRestoreImageTasks, printed as the
    /// AWS CLI prints them.
    pub fn describe_tasks(&self, args: DescribeArgs, kind: TaskKind) -> Result<ExitCode> {
        let mut params = Vec::new();
        for (i, id) in args.image_ids.iter().enumerate() {
            params.push((format!("ImageId.{}", i + 1), id.to_string()));
        }
        for (i, (name, values)) in args.filters.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), name.clone()));
            for (j, v) in values.iter().enumerate() {
                params.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
            }
        }
        if let Some(m) = args.max_results {
            params.push(("MaxResults".into(), m.to_string()));
        }
        if let Some(t) = &args.next_token {
            params.push(("NextToken".into(), t.clone()));
        }
        let (action, list) = match kind {
            TaskKind::Store => ("DescribeStoreImageTasks", "storeImageTaskResultSet"),
            TaskKind::Restore => ("DescribeRestoreImageTasks", "restoreImageTaskResultSet"),
        };
        let doc = self.call(action, params)?;
        let results: Vec<Value> = items(&doc, list)
            .iter()
            .map(|item| task_from_xml(item, kind))
            .collect();
        let mut out = json!({ results_name(kind): results });
        if let Some(t) = text_of(&doc, "nextToken") {
            out["NextToken"] = json!(t);
        }
        crate::output::print_json(&out)?;
        Ok(ExitCode::SUCCESS)
    }

    /// CancelStoreImageTask; prints the task.
    pub fn cancel_store(&self, args: CancelArgs) -> Result<ExitCode> {
        let mut params = vec![("ImageId".to_owned(), args.image_id.to_string())];
        if let Some(b) = &args.bucket {
            params.push(("Bucket".into(), b.to_string()));
        }
        let doc = self.call("CancelStoreImageTask", params)?;
        let item = items(&doc, "storeImageTaskResult")
            .first()
            .map(|s| s.to_string())
            .unwrap_or(doc);
        crate::output::print_json(
            &json!({ "StoreImageTaskResult": task_from_xml(&item, TaskKind::Store) }),
        )?;
        Ok(ExitCode::SUCCESS)
    }

    /// DescribeTaskQuotas (amistore's extension).
    pub fn describe_quotas(&self) -> Result<ExitCode> {
        let doc = self.call("DescribeTaskQuotas", vec![])?;
        let quotas: Vec<Value> = items(&doc, "taskQuotaSet")
            .iter()
            .map(|item| {
                let number = |tag: &str| {
                    text_of(item, tag)
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let kind = match text_of(item, "taskType").as_deref() {
                    Some("restore") => TaskKind::Restore,
                    _ => TaskKind::Store,
                };
                quota_json(kind, number("inProgressGiB"), number("limitGiB"))
            })
            .collect();
        crate::output::print_json(&json!({ "TaskQuotas": quotas }))?;
        Ok(ExitCode::SUCCESS)
    }

    /// DeregisterImage.
    pub fn deregister(&self, args: DeregisterArgs) -> Result<ExitCode> {
        self.call(
            "DeregisterImage",
            vec![("ImageId".into(), args.image_id.to_string())],
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A describe item (or a cancel's result) as the AWS CLI prints it.
fn task_from_xml(item: &str, kind: TaskKind) -> Value {
    let (image, key, state, reason) = match kind {
        TaskKind::Store => (
            "amiId",
            "s3objectKey",
            "storeTaskState",
            "storeTaskFailureReason",
        ),
        TaskKind::Restore => (
            "imageId",
            "objectKey",
            "restoreTaskState",
            "restoreTaskFailureReason",
        ),
    };
    let field = |tag: &str| text_of(item, tag);
    let upper = |tag: &str| {
        let mut c = tag.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    let mut v = json!({
        upper(image): field(image),
        "TaskStartTime": field("taskStartTime"),
        "Bucket": field("bucket"),
        upper(key): field(key),
        "ProgressPercentage": field("progressPercentage").and_then(|p| p.parse::<u64>().ok()),
        upper(state): field(state),
    });
    if let Some(r) = field(reason) {
        v[upper(reason)] = json!(r);
    }
    v
}

fn child_text(node: &roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name(name))
        .and_then(|n| n.text())
        .map(str::to_owned)
}

/// Base64, as the EBS direct APIs' checksums are written.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// How a kind of task is followed: its describe action and the names in its
/// answer.
#[derive(Clone, Copy)]
struct Followed {
    describe: &'static str,
    list: &'static str,
    state_tag: &'static str,
    reason_tag: &'static str,
}

const STORE: Followed = Followed {
    describe: "DescribeStoreImageTasks",
    list: "storeImageTaskResultSet",
    state_tag: "storeTaskState",
    reason_tag: "storeTaskFailureReason",
};

const RESTORE: Followed = Followed {
    describe: "DescribeRestoreImageTasks",
    list: "restoreImageTaskResultSet",
    state_tag: "restoreTaskState",
    reason_tag: "restoreTaskFailureReason",
};
