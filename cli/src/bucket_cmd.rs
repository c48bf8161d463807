//! `amistore bucket …`: buckets and the archives stored in them, on this
//! machine (folders under `<data-dir>/s3`) or, with `--endpoint`, on a server
//! through its S3 front.

use std::path::Path;
use std::process::ExitCode;

use amistore_core::ids::AccountId;
use amistore_core::ports::{BucketAdmin, BucketSummary, MAX_LIST_KEYS, ObjectStore, ObjectSummary};
use amistore_core::storage::{BucketName, BucketPath, ObjectKey};
use amistore_local::object_store::FolderObjectStore;
use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;

use crate::remote::Remote;

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Create a bucket (creating one you already have is fine).
    Create {
        /// The bucket's name (S3's rules: 3-63 lowercase letters, digits, '.', '-').
        name: BucketName,
        /// The account it belongs to (this machine only; through a server it
        /// is the caller's) [default: 000000000000].
        #[arg(long)]
        owner: Option<AccountId>,
    },
    /// List the buckets.
    List {
        /// Whose buckets (this machine only) [default: 000000000000].
        #[arg(long)]
        owner: Option<AccountId>,
        /// Print JSON (`aws s3api list-buckets`' shape).
        #[arg(long)]
        json: bool,
    },
    /// List the objects (stored archives) in a bucket, under an optional path.
    Objects {
        /// BUCKET or BUCKET/PATH.
        location: BucketPath,
        /// Print JSON (`aws s3api list-objects-v2`' shape).
        #[arg(long)]
        json: bool,
    },
    /// Delete an object (a stored archive).
    DeleteObject {
        /// BUCKET/KEY, e.g. backups/nightly/ami-0123456789abcdef0.bin.
        object: BucketPath,
    },
}

/// Where the buckets are.
pub enum Buckets<'a> {
    /// This machine's, for `owner`.
    Local(&'a Path),
    /// A server's, for the caller.
    Remote(Remote),
}

fn local_owner(owner: Option<AccountId>, buckets: &Buckets<'_>) -> Result<AccountId> {
    match (owner, buckets) {
        (Some(_), Buckets::Remote(_)) => bail!(
            "--owner is for this machine's buckets; through a server, buckets belong to the caller's account"
        ),
        (owner, _) => Ok(owner.unwrap_or_else(AccountId::local_default)),
    }
}

pub fn run(cmd: BucketCommand, buckets: Buckets<'_>) -> Result<ExitCode> {
    match cmd {
        BucketCommand::Create { name, owner } => {
            let owner = local_owner(owner, &buckets)?;
            match &buckets {
                Buckets::Local(dir) => {
                    BucketAdmin::create_bucket(&FolderObjectStore::open(dir)?, &owner, &name)?;
                    println!("{}", dir.join("s3").join(name.as_str()).display());
                }
                Buckets::Remote(r) => {
                    r.create_bucket(&name)?;
                    println!("{name}");
                }
            }
        }
        BucketCommand::List { owner, json } => {
            let owner = local_owner(owner, &buckets)?;
            let list = match &buckets {
                Buckets::Local(dir) => FolderObjectStore::open(dir)?.list_buckets(&owner)?,
                Buckets::Remote(r) => r.list_buckets()?,
            };
            print_buckets(&list, json)?;
        }
        BucketCommand::Objects { location, json } => {
            let prefix = match location.path.is_empty() {
                true => String::new(),
                false => format!("{}/", location.path.join("/")),
            };
            let objects = match &buckets {
                Buckets::Local(dir) => {
                    list_local(&FolderObjectStore::open(dir)?, &location.bucket, &prefix)?
                }
                Buckets::Remote(r) => r.list_objects(&location.bucket, &prefix)?,
            };
            print_objects(&objects, json)?;
        }
        BucketCommand::DeleteObject { object } => {
            let key: ObjectKey = match object.path.is_empty() {
                true => bail!("{} names a bucket; give BUCKET/KEY", object.bucket),
                false => object.path.join("/").parse()?,
            };
            match &buckets {
                Buckets::Local(dir) => {
                    let store = FolderObjectStore::open(dir)?;
                    if store.head_object(&object.bucket, &key)?.is_none() {
                        bail!("there is no object {key} in bucket {}", object.bucket);
                    }
                    ObjectStore::delete_object(&store, &object.bucket, &key)?;
                }
                Buckets::Remote(r) => r.delete_object(&object.bucket, &key)?,
            }
            eprintln!("deleted {}/{key}", object.bucket);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_local(
    store: &FolderObjectStore,
    bucket: &BucketName,
    prefix: &str,
) -> Result<Vec<ObjectSummary>> {
    if !store.has_bucket(bucket) {
        bail!("bucket {bucket} does not exist; create it with `amistore bucket create {bucket}`");
    }
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.list_objects(bucket, prefix, &after, MAX_LIST_KEYS)?;
        let done = page.len() < MAX_LIST_KEYS;
        if let Some(last) = page.last() {
            after = last.key.to_string();
        }
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

fn print_buckets(list: &[BucketSummary], json: bool) -> Result<()> {
    if json {
        let buckets: Vec<_> = list
            .iter()
            .map(|b| json!({"Name": b.name.as_str(), "CreationDate": b.creation_date}))
            .collect();
        return crate::output::print_json(&json!({ "Buckets": buckets }));
    }
    for b in list {
        println!("{}  {}", b.creation_date, b.name);
    }
    Ok(())
}

fn print_objects(list: &[ObjectSummary], json: bool) -> Result<()> {
    if json {
        let contents: Vec<_> = list
            .iter()
            .map(|o| {
                json!({
                    "Key": o.key.as_str(),
                    "LastModified": o.last_modified,
                    "ETag": o.etag,
                    "Size": o.size,
                    "StorageClass": "STANDARD",
                })
            })
            .collect();
        return crate::output::print_json(&json!({ "Contents": contents, "KeyCount": list.len() }));
    }
    for o in list {
        println!("{}  {:>14}  {}", o.last_modified, o.size, o.key);
    }
    Ok(())
}
