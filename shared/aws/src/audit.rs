//! What IAM must allow for each request the adapters send, recorded as they
//! send it.
//!
//! moto checks no IAM, so a role that misses an action passes every test and
//! fails on the first real call. With an [`Audit`] sink in the
//! [`Overrides`](crate::Overrides), every SDK client gets an interceptor that
//! turns each request into the permissions AWS evaluates for it (action,
//! resource ARN, condition keys), the way each service's authorisation
//! reference describes it. The test suite records them per function and
//! evaluates them against that function's role from the translated template.
//!
//! Besides the operation's own action, a few requests need more:
//! - HeadObject needs `s3:ListBucket` on the bucket for a missing key to
//!   answer 404 rather than 403, which is how "absent" is told from "denied";
//! - TransactWriteItems is authorised per item (PutItem, UpdateItem,
//!   DeleteItem, ConditionCheckItem on each item's table);
//! - RegisterImage with tag specifications needs `ec2:CreateTags` with
//!   `ec2:CreateAction`, and is authorised on each snapshot it maps;
//! - a tagging header on an upload needs `s3:PutObjectTagging`;
//! - StartSnapshot under a KMS key needs the key actions the EBS direct APIs
//!   document.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// One permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Permission {
    /// The API call, as `Service.Operation`.
    pub call: String,
    /// The IAM action, `service:Action`.
    pub action: String,
    /// The resource ARN (or `*` for actions without resource types).
    pub resource: String,
    /// Condition keys the request carries, when a policy may test them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
}

/// Receives the permissions of every request sent.
pub trait Audit: Send + Sync {
    /// Records one permission.
    fn record(&self, permission: Permission);
}

/// The interceptor every client of an audited [`AwsPorts`](crate::AwsPorts) carries.
#[derive(Clone)]
pub(crate) struct AuditInterceptor {
    audit: Arc<dyn Audit>,
    region: String,
    account: String,
}

impl std::fmt::Debug for AuditInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditInterceptor")
            .field("region", &self.region)
            .finish()
    }
}

impl AuditInterceptor {
    pub(crate) fn new(audit: Arc<dyn Audit>, region: &str, account: &str) -> Self {
        Self {
            audit,
            region: region.to_owned(),
            account: account.to_owned(),
        }
    }
}

/// Collects a request's permissions.
struct Needs<'a> {
    call: String,
    region: &'a str,
    account: &'a str,
    out: Vec<Permission>,
}

impl Needs<'_> {
    fn add(&mut self, action: &str, resource: impl Into<String>) -> &mut Permission {
        self.out.push(Permission {
            call: self.call.clone(),
            action: action.to_owned(),
            resource: resource.into(),
            context: BTreeMap::new(),
        });
        self.out
            .last_mut()
            .unwrap_or_else(|| unreachable!("just pushed"))
    }

    fn bucket(&self, bucket: Option<&str>) -> String {
        format!("arn:aws:s3:::{}", bucket.unwrap_or_default())
    }

    fn object(&self, bucket: Option<&str>, key: Option<&str>) -> String {
        format!(
            "arn:aws:s3:::{}/{}",
            bucket.unwrap_or_default(),
            key.unwrap_or_default()
        )
    }

    fn table(&self, table: Option<&str>) -> String {
        format!(
            "arn:aws:dynamodb:{}:{}:table/{}",
            self.region,
            self.account,
            table.unwrap_or_default()
        )
    }

    fn snapshot(&self, id: Option<&str>) -> String {
        format!(
            "arn:aws:ec2:{}::snapshot/{}",
            self.region,
            id.unwrap_or("*")
        )
    }

    fn image(&self, id: Option<&str>) -> String {
        format!("arn:aws:ec2:{}::image/{}", self.region, id.unwrap_or("*"))
    }

    /// The EC2 resource an id names (images and snapshots are what amistore tags).
    fn ec2_resource(&self, id: &str) -> String {
        match id.split_once('-') {
            Some(("snap", _)) => self.snapshot(Some(id)),
            _ => self.image(Some(id)),
        }
    }
}

macro_rules! input {
    ($ctx:expr, $ty:path) => {
        $ctx.input().downcast_ref::<$ty>()
    };
}

impl Intercept for AuditInterceptor {
    fn name(&self) -> &'static str {
        "AmistoreAudit"
    }

    // Not `read_before_execution`: the operation's metadata is not in the
    // config bag yet there.
    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(meta) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let mut needs = Needs {
            call: format!("{}.{}", meta.service(), meta.name()),
            region: &self.region,
            account: &self.account,
            out: Vec::new(),
        };
        s3(context, &mut needs);
        dynamodb(context, &mut needs);
        ec2(context, &mut needs);
        ebs(context, &mut needs);
        others(context, &mut needs);
        if needs.out.is_empty() && meta.name() != "GetCallerIdentity" {
            // An operation this table does not know: record it so the check
            // fails loudly instead of letting it through unexamined.
            let call = needs.call.clone();
            needs.add("unknown:Unmapped", call);
        }
        for p in needs.out {
            self.audit.record(p);
        }
        Ok(())
    }
}

fn s3(ctx: &BeforeSerializationInterceptorContextRef<'_>, n: &mut Needs<'_>) {
    use aws_sdk_s3::operation as op;
    if let Some(i) = input!(ctx, op::head_bucket::HeadBucketInput) {
        let r = n.bucket(i.bucket());
        n.add("s3:ListBucket", r);
    } else if let Some(i) = input!(ctx, op::create_bucket::CreateBucketInput) {
        let r = n.bucket(i.bucket());
        n.add("s3:CreateBucket", r);
    } else if let Some(i) = input!(ctx, op::create_multipart_upload::CreateMultipartUploadInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:PutObject", r.clone());
        if i.tagging().is_some() {
            n.add("s3:PutObjectTagging", r);
        }
    } else if let Some(i) = input!(ctx, op::upload_part::UploadPartInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:PutObject", r);
    } else if let Some(i) = input!(
        ctx,
        op::complete_multipart_upload::CompleteMultipartUploadInput
    ) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:PutObject", r);
    } else if let Some(i) = input!(ctx, op::abort_multipart_upload::AbortMultipartUploadInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:AbortMultipartUpload", r);
    } else if let Some(i) = input!(ctx, op::list_multipart_uploads::ListMultipartUploadsInput) {
        let r = n.bucket(i.bucket());
        n.add("s3:ListBucketMultipartUploads", r);
    } else if let Some(i) = input!(ctx, op::put_object::PutObjectInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:PutObject", r.clone());
        if i.tagging().is_some() {
            n.add("s3:PutObjectTagging", r);
        }
    } else if let Some(i) = input!(ctx, op::delete_object::DeleteObjectInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:DeleteObject", r);
    } else if let Some(i) = input!(ctx, op::head_object::HeadObjectInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:GetObject", r);
        // Without it, S3 answers 403 for a missing key instead of 404.
        let b = n.bucket(i.bucket());
        n.add("s3:ListBucket", b);
    } else if let Some(i) = input!(ctx, op::get_object::GetObjectInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:GetObject", r);
    } else if let Some(i) = input!(ctx, op::get_object_tagging::GetObjectTaggingInput) {
        let r = n.object(i.bucket(), i.key());
        n.add("s3:GetObjectTagging", r);
    }
}

fn dynamodb(ctx: &BeforeSerializationInterceptorContextRef<'_>, n: &mut Needs<'_>) {
    use aws_sdk_dynamodb::operation as op;
    if let Some(i) = input!(ctx, op::get_item::GetItemInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:GetItem", r);
    } else if let Some(i) = input!(ctx, op::put_item::PutItemInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:PutItem", r);
    } else if let Some(i) = input!(ctx, op::update_item::UpdateItemInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:UpdateItem", r);
    } else if let Some(i) = input!(ctx, op::delete_item::DeleteItemInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:DeleteItem", r);
    } else if let Some(i) = input!(ctx, op::query::QueryInput) {
        let mut r = n.table(i.table_name());
        if let Some(index) = i.index_name() {
            r = format!("{r}/index/{index}");
        }
        n.add("dynamodb:Query", r);
    } else if let Some(i) = input!(ctx, op::transact_write_items::TransactWriteItemsInput) {
        for item in i.transact_items() {
            if let Some(p) = item.put() {
                let r = n.table(Some(p.table_name()));
                n.add("dynamodb:PutItem", r);
            }
            if let Some(u) = item.update() {
                let r = n.table(Some(u.table_name()));
                n.add("dynamodb:UpdateItem", r);
            }
            if let Some(d) = item.delete() {
                let r = n.table(Some(d.table_name()));
                n.add("dynamodb:DeleteItem", r);
            }
            if let Some(c) = item.condition_check() {
                let r = n.table(Some(c.table_name()));
                n.add("dynamodb:ConditionCheckItem", r);
            }
        }
    } else if let Some(i) = input!(ctx, op::describe_table::DescribeTableInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:DescribeTable", r);
    } else if let Some(i) = input!(ctx, op::create_table::CreateTableInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:CreateTable", r);
    } else if let Some(i) = input!(ctx, op::update_time_to_live::UpdateTimeToLiveInput) {
        let r = n.table(i.table_name());
        n.add("dynamodb:UpdateTimeToLive", r);
    }
}

fn ec2(ctx: &BeforeSerializationInterceptorContextRef<'_>, n: &mut Needs<'_>) {
    use aws_sdk_ec2::operation as op;
    if input!(ctx, op::describe_images::DescribeImagesInput).is_some() {
        n.add("ec2:DescribeImages", "*");
    } else if input!(ctx, op::describe_snapshots::DescribeSnapshotsInput).is_some() {
        n.add("ec2:DescribeSnapshots", "*");
    } else if let Some(i) = input!(
        ctx,
        op::describe_image_attribute::DescribeImageAttributeInput
    ) {
        let r = n.image(i.image_id());
        n.add("ec2:DescribeImageAttribute", r);
    } else if let Some(i) = input!(ctx, op::register_image::RegisterImageInput) {
        let r = n.image(None);
        n.add("ec2:RegisterImage", r.clone());
        for m in i.block_device_mappings() {
            if let Some(snap) = m.ebs().and_then(|e| e.snapshot_id()) {
                let s = n.snapshot(Some(snap));
                n.add("ec2:RegisterImage", s);
            }
        }
        if !i.tag_specifications().is_empty() {
            n.add("ec2:CreateTags", r)
                .context
                .insert("ec2:CreateAction".into(), "RegisterImage".into());
        }
    } else if let Some(i) = input!(ctx, op::create_tags::CreateTagsInput) {
        for id in i.resources() {
            let r = n.ec2_resource(id);
            n.add("ec2:CreateTags", r);
        }
    } else if let Some(i) = input!(ctx, op::delete_tags::DeleteTagsInput) {
        for id in i.resources() {
            let r = n.ec2_resource(id);
            n.add("ec2:DeleteTags", r);
        }
    } else if let Some(i) = input!(ctx, op::deregister_image::DeregisterImageInput) {
        let r = n.image(i.image_id());
        n.add("ec2:DeregisterImage", r);
    } else if let Some(i) = input!(ctx, op::delete_snapshot::DeleteSnapshotInput) {
        let r = n.snapshot(i.snapshot_id());
        n.add("ec2:DeleteSnapshot", r);
    }
}

fn ebs(ctx: &BeforeSerializationInterceptorContextRef<'_>, n: &mut Needs<'_>) {
    use aws_sdk_ebs::operation as op;
    if let Some(i) = input!(ctx, op::list_snapshot_blocks::ListSnapshotBlocksInput) {
        let r = n.snapshot(i.snapshot_id());
        n.add("ebs:ListSnapshotBlocks", r);
    } else if let Some(i) = input!(ctx, op::get_snapshot_block::GetSnapshotBlockInput) {
        let r = n.snapshot(i.snapshot_id());
        n.add("ebs:GetSnapshotBlock", r);
    } else if let Some(i) = input!(ctx, op::put_snapshot_block::PutSnapshotBlockInput) {
        let r = n.snapshot(i.snapshot_id());
        n.add("ebs:PutSnapshotBlock", r);
    } else if let Some(i) = input!(ctx, op::complete_snapshot::CompleteSnapshotInput) {
        let r = n.snapshot(i.snapshot_id());
        n.add("ebs:CompleteSnapshot", r);
    } else if let Some(i) = input!(ctx, op::start_snapshot::StartSnapshotInput) {
        let r = n.snapshot(None);
        n.add("ebs:StartSnapshot", r);
        // "To use encrypted snapshots with the EBS direct APIs" (the EBS user
        // guide): the caller's principal needs these on the key.
        if let Some(key) = i.kms_key_arn() {
            for action in [
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:DescribeKey",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo",
            ] {
                n.add(action, key);
            }
            n.add("kms:CreateGrant", key)
                .context
                .insert("kms:GrantIsForAWSResource".into(), "true".into());
        }
    }
}

fn others(ctx: &BeforeSerializationInterceptorContextRef<'_>, n: &mut Needs<'_>) {
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueInput;
    use aws_sdk_sfn::operation as op;
    if let Some(i) = input!(ctx, op::start_execution::StartExecutionInput) {
        n.add(
            "states:StartExecution",
            i.state_machine_arn().unwrap_or_default(),
        );
    } else if let Some(i) = input!(ctx, op::describe_execution::DescribeExecutionInput) {
        n.add(
            "states:DescribeExecution",
            i.execution_arn().unwrap_or_default(),
        );
    } else if let Some(i) = input!(ctx, op::stop_execution::StopExecutionInput) {
        n.add(
            "states:StopExecution",
            i.execution_arn().unwrap_or_default(),
        );
    } else if let Some(i) = input!(ctx, GetSecretValueInput) {
        n.add(
            "secretsmanager:GetSecretValue",
            i.secret_id().unwrap_or_default(),
        );
    }
}
