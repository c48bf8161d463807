//! `amistore bucket …`: local buckets, which are folders under `<data-dir>/s3`.

use std::path::Path;
use std::process::ExitCode;

use amistore_core::ids::AccountId;
use amistore_core::storage::BucketName;
use amistore_local::bucket_store::BucketStore;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Create a bucket (creating an existing one is fine).
    Create {
        /// The bucket's name (S3's rules: 3-63 lowercase letters, digits, '.', '-').
        name: BucketName,
        /// The account it belongs to (for `serve` with several accounts).
        #[arg(long, default_value = "000000000000")]
        owner: AccountId,
    },
}

pub fn run(cmd: BucketCommand, data_dir: &Path) -> Result<ExitCode> {
    let buckets = BucketStore::open(data_dir)?;
    match cmd {
        BucketCommand::Create { name, owner } => {
            buckets.create_bucket_for(&name, &owner)?;
            println!("{}", data_dir.join("s3").join(name.as_str()).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
