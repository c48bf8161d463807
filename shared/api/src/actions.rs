//! The actions: each parses its parameters (strictly: an unknown one is an
//! error), answers DryRun without side effects, calls the engine, and writes
//! the response document. The caller's account comes from authentication and
//! scopes everything.
//!
//! EC2's: CreateStoreImageTask, DescribeStoreImageTasks, CreateRestoreImageTask.
//! EC2's DescribeImages, DescribeSnapshots and DeregisterImage, over the
//! caller's images, so that `aws ec2 wait image-available` follows a restore.
//! amistore's extension CancelStoreImageTask: `ImageId` (required) and
//! `Bucket` (optional) name an in-progress store, which ends Failed with reason
//! "cancelled" and leaves no object; the answer is the task as
//! DescribeStoreImageTasks shows it, in a `storeImageTaskResult` element.
//! amistore's extension: DescribeRestoreImageTasks (same request shape as
//! DescribeStoreImageTasks; `restoreImageTaskResultSet` items with `imageId`,
//! `taskStartTime`, `bucket`, `objectKey`, `progressPercentage`,
//! `restoreTaskState` and `restoreTaskFailureReason`).
//! amistore's extension to both describes: an in-progress task this process
//! runs also shows `bytesMoved` and `bytesTotal` (present-block bytes), which
//! the AWS CLI ignores and `amistore --wait` draws as bytes and a rate.

use amistore_core::Error as CoreError;
use amistore_core::engine::describe::{DescribeQuery, describe};
use amistore_core::engine::intake::{RestoreRequest, StoreRequest};
use amistore_core::engine::{Engine, now_ms};
use amistore_core::ids::{AccountId, ImageId, ResourceState};
use amistore_core::image::{ImageName, Tag};
use amistore_core::storage::{BucketName, BucketPath, ObjectKey};
use amistore_core::task::{Task, TaskKind, iso8601_millis};

use crate::ApiError;
use crate::query::{Params, VERSION};
use crate::xml::Body;

fn image_id(raw: &str) -> Result<ImageId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            "InvalidAMIID.Malformed",
            format!("Invalid id: \"{raw}\" (expecting \"ami-...\")"),
        )
    })
}

fn parsed<T: std::str::FromStr<Err = CoreError>>(name: &str, raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|e: CoreError| ApiError::invalid(name, e))
}

/// Tags from `prefix.N.Key` / `prefix.N.Value` groups.
fn tags(groups: Vec<Params>) -> Result<Vec<Tag>, ApiError> {
    groups
        .into_iter()
        .map(|mut g| {
            let key = g.req("Key")?;
            let value = g.opt("Value").unwrap_or_default();
            g.finish()?;
            Tag::new(key, value).map_err(|e| ApiError::new("InvalidParameterValue", e.to_string()))
        })
        .collect()
}

/// Handles one request for `account`; returns the response document.
pub fn handle(
    engine: &Engine,
    account: &AccountId,
    mut params: Params,
) -> Result<(String, Body), ApiError> {
    let action = params
        .opt("Action")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                "MissingAction",
                "The request must contain the parameter Action",
            )
        })?;
    match params.opt("Version") {
        Some(v) if v == VERSION => {}
        Some(v) => {
            return Err(ApiError::invalid(
                "Version",
                format!("{v:?} is not {VERSION}"),
            ));
        }
        None => return Err(ApiError::missing("Version")),
    }
    let body = match action.as_str() {
        "CreateStoreImageTask" => create_store(engine, account, params)?,
        "DescribeStoreImageTasks" => describe_tasks(engine, account, params, TaskKind::Store)?,
        "CreateRestoreImageTask" => create_restore(engine, account, params)?,
        "DescribeRestoreImageTasks" => describe_tasks(engine, account, params, TaskKind::Restore)?,
        "DescribeImages" => describe_images(engine, account, params)?,
        "CancelStoreImageTask" => cancel_store(engine, account, params)?,
        "DescribeSnapshots" => describe_snapshots(engine, account, params)?,
        "DeregisterImage" => deregister_image(engine, account, params)?,
        "RegisterImage" => register_image(engine, account, params)?,
        "DescribeTaskQuotas" => describe_task_quotas(engine, account, params)?,
        other => {
            return Err(ApiError::new(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ));
        }
    };
    Ok((action, body))
}

/// Ends parsing: unknown parameters are errors; then DryRun answers.
fn finish(mut params: Params) -> Result<(), ApiError> {
    let dry_run = params.opt_bool("DryRun")?.unwrap_or(false);
    params.finish()?;
    if dry_run {
        return Err(ApiError::dry_run());
    }
    Ok(())
}

fn create_store(engine: &Engine, account: &AccountId, mut p: Params) -> Result<Body, ApiError> {
    let id = image_id(&p.req("ImageId")?)?;
    let bucket: BucketPath = parsed("Bucket", &p.req("Bucket")?)?;
    let object_tags = tags(p.groups("S3ObjectTag")?)?;
    finish(p)?;
    // Which parameter an unknown resource came from decides the code.
    if let Err(CoreError::NotFound(_)) = engine.catalog.describe_image(account, &id) {
        return Err(ApiError::new(
            "InvalidAMIID.NotFound",
            format!("The image id '[{id}]' does not exist"),
        ));
    }
    let task = engine.create_store_task(
        account,
        &StoreRequest {
            image_id: id,
            bucket,
            object_tags,
        },
    )?;
    let mut body = Body::new();
    body.text("objectKey", task.key.as_str());
    Ok(body)
}

fn create_restore(engine: &Engine, account: &AccountId, mut p: Params) -> Result<Body, ApiError> {
    let bucket: BucketName = parsed("Bucket", &p.req("Bucket")?)?;
    let key: ObjectKey = parsed("ObjectKey", &p.req("ObjectKey")?)?;
    let name = p
        .opt("Name")
        .map(|n| {
            n.parse::<ImageName>()
                .map_err(|e| ApiError::new("InvalidAMIName.Malformed", e.to_string()))
        })
        .transpose()?;
    let (mut image_tags, mut snapshot_tags) = (Vec::new(), Vec::new());
    for mut spec in p.groups("TagSpecification")? {
        let kind = spec.req("ResourceType")?;
        let list = tags(spec.groups("Tag")?)?;
        spec.finish()?;
        match kind.as_str() {
            "image" => image_tags.extend(list),
            "snapshot" => snapshot_tags.extend(list),
            other => {
                return Err(ApiError::invalid(
                    "TagSpecification.N.ResourceType",
                    format!("{other:?} is not image or snapshot"),
                ));
            }
        }
    }
    finish(p)?;
    let task = engine
        .create_restore_task(
            account,
            &RestoreRequest {
                bucket,
                key,
                name,
                image_tags,
                snapshot_tags,
            },
        )
        .map_err(|e| match e {
            CoreError::AlreadyExists(m) => ApiError::new("InvalidAMIName.Duplicate", m),
            other => other.into(),
        })?;
    let image = task
        .image_id
        .ok_or_else(|| ApiError::new("InternalError", "the restore has no image"))?;
    let mut body = Body::new();
    body.text("imageId", image.as_str());
    Ok(body)
}

fn describe_tasks(
    engine: &Engine,
    account: &AccountId,
    mut p: Params,
    kind: TaskKind,
) -> Result<Body, ApiError> {
    let image_ids = p
        .list("ImageId")?
        .iter()
        .map(|i| image_id(i))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = filters(&mut p)?;
    let query = DescribeQuery {
        image_ids,
        filters,
        max_results: p.opt_u32("MaxResults")?,
        next_token: p.opt("NextToken"),
    };
    finish(p)?;
    let tasks = engine.tasks.list(account, kind, now_ms())?;
    let page = describe(&engine.config.token_key, account, kind, tasks, &query)?;
    // amistore's extension: bytes moved and to move, for the tasks this
    // process runs (a client draws bytes and a rate from them). A total that
    // cannot be worked out just leaves them out.
    let bytes: Vec<Option<(u64, u64)>> = page
        .tasks
        .iter()
        .map(|t| engine.bytes_progress(t).ok().flatten())
        .collect();
    let items: Vec<(&Task, Option<(u64, u64)>)> = page.tasks.iter().zip(bytes).collect();
    let mut body = Body::new();
    match kind {
        TaskKind::Store => body.list("storeImageTaskResultSet", &items, |b, (t, bytes)| {
            task_item(b, t, *bytes, &STORE_ITEM)
        }),
        TaskKind::Restore => body.list("restoreImageTaskResultSet", &items, |b, (t, bytes)| {
            task_item(b, t, *bytes, &RESTORE_ITEM)
        }),
    };
    body.opt("nextToken", page.next_token.as_deref());
    Ok(body)
}

/// A task as a describe item; store and restore items differ in four names.
struct ItemNames {
    image: &'static str,
    key: &'static str,
    state: &'static str,
    reason: &'static str,
}

const STORE_ITEM: ItemNames = ItemNames {
    image: "amiId",
    key: "s3objectKey",
    state: "storeTaskState",
    reason: "storeTaskFailureReason",
};

const RESTORE_ITEM: ItemNames = ItemNames {
    image: "imageId",
    key: "objectKey",
    state: "restoreTaskState",
    reason: "restoreTaskFailureReason",
};

fn task_item(b: &mut Body, t: &Task, bytes: Option<(u64, u64)>, names: &ItemNames) {
    b.opt(names.image, t.image_id.as_ref().map(|i| i.as_str()))
        .text("taskStartTime", &iso8601_millis(t.started_at_ms))
        .text("bucket", t.bucket.as_str())
        .text(names.key, t.key.as_str())
        .number("progressPercentage", u64::from(t.progress_percent()))
        .text(names.state, t.state.as_str())
        .opt(names.reason, t.failure_reason.as_deref());
    if let Some((moved, total)) = bytes {
        b.number("bytesMoved", moved).number("bytesTotal", total);
    }
}

/// amistore's extension: the caller's in-progress quota, per kind of task:
/// `taskQuotaSet` of `taskType` (`store`|`restore`), `inProgressGiB` and
/// `limitGiB` (a task is admitted while in-progress is below the limit).
fn describe_task_quotas(engine: &Engine, account: &AccountId, p: Params) -> Result<Body, ApiError> {
    finish(p)?;
    let mut quotas = Vec::new();
    for kind in [TaskKind::Store, TaskKind::Restore] {
        let used = engine.tasks.in_progress_gib(account, kind)?;
        quotas.push((kind, used, engine.config.limits.for_kind(kind)));
    }
    let mut body = Body::new();
    body.list("taskQuotaSet", &quotas, |b, (kind, used, limit)| {
        b.text("taskType", kind.as_str())
            .number("inProgressGiB", *used)
            .number("limitGiB", *limit);
    });
    Ok(body)
}

fn cancel_store(engine: &Engine, account: &AccountId, mut p: Params) -> Result<Body, ApiError> {
    let id = image_id(&p.req("ImageId")?)?;
    let bucket: Option<BucketName> = p.opt("Bucket").map(|b| parsed("Bucket", &b)).transpose()?;
    finish(p)?;
    let task = engine
        .cancel_store(account, &id, bucket.as_ref())
        .map_err(|e| match e {
            CoreError::NotFound(m) => ApiError::new("IncorrectState", m),
            other => other.into(),
        })?;
    let mut body = Body::new();
    body.element("storeImageTaskResult", |b| {
        task_item(b, &task, None, &STORE_ITEM)
    });
    Ok(body)
}

/// DescribeImages over the caller's images: `ImageId.N`, `Owner.N` (`self` or
/// the caller's account), and the filters `name`, `state` and `tag:KEY`
/// (values ORed, filters ANDed; `*` and `?` wildcards as EC2 allows).
fn describe_images(engine: &Engine, account: &AccountId, mut p: Params) -> Result<Body, ApiError> {
    let ids = p
        .list("ImageId")?
        .iter()
        .map(|i| image_id(i))
        .collect::<Result<Vec<_>, _>>()?;
    let owners = p.list("Owner")?;
    let executable_by = p.list("ExecutableBy")?;
    // No image here is ever deprecated or disabled: both are accepted and
    // change nothing.
    let _ = p.opt_bool("IncludeDeprecated")?;
    let _ = p.opt_bool("IncludeDisabled")?;
    let max_results = page_size(&mut p, 1)?;
    let next_token = p.opt("NextToken");
    let filters = filters_among(&mut p, IMAGE_FILTERS)?;
    finish(p)?;
    let mut images = owned_images(engine, account, &owners)?;
    // An image here can be launched by its owner only.
    if !executable_by.is_empty() && !executable_by.iter().any(|e| is_self(e, account)) {
        images.clear();
    }
    if let Some(missing) = ids
        .iter()
        .find(|id| !images.iter().any(|i| i.image_id == **id))
    {
        return Err(ApiError::new(
            "InvalidAMIID.NotFound",
            format!("The image id '[{missing}]' does not exist"),
        ));
    }
    let mut matching: Vec<_> = images
        .into_iter()
        .filter(|i| ids.is_empty() || ids.contains(&i.image_id))
        .filter(|i| matches_filters(&filters, |name| image_attribute(i, name)))
        .collect();
    matching.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    let (shown, next) = paged(
        engine,
        account,
        "DescribeImages",
        &[
            &ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            &owners,
            &executable_by,
        ],
        &filters,
        matching,
        |i| i.image_id.to_string(),
        max_results,
        next_token.as_deref(),
    )?;
    let mut body = Body::new();
    body.list("imagesSet", &shown, image_item);
    body.opt("nextToken", next.as_deref());
    Ok(body)
}

/// One image as DescribeImages' `imagesSet` item shows it.
fn image_item(b: &mut Body, i: &amistore_core::ports::Image) {
    let m = &i.metadata;
    b.text("imageId", i.image_id.as_str())
        .text("imageState", i.state.as_str())
        .text("imageOwnerId", i.owner_id.as_str())
        .text("creationDate", &with_millis(&i.creation_date))
        .text("isPublic", "false")
        .text("architecture", m.architecture.as_str())
        .text("imageType", "machine")
        .text("name", m.name.as_str())
        .opt("description", m.description.as_deref())
        .text("rootDeviceType", "ebs")
        .text("rootDeviceName", m.root_device_name.as_str())
        .text("virtualizationType", m.virtualization_type.as_str())
        .text("enaSupport", if m.ena_support { "true" } else { "false" })
        .opt("bootMode", m.boot_mode.map(|b| b.as_str()))
        .opt("tpmSupport", m.tpm_support.as_deref())
        .opt("imdsSupport", m.imds_support.as_deref())
        .opt("sourceImageId", m.source_image_id.as_deref());
    b.list("blockDeviceMapping", &m.block_device_mappings, |b, bdm| {
        b.text("deviceName", bdm.device_name.as_str());
        if let Some(ebs) = &bdm.ebs {
            b.element("ebs", |b| {
                let snapshot = ebs.disk.and_then(|d| i.snapshots.get(d));
                b.opt("snapshotId", snapshot.map(|s| s.snapshot_id.as_str()))
                    .text("volumeSize", &ebs.volume_size_gib.to_string())
                    .text(
                        "deleteOnTermination",
                        if ebs.delete_on_termination {
                            "true"
                        } else {
                            "false"
                        },
                    )
                    .text("volumeType", ebs.volume_type.as_str())
                    .opt("iops", ebs.iops.map(|n| n.to_string()).as_deref())
                    .opt(
                        "throughput",
                        ebs.throughput.map(|n| n.to_string()).as_deref(),
                    )
                    .text("encrypted", if ebs.encrypted { "true" } else { "false" });
            });
        }
        b.opt("virtualName", bdm.virtual_name.as_deref());
    });
    // EC2 omits tagSet for an untagged resource (the AWS CLI then shows
    // no "Tags", not "Tags": []).
    if !m.tags.is_empty() {
        b.list("tagSet", &m.tags, |b, t| {
            b.text("key", t.key()).text("value", t.value());
        });
    }
    if let Some(reason) = &i.state_reason {
        b.element("stateReason", |b| {
            b.text("code", "Client.RestoreFailed")
                .text("message", reason);
        });
    }
}

/// The DescribeImages answer for `images` (for a caller that lists images
/// without a server: the same document the server answers).
pub fn describe_images_document(images: &[amistore_core::ports::Image]) -> String {
    let mut body = Body::new();
    body.list("imagesSet", images, image_item);
    body.document("DescribeImages", "local")
}

fn deregister_image(engine: &Engine, account: &AccountId, mut p: Params) -> Result<Body, ApiError> {
    let id = image_id(&p.req("ImageId")?)?;
    let _ = p.opt_bool("DeleteAssociatedSnapshots")?;
    finish(p)?;
    engine
        .catalog
        .deregister_image(account, &id)
        .map_err(|e| match e {
            CoreError::NotFound(_) => ApiError::new(
                "InvalidAMIID.NotFound",
                format!("The image id '[{id}]' does not exist"),
            ),
            other => other.into(),
        })?;
    let mut body = Body::new();
    body.text("return", "true");
    Ok(body)
}

/// RegisterImage over snapshots written with the EBS direct APIs (completed,
/// owned by the caller, in no image yet): the image is `available` at once.
/// What only AWS can do is refused by name: instance-store images
/// (`ImageLocation`), billing products, and mappings tied to an Outpost, an
/// Availability Zone or a launch-time setting.
fn register_image(engine: &Engine, account: &AccountId, mut p: Params) -> Result<Body, ApiError> {
    use amistore_core::image::{BlockDeviceMapping, EbsMapping, GIB, ImageMetadata, VolumeType};
    let unsupported = |name: &str, why: &str| {
        ApiError::new(
            "InvalidParameterCombination",
            format!("{name} is not supported by amistore: {why}"),
        )
    };
    if p.opt("ImageLocation").is_some() {
        return Err(unsupported(
            "ImageLocation",
            "instance-store images cannot be registered; register EBS snapshots",
        ));
    }
    if !p.list("BillingProduct")?.is_empty() {
        return Err(unsupported(
            "BillingProduct",
            "it is for AWS Marketplace sellers",
        ));
    }
    let name = p
        .req("Name")?
        .parse::<ImageName>()
        .map_err(|e| ApiError::new("InvalidAMIName.Malformed", e.to_string()))?;
    let description = p.opt("Description");
    // EC2's documented default for EBS-backed images.
    let architecture = match p.opt("Architecture") {
        Some(a) => parsed("Architecture", &a)?,
        None => amistore_core::image::Architecture::I386,
    };
    let root_device_name = parsed("RootDeviceName", &p.req("RootDeviceName")?)?;
    let virtualization_type = match p.opt("VirtualizationType") {
        Some(v) => parsed("VirtualizationType", &v)?,
        None => amistore_core::image::VirtualizationType::Paravirtual,
    };
    let boot_mode = p
        .opt("BootMode")
        .map(|b| parsed("BootMode", &b))
        .transpose()?;
    let ena_support = p.opt_bool("EnaSupport")?.unwrap_or(false);
    let sriov_net_support = p.opt("SriovNetSupport");
    let tpm_support = p.opt("TpmSupport");
    let uefi_data = p.opt("UefiData");
    let imds_support = p.opt("ImdsSupport");
    let kernel_id = p.opt("KernelId");
    let ramdisk_id = p.opt("RamdiskId");
    let mut image_tags = Vec::new();
    for mut spec in p.groups("TagSpecification")? {
        let kind = spec.req("ResourceType")?;
        let list = tags(spec.groups("Tag")?)?;
        spec.finish()?;
        if kind != "image" {
            return Err(ApiError::invalid(
                "TagSpecification.N.ResourceType",
                format!("{kind:?} is not image (RegisterImage tags only the image)"),
            ));
        }
        image_tags.extend(list);
    }
    let mut snapshots = Vec::new();
    let mut block_device_mappings = Vec::new();
    for mut m in p.groups("BlockDeviceMapping")? {
        let device_name = parsed("BlockDeviceMapping.N.DeviceName", &m.req("DeviceName")?)?;
        let virtual_name = m.opt("VirtualName");
        let no_device = m.opt("NoDevice").is_some();
        let mut ebs = None;
        let snapshot = m.opt("Ebs.SnapshotId");
        let volume_size = m.opt_u32("Ebs.VolumeSize")?;
        let volume_type = m.opt("Ebs.VolumeType");
        let iops = m.opt_u32("Ebs.Iops")?;
        let throughput = m.opt_u32("Ebs.Throughput")?;
        let delete_on_termination = m.opt_bool("Ebs.DeleteOnTermination")?.unwrap_or(true);
        let encrypted = m.opt_bool("Ebs.Encrypted")?.unwrap_or(false);
        let kms_key_id = m.opt("Ebs.KmsKeyId");
        for (name, why) in [
            ("Ebs.OutpostArn", "Outposts are AWS hardware"),
            (
                "Ebs.AvailabilityZone",
                "a local volume has no Availability Zone",
            ),
            (
                "Ebs.AvailabilityZoneId",
                "a local volume has no Availability Zone",
            ),
            (
                "Ebs.VolumeInitializationRate",
                "it applies when an instance launches",
            ),
            ("Ebs.EbsCardIndex", "it applies when an instance launches"),
        ] {
            if m.opt(name).is_some() {
                return Err(unsupported(&format!("BlockDeviceMapping.N.{name}"), why));
            }
        }
        let any_ebs = snapshot.is_some()
            || volume_size.is_some()
            || volume_type.is_some()
            || iops.is_some()
            || throughput.is_some()
            || kms_key_id.is_some();
        if any_ebs {
            let disk = match &snapshot {
                Some(raw) => {
                    let id: amistore_core::ids::SnapshotId = raw.parse().map_err(|_| {
                        ApiError::new(
                            "InvalidSnapshotID.Malformed",
                            format!("Invalid id: \"{raw}\" (expecting \"snap-...\")"),
                        )
                    })?;
                    let info =
                        engine
                            .snapshots
                            .describe_snapshot(account, &id)
                            .map_err(|e| match e {
                                CoreError::NotFound(_) => ApiError::new(
                                    "InvalidSnapshot.NotFound",
                                    format!("The snapshot '{id}' does not exist."),
                                ),
                                other => other.into(),
                            })?;
                    if info.state != ResourceState::Available {
                        return Err(ApiError::new(
                            "IncorrectState",
                            format!(
                                "Snapshot {id} is {}; complete it (CompleteSnapshot) before registering it",
                                snapshot_status(info.state)
                            ),
                        ));
                    }
                    if snapshots.iter().any(|(s, _)| *s == id) {
                        return Err(ApiError::new(
                            "InvalidBlockDeviceMapping",
                            format!("Snapshot {id} is mapped to more than one device"),
                        ));
                    }
                    let needed = info.volume_size.div_ceil(GIB);
                    if volume_size.is_some_and(|v| u64::from(v) < needed) {
                        return Err(ApiError::new(
                            "InvalidBlockDeviceMapping",
                            format!(
                                "Volume of {} GiB is smaller than snapshot {id} ({needed} GiB)",
                                volume_size.unwrap_or_default()
                            ),
                        ));
                    }
                    snapshots.push((id, needed));
                    Some(snapshots.len() - 1)
                }
                None => None,
            };
            let volume_size_gib = match (volume_size, disk) {
                (Some(v), _) => u64::from(v),
                (None, Some(d)) => snapshots[d].1,
                (None, None) => {
                    return Err(ApiError::new(
                        "InvalidBlockDeviceMapping",
                        format!("{device_name}: a volume with no snapshot needs Ebs.VolumeSize"),
                    ));
                }
            };
            ebs = Some(EbsMapping {
                disk,
                volume_size_gib,
                volume_type: match volume_type {
                    Some(t) => parsed("BlockDeviceMapping.N.Ebs.VolumeType", &t)?,
                    None => VolumeType::Gp2,
                },
                iops,
                throughput,
                delete_on_termination,
                encrypted,
                kms_key_id,
            });
        }
        m.finish()?;
        block_device_mappings.push(BlockDeviceMapping {
            device_name,
            ebs,
            virtual_name,
            no_device,
        });
    }
    finish(p)?;
    let root: &amistore_core::image::DeviceName = &root_device_name;
    if !block_device_mappings
        .iter()
        .any(|m| m.device_name == *root && m.ebs.as_ref().is_some_and(|e| e.disk.is_some()))
    {
        return Err(ApiError::new(
            "InvalidBlockDeviceMapping",
            format!(
                "The root device {root} must map a snapshot (BlockDeviceMapping.N.Ebs.SnapshotId)"
            ),
        ));
    }
    let metadata = ImageMetadata {
        description,
        boot_mode,
        ena_support,
        sriov_net_support,
        tpm_support,
        uefi_data,
        imds_support,
        kernel_id,
        ramdisk_id,
        block_device_mappings,
        tags: image_tags,
        virtualization_type,
        ..ImageMetadata::minimal(name, architecture, root_device_name.clone())
    };
    metadata.validate()?;
    let ids: Vec<_> = snapshots.into_iter().map(|(id, _)| id).collect();
    let token = format!("register-{}", amistore_core::ids::unique_token());
    let image = engine
        .catalog
        .register_image(account, &metadata, &ids, &token)
        .map_err(|e| match e {
            CoreError::AlreadyExists(m) => ApiError::new("InvalidAMIName.Duplicate", m),
            other => other.into(),
        })?;
    engine
        .catalog
        .set_image_state(account, &image, ResourceState::Available, None)?;
    let mut body = Body::new();
    body.text("imageId", image.as_str());
    Ok(body)
}

/// DescribeSnapshots over the snapshots of the caller's images: `SnapshotId.N`,
/// `Owner.N`, `RestorableBy.N`, filters, pages; states as EC2 spells them
/// for snapshots.
fn describe_snapshots(
    engine: &Engine,
    account: &AccountId,
    mut p: Params,
) -> Result<Body, ApiError> {
    let ids = p.list("SnapshotId")?;
    let owners = p.list("Owner")?;
    let restorable_by = p.list("RestorableBy")?;
    let max_results = page_size(&mut p, 5)?;
    let next_token = p.opt("NextToken");
    let filters = filters_among(&mut p, SNAPSHOT_FILTERS)?;
    finish(p)?;
    let mut images = owned_images(engine, account, &owners)?;
    // A snapshot here can be restored from by its owner only.
    if !restorable_by.is_empty() && !restorable_by.iter().any(|r| is_self(r, account)) {
        images.clear();
    }
    let mut snapshots: Vec<(
        &amistore_core::ports::Image,
        &amistore_core::ports::Snapshot,
    )> = images
        .iter()
        .flat_map(|i| i.snapshots.iter().map(move |s| (i, s)))
        .filter(|(_, s)| ids.is_empty() || ids.iter().any(|id| id == s.snapshot_id.as_str()))
        .collect();
    if let Some(missing) = ids.iter().find(|id| {
        !snapshots
            .iter()
            .any(|(_, s)| s.snapshot_id.as_str() == id.as_str())
    }) {
        return Err(ApiError::new(
            "InvalidSnapshot.NotFound",
            format!("The snapshot '{missing}' does not exist."),
        ));
    }
    snapshots
        .retain(|(image, s)| matches_filters(&filters, |name| snapshot_attribute(image, s, name)));
    snapshots.sort_by(|a, b| a.1.snapshot_id.cmp(&b.1.snapshot_id));
    let (snapshots, next) = paged(
        engine,
        account,
        "DescribeSnapshots",
        &[&ids, &owners, &restorable_by],
        &filters,
        snapshots,
        |(_, s)| s.snapshot_id.to_string(),
        max_results,
        next_token.as_deref(),
    )?;
    let mut body = Body::new();
    body.list("snapshotSet", &snapshots, |b, (image, s)| {
        let status = snapshot_status(s.state);
        b.text("snapshotId", s.snapshot_id.as_str())
            .text("volumeId", "vol-ffffffff")
            .text("status", status)
            .text("startTime", &with_millis(&image.creation_date))
            .text(
                "progress",
                if status == "completed" { "100%" } else { "0%" },
            )
            .text("ownerId", image.owner_id.as_str())
            .text(
                "volumeSize",
                &s.volume_size
                    .div_ceil(amistore_core::image::GIB)
                    .to_string(),
            )
            .text(
                "description",
                &format!("{} of {}", s.device_name, image.image_id),
            )
            .text("encrypted", "false");
        if !s.tags.is_empty() {
            b.list("tagSet", &s.tags, |b, t| {
                b.text("key", t.key()).text("value", t.value());
            });
        }
    });
    body.opt("nextToken", next.as_deref());
    Ok(body)
}

/// Whether `who` (an `Owner`, `ExecutableBy` or `RestorableBy` value) names
/// the caller.
fn is_self(who: &str, account: &AccountId) -> bool {
    who == "self" || who == account.as_str()
}

/// `MaxResults`: at least `min`; above 1,000 only 1,000 are returned (as EC2
/// does). Without it, everything is one page.
fn page_size(p: &mut Params, min: u32) -> Result<usize, ApiError> {
    match p.opt_u32("MaxResults")? {
        Some(n) if n < min => Err(ApiError::invalid(
            "MaxResults",
            format!("{n} is below {min}"),
        )),
        Some(n) => Ok(n.min(1_000) as usize),
        None => Ok(usize::MAX),
    }
}

/// One page of `items` (sorted by `key`) and the next page's token, bound to
/// the caller and to everything in the query but the page size.
#[allow(clippy::too_many_arguments)]
fn paged<T>(
    engine: &Engine,
    account: &AccountId,
    action: &str,
    lists: &[&Vec<String>],
    filters: &[(String, Vec<String>)],
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    limit: usize,
    token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let mut query: Vec<String> = vec![action.to_owned()];
    for list in lists {
        query.push(list.join("\u{1}"));
    }
    for (name, values) in filters {
        query.push(format!("{name}\u{2}{}", values.join("\u{1}")));
    }
    let parts: Vec<&str> = query.iter().map(String::as_str).collect();
    amistore_core::engine::describe::page(
        &engine.config.token_key,
        account,
        &parts,
        items,
        key,
        limit,
        token,
    )
    .map_err(|e| match e {
        CoreError::InvalidToken(m) => ApiError::new("InvalidNextToken", m),
        other => other.into(),
    })
}

/// Whether a resource passes every filter: values of one filter are ORed
/// (with wildcards), filters are ANDed; `attribute` gives a filter's values
/// on the resource (several for tags and block device mappings).
fn matches_filters(
    filters: &[(String, Vec<String>)],
    attribute: impl Fn(&str) -> Vec<String>,
) -> bool {
    filters.iter().all(|(name, patterns)| {
        attribute(name)
            .iter()
            .any(|actual| patterns.iter().any(|p| wildcard(p, actual)))
    })
}

/// DescribeImages' filters, as EC2 names them.
const IMAGE_FILTERS: &[&str] = &[
    "architecture",
    "block-device-mapping.delete-on-termination",
    "block-device-mapping.device-name",
    "block-device-mapping.snapshot-id",
    "block-device-mapping.volume-size",
    "block-device-mapping.volume-type",
    "block-device-mapping.encrypted",
    "boot-mode",
    "creation-date",
    "description",
    "ena-support",
    "image-id",
    "image-type",
    "is-public",
    "name",
    "owner-id",
    "platform",
    "root-device-name",
    "root-device-type",
    "state",
    "state-reason-message",
    "tag-key",
    "tpm-support",
    "virtualization-type",
];

/// The values image `i` has for filter `name`.
fn image_attribute(i: &amistore_core::ports::Image, name: &str) -> Vec<String> {
    let m = &i.metadata;
    let one = |v: &str| vec![v.to_owned()];
    let ebs = || {
        m.block_device_mappings
            .iter()
            .filter_map(|b| b.ebs.as_ref().map(|e| (b, e)))
    };
    match name {
        "architecture" => one(m.architecture.as_str()),
        "block-device-mapping.delete-on-termination" => ebs()
            .map(|(_, e)| e.delete_on_termination.to_string())
            .collect(),
        "block-device-mapping.device-name" => m
            .block_device_mappings
            .iter()
            .map(|b| b.device_name.to_string())
            .collect(),
        "block-device-mapping.snapshot-id" => ebs()
            .filter_map(|(_, e)| e.disk.and_then(|d| i.snapshots.get(d)))
            .map(|s| s.snapshot_id.to_string())
            .collect(),
        "block-device-mapping.volume-size" => {
            ebs().map(|(_, e)| e.volume_size_gib.to_string()).collect()
        }
        "block-device-mapping.volume-type" => ebs()
            .map(|(_, e)| e.volume_type.as_str().to_owned())
            .collect(),
        "block-device-mapping.encrypted" => ebs().map(|(_, e)| e.encrypted.to_string()).collect(),
        "boot-mode" => m.boot_mode.map(|b| one(b.as_str())).unwrap_or_default(),
        "creation-date" => one(&with_millis(&i.creation_date)),
        "description" => m.description.iter().cloned().collect(),
        "ena-support" => one(if m.ena_support { "true" } else { "false" }),
        "image-id" => one(i.image_id.as_str()),
        "image-type" => one("machine"),
        "is-public" => one("false"),
        "name" => one(m.name.as_str()),
        "owner-id" => one(i.owner_id.as_str()),
        "platform" => vec![],
        "root-device-name" => one(m.root_device_name.as_str()),
        "root-device-type" => one("ebs"),
        "state" => one(i.state.as_str()),
        "state-reason-message" => i.state_reason.iter().cloned().collect(),
        "tag-key" => m.tags.iter().map(|t| t.key().to_owned()).collect(),
        "tpm-support" => m.tpm_support.iter().cloned().collect(),
        "virtualization-type" => one(m.virtualization_type.as_str()),
        tag => match tag.strip_prefix("tag:") {
            Some(key) => m
                .tags
                .iter()
                .filter(|t| t.key() == key)
                .map(|t| t.value().to_owned())
                .collect(),
            None => vec![],
        },
    }
}

/// DescribeSnapshots' filters, as EC2 names them.
const SNAPSHOT_FILTERS: &[&str] = &[
    "description",
    "encrypted",
    "owner-alias",
    "owner-id",
    "progress",
    "snapshot-id",
    "start-time",
    "status",
    "storage-tier",
    "tag-key",
    "transfer-type",
    "volume-id",
    "volume-size",
];

/// A snapshot's status as EC2 spells it.
fn snapshot_status(state: ResourceState) -> &'static str {
    match state {
        ResourceState::Pending => "pending",
        ResourceState::Available => "completed",
        ResourceState::Failed => "error",
    }
}

/// The values snapshot `s` (of image `image`) has for filter `name`.
fn snapshot_attribute(
    image: &amistore_core::ports::Image,
    s: &amistore_core::ports::Snapshot,
    name: &str,
) -> Vec<String> {
    let one = |v: &str| vec![v.to_owned()];
    let status = snapshot_status(s.state);
    match name {
        "description" => one(&format!("{} of {}", s.device_name, image.image_id)),
        "encrypted" => one("false"),
        "owner-alias" => vec![],
        "owner-id" => one(image.owner_id.as_str()),
        "progress" => one(if status == "completed" { "100%" } else { "0%" }),
        "snapshot-id" => one(s.snapshot_id.as_str()),
        "start-time" => one(&with_millis(&image.creation_date)),
        "status" => one(status),
        "storage-tier" => one("standard"),
        "tag-key" => s.tags.iter().map(|t| t.key().to_owned()).collect(),
        "transfer-type" => one("standard"),
        "volume-id" => one("vol-ffffffff"),
        "volume-size" => one(&s
            .volume_size
            .div_ceil(amistore_core::image::GIB)
            .to_string()),
        tag => match tag.strip_prefix("tag:") {
            Some(key) => s
                .tags
                .iter()
                .filter(|t| t.key() == key)
                .map(|t| t.value().to_owned())
                .collect(),
            None => vec![],
        },
    }
}

/// The caller's images, if `owners` (an `Owner.N` list) includes the caller
/// (`self` or its account id) or is empty: other accounts' images are never shown.
fn owned_images(
    engine: &Engine,
    account: &AccountId,
    owners: &[String],
) -> Result<Vec<amistore_core::ports::Image>, ApiError> {
    let mine = owners.is_empty() || owners.iter().any(|o| o == "self" || o == account.as_str());
    Ok(if mine {
        engine.catalog.list_images(account)?
    } else {
        Vec::new()
    })
}

/// An RFC 3339 time as EC2 writes its timestamps: UTC with milliseconds
/// (`2026-11-30T12:00:00.000Z`). Records keep seconds.
fn with_millis(rfc3339: &str) -> String {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| amistore_core::task::iso8601_millis((t.unix_timestamp_nanos() / 1_000_000) as i64))
        .unwrap_or_else(|| rfc3339.to_owned())
}

/// Most filter values one request may give (EC2's documented
/// `FilterLimitExceeded`: "too many filters or too many filter values").
pub const MAX_FILTER_VALUES: usize = 200;
/// Longest filter value, in characters: names and tag values are shorter.
pub const MAX_FILTER_VALUE_CHARS: usize = 256;

/// The request's `Filter.N.Name` / `Filter.N.Value.M` groups, bounded: the
/// work a describe does is images × values × (pattern × text), and every
/// factor a caller controls is capped.
fn filters(p: &mut Params) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let mut filters = Vec::new();
    let mut values_total = 0;
    for mut f in p.groups("Filter")? {
        let name = f.req("Name")?;
        let values = f.list("Value")?;
        f.finish()?;
        values_total += values.len();
        if values_total > MAX_FILTER_VALUES {
            return Err(ApiError::new(
                "FilterLimitExceeded",
                format!("The request uses more than {MAX_FILTER_VALUES} filter values"),
            ));
        }
        if let Some(long) = values
            .iter()
            .find(|v| v.chars().count() > MAX_FILTER_VALUE_CHARS)
        {
            return Err(ApiError::new(
                "FilterLimitExceeded",
                format!(
                    "A value of filter '{name}' is {} characters; at most {MAX_FILTER_VALUE_CHARS} are accepted",
                    long.chars().count()
                ),
            ));
        }
        filters.push((name, values));
    }
    Ok(filters)
}

/// The request's filters, each of which must be one of `known` or a
/// `tag:KEY`.
fn filters_among(p: &mut Params, known: &[&str]) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let filters = filters(p)?;
    if let Some((name, _)) = filters
        .iter()
        .find(|(name, _)| !known.contains(&name.as_str()) && !name.starts_with("tag:"))
    {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("The filter '{name}' is invalid"),
        ));
    }
    Ok(filters)
}

/// EC2's filter wildcards: `*` any run, `?` any one character. Greedy, with
/// one backtrack point (the last `*`): no allocation, and linear unless the
/// pattern has several stars that keep almost matching (bounded then by
/// pattern × text, both capped by [`MAX_FILTER_VALUE_CHARS`] and field limits).
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // UTF-8: a leading byte tells its character's length; indices stay on
    // character boundaries because literals match whole characters.
    let char_len = |b: u8| match b {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    };
    let (mut pi, mut ti) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                pi += 1;
                retry = Some((pi, ti));
            }
            Some(b'?') => {
                pi += 1;
                ti += char_len(t[ti]);
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match retry {
                // The last star takes one more character; try again after it.
                Some((after_star, from)) => {
                    let next = from + char_len(t[from]);
                    retry = Some((after_star, next));
                    pi = after_star;
                    ti = next;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards_match_as_ec2_filters_do() {
        assert!(wildcard("web*", "web-server"));
        assert!(wildcard("w?b", "web"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("web", "web-server"));
        assert!(!wildcard("w?b", "wb"));
        assert!(wildcard("a*b*c", "aXXbYYc"));
        assert!(wildcard("é?ü*", "éxü"));
        assert!(wildcard("?", "é"));
        assert!(!wildcard("??", "é"));
    }

    /// The dynamic programme this matcher replaced, as the reference.
    fn reference(pattern: &str, text: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        let mut prev = vec![false; t.len() + 1];
        prev[0] = true;
        for pc in &p {
            let mut cur = vec![false; t.len() + 1];
            cur[0] = *pc == '*' && prev[0];
            for j in 1..=t.len() {
                cur[j] = match pc {
                    '*' => cur[j - 1] || prev[j],
                    '?' => prev[j - 1],
                    c => prev[j - 1] && *c == t[j - 1],
                };
            }
            prev = cur;
        }
        prev[t.len()]
    }

    #[test]
    fn the_greedy_matcher_agrees_with_the_dynamic_programme() {
        let alphabet = ['a', 'b', 'é', '日', '*', '?'];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..20_000 {
            let pattern: String = (0..next(8)).map(|_| alphabet[next(6)]).collect();
            let text: String = (0..next(10)).map(|_| alphabet[next(4)]).collect();
            assert_eq!(
                wildcard(&pattern, &text),
                reference(&pattern, &text),
                "{pattern:?} against {text:?}"
            );
        }
    }
}
