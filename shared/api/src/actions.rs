//! The actions: each parses its parameters (strictly: an unknown one is an
//! error), answers DryRun without side effects, calls the engine, and writes
//! the response document. The caller's account comes from authentication and
//! scopes everything.
//!
//! EC2's: CreateStoreImageTask, DescribeStoreImageTasks, CreateRestoreImageTask.
//! amistore's extension: DescribeRestoreImageTasks (same request shape as
//! DescribeStoreImageTasks; `restoreImageTaskResultSet` items with `imageId`,
//! `taskStartTime`, `bucket`, `objectKey`, `progressPercentage`,
//! `restoreTaskState` and `restoreTaskFailureReason`).

use amistore_core::Error as CoreError;
use amistore_core::engine::describe::{DescribeQuery, describe};
use amistore_core::engine::intake::{RestoreRequest, StoreRequest};
use amistore_core::engine::{Engine, now_ms};
use amistore_core::ids::{AccountId, ImageId};
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
    request_id: &str,
) -> Result<String, ApiError> {
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
        other => {
            return Err(ApiError::new(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ));
        }
    };
    Ok(body.document(&action, request_id))
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
    let mut filters = Vec::new();
    for mut f in p.groups("Filter")? {
        let name = f.req("Name")?;
        let values = f.list("Value")?;
        f.finish()?;
        filters.push((name, values));
    }
    let query = DescribeQuery {
        image_ids,
        filters,
        max_results: p.opt_u32("MaxResults")?,
        next_token: p.opt("NextToken"),
    };
    finish(p)?;
    let tasks = engine.tasks.list(account, kind, now_ms())?;
    let page = describe(&engine.config.token_key, account, kind, tasks, &query)?;
    let mut body = Body::new();
    match kind {
        TaskKind::Store => body.list("storeImageTaskResultSet", &page.tasks, store_item),
        TaskKind::Restore => body.list("restoreImageTaskResultSet", &page.tasks, restore_item),
    };
    body.opt("nextToken", page.next_token.as_deref());
    Ok(body)
}

fn store_item(b: &mut Body, t: &Task) {
    b.opt("amiId", t.image_id.as_ref().map(|i| i.as_str()))
        .text("taskStartTime", &iso8601_millis(t.started_at_ms))
        .text("bucket", t.bucket.as_str())
        .text("s3objectKey", t.key.as_str())
        .text("progressPercentage", &t.progress_percent().to_string())
        .text("storeTaskState", t.state.as_str())
        .opt("storeTaskFailureReason", t.failure_reason.as_deref());
}

fn restore_item(b: &mut Body, t: &Task) {
    b.opt("imageId", t.image_id.as_ref().map(|i| i.as_str()))
        .text("taskStartTime", &iso8601_millis(t.started_at_ms))
        .text("bucket", t.bucket.as_str())
        .text("objectKey", t.key.as_str())
        .text("progressPercentage", &t.progress_percent().to_string())
        .text("restoreTaskState", t.state.as_str())
        .opt("restoreTaskFailureReason", t.failure_reason.as_deref());
}
