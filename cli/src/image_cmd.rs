//! `amistore image …`: the local image library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amistore_core::ids::{AccountId, ImageId};
use amistore_local::image_library::{ImageLibrary, ImageRecord};
use anyhow::Result;
use clap::Subcommand;

use crate::archive_cmd::ImageArgs;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import raw disk files as a new AMI (sparse-aware); prints its id.
    Import(ImageArgs),
    /// List the library's images.
    List {
        /// Print JSON records instead of a table.
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
    },
}

pub fn run(cmd: ImageCommand, data_dir: &Path) -> Result<ExitCode> {
    let library = ImageLibrary::open(data_dir)?;
    // Embedded mode acts for one local account; the server maps credentials to accounts.
    let owner = AccountId::local_default();
    match cmd {
        ImageCommand::Import(args) => {
            let image = library.import(&owner, &args.spec(), &args.disks)?;
            println!("{}", image.image_id);
        }
        ImageCommand::List { json } => {
            let images = library.list(&owner)?;
            if json {
                crate::output::print_json(&images)?;
            } else {
                print_table(&images);
            }
        }
        ImageCommand::Export {
            image_id,
            out,
            force,
        } => {
            for path in library.export(&owner, &image_id, &out, force)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(images: &[ImageRecord]) {
    println!(
        "{:<21}  {:<9}  {:<20}  {:>5}  {:>9}  NAME",
        "IMAGE ID", "STATE", "CREATED", "DISKS", "SIZE GiB"
    );
    for image in images {
        let gib: u64 = image
            .snapshots
            .iter()
            .map(|s| s.volume_size.div_ceil(1 << 30))
            .sum();
        println!(
            "{:<21}  {:<9}  {:<20}  {:>5}  {:>9}  {}",
            image.image_id,
            image.state,
            image.creation_date,
            image.snapshots.len(),
            gib,
            image.metadata.name
        );
    }
}
