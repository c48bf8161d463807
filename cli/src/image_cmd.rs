//! `amistore image …`: images, in this machine's library or, with
//! `--endpoint`, on a server (imported and exported through its EBS direct
//! APIs and RegisterImage, listed with DescribeImages).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amistore_core::ids::{AccountId, ImageId};
use amistore_core::ports::ImageCatalog;
use amistore_local::image_library::ImageLibrary;
use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::archive_cmd::ImageArgs;
use crate::remote::Remote;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import raw disk files as a new AMI (sparse-aware); prints its id.
    /// Through a server, each disk's volume is its size rounded up to a
    /// whole GiB, as EBS volumes are.
    Import {
        #[command(flatten)]
        image: ImageArgs,
        /// The account the image belongs to (this machine only; through a
        /// server it is the caller's) [default: 000000000000].
        #[arg(long)]
        owner: Option<AccountId>,
    },
    /// List the images (a table, or `aws ec2 describe-images`' JSON).
    List {
        /// Whose images (this machine only) [default: 000000000000].
        #[arg(long)]
        owner: Option<AccountId>,
        /// Print JSON as `aws ec2 describe-images --owners self` does.
        #[arg(long)]
        json: bool,
    },
    /// Write an image's disks into a directory as sparse raw files.
    Export {
        /// The image.
        image_id: ImageId,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
        /// Whose image (this machine only) [default: 000000000000].
        #[arg(long)]
        owner: Option<AccountId>,
    },
}

/// Where the images are.
pub enum Images<'a> {
    /// This machine's library.
    Local(&'a Path),
    /// A server's, for the caller.
    Remote(Remote),
}

fn owner_of(owner: Option<AccountId>, images: &Images<'_>) -> Result<AccountId> {
    match (owner, images) {
        (Some(_), Images::Remote(_)) => bail!(
            "--owner is for this machine's library; through a server, images belong to the caller's account"
        ),
        (owner, _) => Ok(owner.unwrap_or_else(AccountId::local_default)),
    }
}

pub fn run(cmd: ImageCommand, images: Images<'_>, quiet: bool) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Import { image, owner } => {
            let owner = owner_of(owner, &images)?;
            let id = match &images {
                Images::Local(dir) => {
                    ImageLibrary::open(dir)?
                        .import(&owner, &image.spec(), &image.disks)?
                        .image_id
                }
                Images::Remote(r) => r.import_image(&image.spec(), &image.disks, quiet)?,
            };
            println!("{id}");
        }
        ImageCommand::List { owner, json } => {
            let owner = owner_of(owner, &images)?;
            let document = match &images {
                Images::Local(dir) => amistore_api::actions::describe_images_document(
                    &ImageLibrary::open(dir)?.list_images(&owner)?,
                ),
                Images::Remote(r) => r.describe_images(None)?,
            };
            let listed = crate::output::ec2_json(&document)?;
            if json {
                crate::output::print_json(&listed)?;
            } else {
                print_table(&listed);
            }
        }
        ImageCommand::Export {
            image_id,
            out,
            force,
            owner,
        } => {
            let owner = owner_of(owner, &images)?;
            let written = match &images {
                Images::Local(dir) => {
                    ImageLibrary::open(dir)?.export(&owner, &image_id, &out, force)?
                }
                Images::Remote(r) => r.export_image(&image_id, &out, force, quiet)?,
            };
            for path in written {
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// IMAGE ID, STATE, CREATED, DISKS, SIZE GiB and NAME of each image in a
/// DescribeImages answer.
fn print_table(listed: &Value) {
    println!(
        "{:<21}  {:<9}  {:<24}  {:>5}  {:>9}  NAME",
        "IMAGE ID", "STATE", "CREATED", "DISKS", "SIZE GiB"
    );
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    for image in listed["Images"].as_array().into_iter().flatten() {
        let disks: Vec<&Value> = image["BlockDeviceMappings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["Ebs"]["SnapshotId"].is_string())
            .collect();
        let gib: u64 = disks
            .iter()
            .filter_map(|m| m["Ebs"]["VolumeSize"].as_u64())
            .sum();
        println!(
            "{:<21}  {:<9}  {:<24}  {:>5}  {:>9}  {}",
            text(image, "ImageId"),
            text(image, "State"),
            text(image, "CreationDate"),
            disks.len(),
            gib,
            text(image, "Name")
        );
    }
}
