//! [`TaskStore`] over one DynamoDB table (the design's single-table layout).
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | task | `TASK#<id>` | `TASK` | the task's fields (a restore's `sourceEtag` and `sourceDigest` pin its archive); `byAccount` (`<account>#<kind>`) and `startedAt` key the newest-first GSI; `expiresAt` is the TTL; `ending`, `endingReason`, `claimedAt` once its end is claimed; `unitsDone` as it was when a failure claimed it |
//! | unit | `TASK#<id>` | `UNIT#<n, 10 digits>` | `record` (JSON); `expiresAt` |
//! | quota counter | `QUOTA` | `<account>#<kind>` | `gib`: GiB of tasks in progress |
//! | running marker | `RUNNING` | `TASK#<id>` | none: the task is in progress |
//! | copy lock | `COPY#<account>#<image>#<bucket>` | `COPY` | `taskId`: the store in progress |
//! | rate lease | `BUDGET#<account>#<kind>` | `<task>#<unit>` | `taskId`, `rate`, `leaseExpires` (ms); `expiresAt` a day later |
//!
//! Admission is one TransactWriteItems: put the task if absent, `ADD` its size to
//! the counter on condition the counter is below the limit, put the running
//! marker, and (for a store) put the copy lock if absent. The end of a task is
//! claimed first, with one conditional UpdateItem (`ending` unset, or ours, or
//! older than the caller may overrule); finishing is another transaction: set
//! the terminal state on condition the task is still `InProgress` and the
//! claim still ours, subtract from the counter, delete the marker and the lock.
//! So a quota is taken and released exactly once, whatever retries.
//!
//! A unit is recorded with one conditional PutItem of its own item and nothing
//! else: progress is counted from the unit items (a COUNT query), so units that
//! finish together never write one hot item. DynamoDB cancels transactions that
//! touch an item another transaction is writing (`TransactionConflict`); such a
//! cancellation, like throttling, is transient and is retried, never taken for
//! a failed condition or bad input.
//!
//! The counters and the markers each live in one partition so that the
//! sweeper reads them with a strongly consistent Query whose cost follows the
//! work in progress, not the 31 days of history (a GSI would be eventually
//! consistent, and the sweeper corrects counters from what it reads). Both
//! partitions see one write per admission and release, far below a
//! partition's 1,000 writes per second.
//! TTL deletion lags by up to days, so listings also filter by start time.
//!
//! The rate leases of one account's budget share a partition too: each
//! running unit writes its own item every two seconds (with the default 16
//! units a task, a few tasks make a few dozen writes a second), and reads the
//! partition with a strongly consistent Query. A unit removes its lease when it
//! ends; one that died leaves it to lapse, and the next renewal deletes it.

use std::collections::HashMap;

use amistore_core::ids::{AccountId, ImageId, TaskId};
use amistore_core::ports::{RateLease, TaskStore};
use amistore_core::task::{
    Claim, ClaimRequest, EndClaim, Ending, RETENTION_MS, SourcePin, Task, TaskKind, TaskState,
};
use amistore_core::{Detail, Error, Result};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType, Select,
    TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::bridge::Bridge;
use crate::error::sdk;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;

/// The GSI that lists an account's tasks of one kind, newest first.
pub const BY_ACCOUNT_INDEX: &str = "byAccount";
/// The TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expiresAt";

type Item = HashMap<String, AttributeValue>;

/// DynamoDB as the engine's task store.
#[derive(Clone, Debug)]
pub struct DynamoTaskStore {
    client: Client,
    bridge: Bridge,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn task_pk(id: &TaskId) -> String {
    format!("TASK#{id}")
}

const QUOTA_PK: &str = "QUOTA";
const RUNNING_PK: &str = "RUNNING";

fn quota_key(account: &AccountId, kind: TaskKind) -> Item {
    key(QUOTA_PK.into(), &format!("{account}#{}", kind.as_str()))
}

fn running_key(id: &TaskId) -> Item {
    key(RUNNING_PK.into(), &task_pk(id))
}

fn unit_sk(unit: u64) -> String {
    format!("UNIT#{unit:010}")
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// The copy lock a store task holds: one in-progress store per image and bucket.
fn copy_lock(task: &Task) -> Option<Item> {
    let image = task.image_id.as_ref()?;
    (task.kind == TaskKind::Store).then(|| {
        key(
            format!("COPY#{}#{image}#{}", task.account, task.bucket),
            "COPY",
        )
    })
}

fn expires_at_secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn task_item(task: &Task) -> Item {
    let mut item = key(task_pk(&task.id), "TASK");
    let mut put = |k: &str, v: AttributeValue| {
        item.insert(k.to_owned(), v);
    };
    put("id", s(task.id.as_str()));
    put("kind", s(task.kind.as_str()));
    put("account", s(task.account.as_str()));
    if let Some(image) = &task.image_id {
        put("imageId", s(image.as_str()));
    }
    put("bucket", s(task.bucket.as_str()));
    put("objectKey", s(task.key.as_str()));
    put("sizeGib", n(task.size_gib));
    if let Some(upload) = &task.upload_id {
        put("uploadId", s(upload));
    }
    put("unitsTotal", n(task.units_total));
    put("state", s(task.state.as_str()));
    put("startedAt", n(task.started_at_ms));
    if let Some(ended) = task.ended_at_ms {
        put("endedAt", n(ended));
    }
    if let Some(reason) = &task.failure_reason {
        put("reason", s(reason));
    }
    if let Some(pin) = &task.source {
        put("sourceEtag", s(&pin.etag));
        put("sourceDigest", s(&pin.manifest_digest));
    }
    put(
        BY_ACCOUNT_INDEX,
        s(format!("{}#{}", task.account, task.kind.as_str())),
    );
    put(TTL_ATTRIBUTE, n(expires_at_secs(task.expires_at_ms())));
    item
}

fn damaged(what: &str, item: &Item) -> Error {
    let part = |name| text(item, name).unwrap_or_default();
    Error::Malformed(
        format!(
            "task table item {}/{} has no valid {what}",
            part("pk"),
            part("sk")
        )
        .into(),
    )
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn number<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn parsed<T: std::str::FromStr>(item: &Item, name: &'static str) -> Result<T> {
    text(item, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| damaged(name, item))
}

fn task_from(item: &Item) -> Result<Task> {
    Ok(Task {
        id: parsed(item, "id")?,
        kind: text(item, "kind")
            .and_then(TaskKind::parse)
            .ok_or_else(|| damaged("kind", item))?,
        account: parsed(item, "account")?,
        image_id: text(item, "imageId").map(str::parse).transpose()?,
        bucket: parsed(item, "bucket")?,
        key: parsed(item, "objectKey")?,
        size_gib: number(item, "sizeGib").ok_or_else(|| damaged("sizeGib", item))?,
        upload_id: text(item, "uploadId").map(str::to_owned),
        units_total: number(item, "unitsTotal").unwrap_or(0),
        units_done: number(item, "unitsDone").unwrap_or(0),
        state: text(item, "state")
            .and_then(TaskState::parse)
            .ok_or_else(|| damaged("state", item))?,
        started_at_ms: number(item, "startedAt").ok_or_else(|| damaged("startedAt", item))?,
        ended_at_ms: number(item, "endedAt"),
        failure_reason: text(item, "reason").map(str::to_owned),
        claim: match text(item, "ending") {
            Some(ending) => Some(EndClaim {
                ending: Ending::parse(ending).ok_or_else(|| damaged("ending", item))?,
                reason: text(item, "endingReason").map(str::to_owned),
                at_ms: number(item, "claimedAt").ok_or_else(|| damaged("claimedAt", item))?,
            }),
            None => None,
        },
        source: match (text(item, "sourceEtag"), text(item, "sourceDigest")) {
            (Some(etag), Some(digest)) => Some(SourcePin {
                etag: etag.to_owned(),
                manifest_digest: digest.to_owned(),
            }),
            _ => None,
        },
    })
}

/// Why DynamoDB cancelled a transaction, from its per-item reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// Conditions failed: `true` for each item whose condition did. This is an
    /// answer (a full quota, a task already ended), not a failure.
    Conditions(Vec<bool>),
    /// Another transaction was writing one of the items, or the table was
    /// throttled: the same transaction may pass on retry.
    Transient(String),
    /// Anything else (a validation error, an item collection too large).
    Invalid(String),
}

/// Classifies a cancellation by its reason codes (in item order; `None` or
/// `"None"` for items that were fine). A failed condition decides; then
/// contention and throttling are transient; anything else is not.
pub(crate) fn classify_cancellation(codes: &[Option<&str>]) -> Cancelled {
    const TRANSIENT: [&str; 4] = [
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    ];
    let listed = codes
        .iter()
        .map(|c| c.unwrap_or("None"))
        .collect::<Vec<_>>()
        .join(", ");
    if codes.contains(&Some("ConditionalCheckFailed")) {
        Cancelled::Conditions(
            codes
                .iter()
                .map(|c| *c == Some("ConditionalCheckFailed"))
                .collect(),
        )
    } else if codes.iter().flatten().any(|c| TRANSIENT.contains(c)) {
        Cancelled::Transient(format!("transaction cancelled ({listed})"))
    } else {
        Cancelled::Invalid(format!("transaction cancelled ({listed})"))
    }
}

/// Why a TransactWriteItems call was cancelled, if it was.
fn cancellation(err: &SdkError<TransactWriteItemsError>) -> Option<Cancelled> {
    match err {
        SdkError::ServiceError(e) => match e.err() {
            TransactWriteItemsError::TransactionCanceledException(c) => {
                let codes: Vec<Option<&str>> =
                    c.cancellation_reasons().iter().map(|r| r.code()).collect();
                Some(classify_cancellation(&codes))
            }
            _ => None,
        },
        _ => None,
    }
}

/// A write refused because its condition failed, as PutItem and UpdateItem
/// each spell it.
trait ConditionalWrite {
    fn condition_failed(&self) -> bool;
}

impl ConditionalWrite for PutItemError {
    fn condition_failed(&self) -> bool {
        matches!(self, Self::ConditionalCheckFailedException(_))
    }
}

impl ConditionalWrite for UpdateItemError {
    fn condition_failed(&self) -> bool {
        matches!(self, Self::ConditionalCheckFailedException(_))
    }
}

/// Whether a conditional write went through: `false` where DynamoDB refused
/// it on its condition (an answer, not a failure); any other failure, while
/// `what`, as the engine's error.
fn condition_held<O, E>(
    outcome: std::result::Result<O, SdkError<E, HttpResponse>>,
    what: impl std::fmt::Display,
) -> Result<bool>
where
    E: ConditionalWrite + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match outcome {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(E::condition_failed) => Ok(false),
        Err(e) => Err(sdk(what, e)),
    }
}

fn built<T, E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    r: std::result::Result<T, E>,
) -> Result<T> {
    r.map_err(|e| Error::InvalidInput(Detail::because(format!("building {what}"), e)))
}

impl DynamoTaskStore {
    /// A task store over `table`.
    pub fn new(client: Client, bridge: Bridge, table: impl Into<String>) -> Self {
        Self {
            client,
            bridge,
            table: table.into(),
        }
    }

    /// Creates the table (with its GSI and TTL) unless it exists: for tests and
    /// one-machine use against an emulator. Deployments create it from the
    /// template.
    pub fn ensure_table(&self) -> Result<()> {
        let described = self
            .bridge
            .run(self.client.describe_table().table_name(&self.table).send());
        match described {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => {}
            Err(e) => return Err(sdk(format_args!("describing table {}", self.table), e)),
        }
        let attr = |name: &str, t: ScalarAttributeType| {
            built(
                "an attribute",
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(t)
                    .build(),
            )
        };
        let key = |name: &str, t: KeyType| {
            built(
                "a key",
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(t)
                    .build(),
            )
        };
        let index = built(
            "the index",
            GlobalSecondaryIndex::builder()
                .index_name(BY_ACCOUNT_INDEX)
                .key_schema(key(BY_ACCOUNT_INDEX, KeyType::Hash)?)
                .key_schema(key("startedAt", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build(),
        )?;
        let create = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("sk", ScalarAttributeType::S)?)
            .attribute_definitions(attr(BY_ACCOUNT_INDEX, ScalarAttributeType::S)?)
            .attribute_definitions(attr("startedAt", ScalarAttributeType::N)?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(index)
            .send();
        match self.bridge.run(create) {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(()),
            Err(e) => return Err(sdk(format_args!("creating table {}", self.table), e)),
        }
        // A new table is CREATING for a while; TTL and items need it ACTIVE.
        for _ in 0..120 {
            let status = self
                .bridge
                .run(self.client.describe_table().table_name(&self.table).send())
                .map_err(|e| sdk(format_args!("describing table {}", self.table), e))?
                .table
                .and_then(|t| t.table_status)
                .map(|s| s.as_str().to_owned());
            if status.as_deref() == Some("ACTIVE") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let ttl = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(built(
                "the TTL",
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build(),
            )?)
            .send();
        self.bridge
            .run(ttl)
            .map(|_| ())
            .map_err(|e| sdk("enabling the TTL", e))
    }

    fn get_item(&self, key: Item) -> Result<Option<Item>> {
        let call = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send();
        self.bridge
            .run(call)
            .map(|out| out.item)
            .map_err(|e| sdk("reading the task table", e))
    }

    /// Runs one TransactWriteItems. `Ok(None)`: it committed. `Ok(Some(failed))`:
    /// it was cancelled because the conditions of the items marked `true`
    /// failed. A cancellation for contention or throttling is
    /// [`Error::Transient`]; the SDK does not retry it, the caller's step does.
    fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        token: Option<&str>,
        what: &str,
    ) -> Result<Option<Vec<bool>>> {
        let call = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .set_client_request_token(token.map(str::to_owned))
            .send();
        match self.bridge.run(call) {
            Ok(_) => Ok(None),
            Err(err) => match cancellation(&err) {
                Some(Cancelled::Conditions(failed)) => Ok(Some(failed)),
                Some(Cancelled::Transient(why)) => {
                    Err(Error::Transient(format!("{what}: {why}").into()))
                }
                Some(Cancelled::Invalid(why)) => {
                    Err(Error::InvalidInput(format!("{what}: {why}").into()))
                }
                None => Err(sdk(what, err)),
            },
        }
    }

    /// How many units of task `id` are recorded (a COUNT query of its unit
    /// items, read strongly consistent).
    fn count_units(&self, id: &TaskId) -> Result<u64> {
        let values = HashMap::from([
            (":pk".to_owned(), s(task_pk(id))),
            (":prefix".to_owned(), s("UNIT#")),
        ]);
        let mut total = 0u64;
        let mut start = None;
        loop {
            let call = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .select(Select::Count)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start)
                .send();
            let out = self
                .bridge
                .run(call)
                .map_err(|e| sdk(format_args!("counting the units of {id}"), e))?;
            total += out.count.max(0) as u64;
            match out.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(total),
            }
        }
    }

    /// `task` with its progress: counted for a task in progress, as it was
    /// when its failure was claimed for a failed one, all for a completed one.
    fn with_progress(&self, mut task: Task) -> Result<Task> {
        task.units_done = match task.state {
            TaskState::InProgress => self.count_units(&task.id)?,
            TaskState::Completed => task.units_total,
            TaskState::Failed => task.units_done,
        };
        Ok(task)
    }

    /// Sets one attribute of an existing task.
    fn set(&self, id: &TaskId, name: &str, value: AttributeValue) -> Result<()> {
        let call = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), "TASK")))
            .update_expression("SET #a = :v")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#a", name)
            .expression_attribute_values(":v", value)
            .send();
        if condition_held(self.bridge.run(call), format_args!("updating task {id}"))? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("task {id} does not exist").into()))
        }
    }

    /// Every item a paged Query or Scan returns; `page` runs one page from a start key.
    fn all_pages<F, Fut>(&self, mut page: F) -> Result<Vec<Item>>
    where
        F: FnMut(Option<Item>) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>)>>,
    {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (mut got, next) = self.bridge.run(page(start))?;
            items.append(&mut got);
            match next {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(items),
            }
        }
    }

    /// Every item of partition `pk` (with a sort key starting `sk_prefix`, if
    /// given), read strongly consistent.
    fn partition(&self, pk: String, sk_prefix: Option<&str>, what: &str) -> Result<Vec<Item>> {
        let condition = match sk_prefix {
            Some(_) => "pk = :pk AND begins_with(sk, :prefix)",
            None => "pk = :pk",
        };
        let mut values = HashMap::from([(":pk".to_owned(), s(pk))]);
        if let Some(prefix) = sk_prefix {
            values.insert(":prefix".to_owned(), s(prefix));
        }
        self.all_pages(|start| {
            let call = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression(condition)
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start)
                .send();
            async move {
                let out = call.await.map_err(|e| sdk(what, e))?;
                Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
            }
        })
    }
}

impl TaskStore for DynamoTaskStore {
    fn admit(&self, task: &Task, limit_gib: u64) -> Result<()> {
        let put_task = built(
            "the task",
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(task_item(task)))
                .condition_expression("attribute_not_exists(pk)")
                .build(),
        )?;
        let take_quota = built(
            "the quota update",
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(quota_key(&task.account, task.kind)))
                .update_expression("ADD gib :size")
                .condition_expression("attribute_not_exists(gib) OR gib < :limit")
                .expression_attribute_values(":size", n(task.size_gib))
                .expression_attribute_values(":limit", n(limit_gib))
                .build(),
        )?;
        let mark_running = built(
            "the running marker",
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(running_key(&task.id)))
                .build(),
        )?;
        let mut items = vec![
            TransactWriteItem::builder().put(put_task).build(),
            TransactWriteItem::builder().update(take_quota).build(),
            TransactWriteItem::builder().put(mark_running).build(),
        ];
        if let Some(mut lock) = copy_lock(task) {
            lock.insert("taskId".into(), s(task.id.as_str()));
            let put_lock = built(
                "the copy lock",
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(lock))
                    .condition_expression("attribute_not_exists(pk)")
                    .build(),
            )?;
            items.push(TransactWriteItem::builder().put(put_lock).build());
        }
        // The SDK retries a lost response; the token makes the retry answer
        // success instead of tripping over the task it already wrote.
        let token = Some(task.id.as_str());
        let what = format!("admitting task {}", task.id);
        match self.transact(items, token, &what)?.as_deref() {
            None => Ok(()),
            Some([true, ..]) => Err(Error::AlreadyExists(format!(
                "task {} already exists",
                task.id
            ).into())),
            Some([_, true, ..]) => {
                let now = self.in_progress_gib(&task.account, task.kind)?;
                Err(Error::LimitExceeded(format!(
                    "account {} already has {now} GiB of {} tasks in progress; new ones are admitted below {limit_gib} GiB",
                    task.account,
                    task.kind.as_str()
                ).into()))
            }
            Some(_) => Err(Error::AlreadyExists(format!(
                "image {} is already being stored in bucket {}; an AMI can be stored once per bucket",
                task.image_id.as_ref().map_or("", |i| i.as_str()),
                task.bucket
            ).into())),
        }
    }

    fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        match self.get_item(key(task_pk(id), "TASK"))? {
            Some(item) => self.with_progress(task_from(&item)?).map(Some),
            None => Ok(None),
        }
    }

    fn set_upload(&self, id: &TaskId, upload_id: &str) -> Result<()> {
        self.set(id, "uploadId", s(upload_id))
    }

    fn set_image(&self, id: &TaskId, image: &ImageId) -> Result<()> {
        self.set(id, "imageId", s(image.as_str()))
    }

    fn set_units_total(&self, id: &TaskId, units: u64) -> Result<()> {
        self.set(id, "unitsTotal", n(units))
    }

    fn record_unit(&self, id: &TaskId, unit: u64, record_json: &str) -> Result<bool> {
        let mut item = key(task_pk(id), &unit_sk(unit));
        item.insert("record".into(), s(record_json));
        item.insert(
            TTL_ATTRIBUTE.into(),
            n(expires_at_secs(
                amistore_core::engine::now_ms() + RETENTION_MS,
            )),
        );
        let call = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send();
        condition_held(
            self.bridge.run(call),
            format_args!("recording unit {unit} of {id}"),
        )
    }

    fn unit_recorded(&self, id: &TaskId, unit: u64) -> Result<bool> {
        Ok(self.get_item(key(task_pk(id), &unit_sk(unit)))?.is_some())
    }

    fn units(&self, id: &TaskId) -> Result<Vec<(u64, String)>> {
        self.partition(task_pk(id), Some("UNIT#"), "reading units")?
            .iter()
            .map(|item| {
                let unit = text(item, "sk")
                    .and_then(|sk| sk.strip_prefix("UNIT#"))
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| damaged("unit number", item))?;
                let record = text(item, "record").ok_or_else(|| damaged("record", item))?;
                Ok((unit, record.to_owned()))
            })
            .collect()
    }

    fn claim_end(&self, id: &TaskId, request: &ClaimRequest<'_>) -> Result<Claim> {
        let task = self
            .get(id)?
            .ok_or_else(|| Error::NotFound(format!("task {id} does not exist").into()))?;
        if task.state != TaskState::InProgress {
            return Ok(Claim::Taken(task));
        }
        match &task.claim {
            Some(c) if c.ending == request.ending => return Ok(Claim::Held(task)),
            Some(c)
                if request
                    .overrule_before_ms
                    .is_none_or(|before| c.at_ms >= before) =>
            {
                return Ok(Claim::Taken(task));
            }
            _ => {}
        }
        // The decision above was read; the write is conditioned on what was
        // read, so a claim made in between wins and this one is Taken.
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), "TASK")))
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":running", s(TaskState::InProgress.as_str()))
            .expression_attribute_values(":ending", s(request.ending.as_str()))
            .expression_attribute_values(":now", n(request.now_ms))
            .expression_attribute_values(":done", n(task.units_done));
        update = match &task.claim {
            None => {
                update.condition_expression("#state = :running AND attribute_not_exists(ending)")
            }
            Some(c) => update
                .condition_expression("#state = :running AND ending = :was AND claimedAt = :wasAt")
                .expression_attribute_values(":was", s(c.ending.as_str()))
                .expression_attribute_values(":wasAt", n(c.at_ms)),
        };
        let reason = request.reason.filter(|_| request.ending == Ending::Fail);
        update = match reason {
            Some(r) => update
                .update_expression(
                    "SET ending = :ending, claimedAt = :now, unitsDone = :done, endingReason = :reason",
                )
                .expression_attribute_values(":reason", s(r)),
            None => update.update_expression(
                "SET ending = :ending, claimedAt = :now, unitsDone = :done REMOVE endingReason",
            ),
        };
        let written = self.bridge.run(update.send());
        if condition_held(written, format_args!("claiming the end of task {id}"))? {
            return Ok(Claim::Held(Task {
                claim: Some(EndClaim {
                    ending: request.ending,
                    reason: reason.map(str::to_owned),
                    at_ms: request.now_ms,
                }),
                ..task
            }));
        }
        // Someone else claimed or ended it meanwhile: ask again (their claim
        // may be ours to re-enter, or to leave alone).
        let now = self
            .get(id)?
            .ok_or_else(|| Error::NotFound(format!("task {id} does not exist").into()))?;
        Ok(match &now.claim {
            Some(c) if now.state == TaskState::InProgress && c.ending == request.ending => {
                Claim::Held(now)
            }
            _ => Claim::Taken(now),
        })
    }

    fn finish(&self, id: &TaskId, ending: Ending, now_ms: i64) -> Result<bool> {
        let Some(task) = self.get_item(key(task_pk(id), "TASK"))? else {
            return Err(Error::NotFound(format!("task {id} does not exist").into()));
        };
        let task = task_from(&task)?;
        if task.state != TaskState::InProgress || task.ending() != Some(ending) {
            return Ok(false);
        }
        let state = ending.final_state();
        let end = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), "TASK")))
            .condition_expression("#state = :running AND ending = :ending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":running", s(TaskState::InProgress.as_str()))
            .expression_attribute_values(":ending", s(ending.as_str()))
            .expression_attribute_values(":state", s(state.as_str()))
            .expression_attribute_values(":ended", n(now_ms));
        let end = match ending {
            Ending::Fail => end
                .update_expression("SET #state = :state, endedAt = :ended, reason = endingReason"),
            Ending::Complete => end.update_expression("SET #state = :state, endedAt = :ended"),
        };
        let release = built(
            "the quota release",
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(quota_key(&task.account, task.kind)))
                .update_expression("ADD gib :minus")
                .expression_attribute_values(":minus", n(-(task.size_gib as i64)))
                .build(),
        )?;
        let unmark = built(
            "the running marker's removal",
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(running_key(id)))
                .build(),
        )?;
        let mut items = vec![
            TransactWriteItem::builder()
                .update(built("the state change", end.build())?)
                .build(),
            TransactWriteItem::builder().update(release).build(),
            TransactWriteItem::builder().delete(unmark).build(),
        ];
        if let Some(lock) = copy_lock(&task) {
            let unlock = built(
                "the copy unlock",
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(lock))
                    .condition_expression("attribute_not_exists(pk) OR taskId = :id")
                    .expression_attribute_values(":id", s(id.as_str()))
                    .build(),
            )?;
            items.push(TransactWriteItem::builder().delete(unlock).build());
        }
        match self
            .transact(items, None, &format!("ending task {id}"))?
            .as_deref()
        {
            None => Ok(true),
            // Someone else ended it, or took its end over, between our read
            // and our write.
            Some([true, ..]) => Ok(false),
            Some(_) => Err(Error::Transient(
                format!("ending task {id}: its copy lock changed meanwhile").into(),
            )),
        }
    }

    fn list(&self, account: &AccountId, kind: TaskKind, now_ms: i64) -> Result<Vec<Task>> {
        let since = now_ms - RETENTION_MS;
        let items = self.all_pages(|start| {
            let call = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_ACCOUNT_INDEX)
                .key_condition_expression("#by = :by AND startedAt > :since")
                .expression_attribute_names("#by", BY_ACCOUNT_INDEX)
                .expression_attribute_values(":by", s(format!("{account}#{}", kind.as_str())))
                .expression_attribute_values(":since", n(since))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send();
            async move {
                let out = call.await.map_err(|e| sdk("listing tasks", e))?;
                Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
            }
        })?;
        let mut tasks = items
            .iter()
            .map(|item| self.with_progress(task_from(item)?))
            .collect::<Result<Vec<_>>>()?;
        // Newest first; equal start times in a stable order (the index's).
        tasks.sort_by_key(|t| std::cmp::Reverse(t.started_at_ms));
        Ok(tasks)
    }

    fn in_progress(&self) -> Result<Vec<Task>> {
        let markers = self.partition(
            RUNNING_PK.into(),
            Some("TASK#"),
            "listing tasks in progress",
        )?;
        let mut tasks = Vec::with_capacity(markers.len());
        for marker in &markers {
            let id: TaskId = text(marker, "sk")
                .and_then(|sk| sk.strip_prefix("TASK#"))
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| damaged("running marker", marker))?;
            // Markers come and go in the transactions that set the state, so
            // every marked task is in progress; the check is for a table
            // edited by hand.
            match self.get(&id)? {
                Some(task) if task.state == TaskState::InProgress => tasks.push(task),
                _ => {}
            }
        }
        tasks.sort_by_key(|t| t.started_at_ms);
        Ok(tasks)
    }

    fn in_progress_gib(&self, account: &AccountId, kind: TaskKind) -> Result<u64> {
        Ok(self
            .get_item(quota_key(account, kind))?
            .and_then(|item| number::<i64>(&item, "gib"))
            .map_or(0, |g| g.max(0) as u64))
    }

    fn counters(&self) -> Result<Vec<(AccountId, TaskKind, u64)>> {
        let items = self.partition(QUOTA_PK.into(), None, "reading quota counters")?;
        items
            .iter()
            .map(|item| {
                let (account, kind) = text(item, "sk")
                    .and_then(|sk| sk.split_once('#'))
                    .and_then(|(a, k)| Some((a.parse().ok()?, TaskKind::parse(k)?)))
                    .ok_or_else(|| damaged("counter key", item))?;
                let gib = number::<i64>(item, "gib").unwrap_or(0);
                Ok((account, kind, gib.max(0) as u64))
            })
            .collect()
    }

    fn correct_counter(
        &self,
        account: &AccountId,
        kind: TaskKind,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        let call = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(quota_key(account, kind)))
            .update_expression("SET gib = :to")
            .condition_expression("gib = :from")
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":to", n(to))
            .send();
        condition_held(self.bridge.run(call), "correcting a quota counter")
    }

    fn renew_lease(
        &self,
        account: &AccountId,
        kind: TaskKind,
        lease: &RateLease,
        now_ms: i64,
    ) -> Result<Vec<RateLease>> {
        let pk = budget_pk(account, kind);
        let mut item = key(pk.clone(), &lease.holder);
        item.insert("taskId".into(), s(lease.task.as_str()));
        item.insert("rate".into(), n(lease.rate));
        item.insert("leaseExpires".into(), n(lease.expires_ms));
        item.insert(
            TTL_ATTRIBUTE.into(),
            n(expires_at_secs(lease.expires_ms + 86_400_000)),
        );
        let call = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send();
        self.bridge
            .run(call)
            .map_err(|e| sdk("renewing a rate lease", e))?;
        let mut leases = Vec::new();
        for item in self.partition(pk.clone(), None, "reading the rate leases")? {
            let holder = parsed::<String>(&item, "sk")?;
            let expires_ms: i64 =
                number(&item, "leaseExpires").ok_or_else(|| damaged("leaseExpires", &item))?;
            if expires_ms <= now_ms {
                // Lapsed: its unit died. Deleted unless renewed meanwhile.
                let call = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key(pk.clone(), &holder)))
                    .condition_expression("leaseExpires <= :now")
                    .expression_attribute_values(":now", n(now_ms))
                    .send();
                let _ = self.bridge.run(call);
                continue;
            }
            leases.push(RateLease {
                task: parsed(&item, "taskId")?,
                rate: number(&item, "rate").ok_or_else(|| damaged("rate", &item))?,
                holder,
                expires_ms,
            });
        }
        Ok(leases)
    }

    fn drop_lease(&self, account: &AccountId, kind: TaskKind, holder: &str) -> Result<()> {
        let call = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(budget_pk(account, kind), holder)))
            .send();
        self.bridge
            .run(call)
            .map_err(|e| sdk("dropping a rate lease", e))?;
        Ok(())
    }
}

/// The partition of one account's budget for `kind` units.
fn budget_pk(account: &AccountId, kind: TaskKind) -> String {
    format!("BUDGET#{account}#{}", kind.as_str())
}
