//! `amistore archive …`: offline tools for archive files.

use std::path::PathBuf;
use std::process::ExitCode;

use amistore_core::image::{Architecture, BootMode, DeviceName, ImageName, ImageSpec, Tag};
use amistore_local::archive_file::{self, Summary};
use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};

use crate::progress::Bar;

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// Make an archive from raw disk image files (sparse-aware).
    Pack(PackArgs),
    /// Show an archive's AMI, disks, sizes and compression ratio.
    Inspect {
        /// The archive.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every frame, hash and table; exit non-zero naming the first bad unit.
    Verify {
        /// The archive.
        file: PathBuf,
        #[command(flatten)]
        threads: Threads,
    },
    /// Write one sparse raw file per disk, plus manifest.json, into a directory.
    Extract {
        /// The archive.
        file: PathBuf,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        threads: Threads,
    },
}

#[derive(Args)]
pub struct Threads {
    /// Worker threads for (de)compression [default: one per CPU].
    #[arg(long)]
    threads: Option<usize>,
}

impl Threads {
    fn get(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

#[derive(Args)]
pub struct PackArgs {
    /// The archive to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    image: ImageArgs,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    threads: Threads,
}

/// What describes an image made from raw disks (shared by `archive pack` and
/// `image import`).
#[derive(Args)]
pub struct ImageArgs {
    /// AMI name (3–128 characters).
    #[arg(long)]
    name: ImageName,
    /// AMI description.
    #[arg(long)]
    description: Option<String>,
    /// CPU architecture: i386, x86_64, arm64, x86_64_mac or arm64_mac.
    #[arg(long, default_value = "x86_64")]
    architecture: Architecture,
    /// Boot mode: legacy-bios, uefi or uefi-preferred.
    #[arg(long)]
    boot_mode: Option<BootMode>,
    /// Root device [default: the first disk's device].
    #[arg(long)]
    root_device_name: Option<DeviceName>,
    /// AMI tag, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<Tag>,
    /// A disk, DEVICE=PATH, e.g. /dev/xvda=root.raw (repeatable, in order).
    /// A raw disk image whose size is a whole number of 512 KiB blocks
    /// (`truncate -s %512K FILE` pads one); qcow2, VMDK, VHD and compressed
    /// files are refused with the command that converts them.
    #[arg(long = "disk", value_name = "DEVICE=PATH", required = true, value_parser = parse_disk)]
    pub disks: Vec<(DeviceName, PathBuf)>,
}

impl ImageArgs {
    /// The image description the arguments give.
    pub fn spec(&self) -> ImageSpec {
        ImageSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            architecture: self.architecture,
            boot_mode: self.boot_mode,
            root_device_name: self.root_device_name.clone(),
            tags: self.tags.clone(),
        }
    }
}

pub fn parse_disk(s: &str) -> Result<(DeviceName, PathBuf)> {
    let (device, path) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("disk {s:?} is not of the form DEVICE=PATH"))?;
    Ok((device.parse()?, PathBuf::from(path)))
}

pub fn run(cmd: ArchiveCommand, quiet: bool) -> Result<ExitCode> {
    match cmd {
        ArchiveCommand::Pack(args) => {
            let manifest = archive_file::pack(
                &args.out,
                &args.image.spec(),
                &args.image.disks,
                args.threads.get(),
                args.force,
                &mut Bar::new("packing", quiet),
            )?;
            let size = std::fs::metadata(&args.out)
                .map(|m| m.len())
                .unwrap_or_default();
            if !quiet {
                let disks = manifest.disks.len();
                eprintln!(
                    "wrote {} ({disks} disk{}, {} present, archive {})",
                    args.out.display(),
                    if disks == 1 { "" } else { "s" },
                    human(manifest.present_bytes()),
                    human(size)
                );
            }
        }
        ArchiveCommand::Inspect { file, json } => {
            let summary = archive_file::summary(&file)?;
            if json {
                crate::output::print_json(&summary)?;
            } else {
                print_summary(&summary);
            }
        }
        ArchiveCommand::Verify { file, threads } => {
            let verified =
                archive_file::verify(&file, threads.get(), &mut Bar::new("verifying", quiet))
                    .with_context(|| format!("{} failed verification", file.display()))?;
            println!(
                "{}: OK ({} units, {} frames, {} of data verified)",
                file.display(),
                verified.units,
                verified.frames,
                human(verified.present_bytes)
            );
        }
        ArchiveCommand::Extract {
            file,
            out,
            force,
            threads,
        } => {
            let manifest = archive_file::extract(
                &file,
                &out,
                threads.get(),
                force,
                &mut Bar::new("extracting", quiet),
            )?;
            for disk in &manifest.disks {
                println!("{}", out.join(&disk.member).display());
            }
            println!("{}", out.join("manifest.json").display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

fn print_summary(s: &Summary) {
    println!("name:          {}", s.name);
    if let Some(d) = &s.description {
        println!("description:   {d}");
    }
    if let Some(id) = &s.source_image_id {
        println!("source image:  {id}");
    }
    println!("architecture:  {}", s.architecture);
    if let Some(b) = &s.boot_mode {
        println!("boot mode:     {b}");
    }
    println!("root device:   {}", s.root_device_name);
    println!("stored at:     {}", s.stored_at);
    println!("format:        amistore-archive v{}", s.format_version);
    println!("disks:");
    for d in &s.disks {
        println!(
            "  {:<12} {:<24} volume {:>10}  present {:>10}",
            d.device_name,
            d.member,
            human(d.volume_size),
            human(d.present_bytes)
        );
    }
    println!("units:         {}", s.units);
    println!("present data:  {}", human(s.present_bytes));
    println!("archive size:  {}", human(s.archive_bytes));
    println!(
        "ratio:         {:.2}x (present data / archive size)",
        s.compression_ratio
    );
    if !s.tags.is_empty() {
        let tags: Vec<String> = s
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        println!("tags:          {}", tags.join(", "));
    }
}
