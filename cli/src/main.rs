//! `amistore`: store and restore AMIs as open archives. This file only parses
//! the command line and reports errors; the work is done by the library crates.

mod archive_cmd;
#[cfg(feature = "aws")]
mod aws_backend;
mod bucket_cmd;
mod config;
mod credentials;
mod image_cmd;
mod output;
mod progress;
mod remote;
mod serve_cmd;
mod task_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amistore_core::task::TaskKind;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "amistore",
    version,
    about = "Store and restore AMIs as open, verifiable archives"
)]
struct Cli {
    /// Print no progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true, help_heading = "Global options")]
    quiet: bool,

    /// Data directory (image library, buckets, task database)
    /// [default: the user's data directory, e.g. ~/.local/share/amistore].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AMISTORE_DATA_DIR",
        value_name = "DIR"
    )]
    data_dir: Option<PathBuf>,

    /// Send the task, image and bucket commands to this server
    /// (http[s]://HOST:PORT) instead of running them here, signed with the
    /// usual AWS credentials.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AMISTORE_ENDPOINT",
        value_name = "URL"
    )]
    endpoint: Option<String>,

    /// With --endpoint https://…: trust only the certificate authorities in
    /// this PEM file (for a server with a private or self-signed certificate),
    /// instead of the public ones.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AWS_CA_BUNDLE",
        value_name = "FILE"
    )]
    ca_bundle: Option<PathBuf>,

    /// Configuration file: defaults for the data directory, the endpoint
    /// and the quota limits [default: ~/.config/amistore/config.toml, if it
    /// exists].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AMISTORE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with archive files offline: pack, inspect, verify, extract.
    #[command(subcommand)]
    Archive(archive_cmd::ArchiveCommand),
    /// Images: import raw disks as AMIs, list, export; in the local library,
    /// or on a server with --endpoint.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Buckets and the archives stored in them: create, list, list objects,
    /// delete an object; folders under <data-dir>/s3, or a server's with
    /// --endpoint.
    #[command(subcommand)]
    Bucket(bucket_cmd::BucketCommand),
    /// Store an AMI as one object in a bucket (CreateStoreImageTask); prints
    /// the object key. Here it waits for the store to end; with --endpoint it
    /// returns at once unless --wait.
    StoreImage(task_cmd::StoreArgs),
    /// Restore an AMI from a stored object (CreateRestoreImageTask); prints
    /// the new AMI id. Here it waits for the restore to end; with --endpoint
    /// it returns at once unless --wait.
    RestoreImage(task_cmd::RestoreArgs),
    /// Serve the EC2 API (CreateStoreImageTask, DescribeStoreImageTasks,
    /// CreateRestoreImageTask, …), the EBS direct APIs and a subset of S3
    /// over the data directory, for the stock AWS CLI and SDKs.
    Serve(serve_cmd::ServeArgs),
    /// List store tasks of the last 31 days, newest first, as JSON shaped like
    /// the AWS CLI's output (DescribeStoreImageTasks).
    DescribeStoreImageTasks(task_cmd::DescribeArgs),
    /// List restore tasks of the last 31 days, newest first
    /// (DescribeRestoreImageTasks, amistore's extension).
    DescribeRestoreImageTasks(task_cmd::DescribeArgs),
    /// Cancel a store in progress: it ends Failed ("cancelled") and no object
    /// appears (CancelStoreImageTask, amistore's extension).
    CancelStoreImageTask(task_cmd::CancelArgs),
    /// Deregister an AMI, with its snapshots (DeregisterImage); frees the name
    /// of a failed restore's image.
    DeregisterImage(task_cmd::DeregisterArgs),
    /// Show the in-progress quotas of stores and restores: GiB in progress and
    /// the limit new tasks are admitted below (DescribeTaskQuotas, amistore's
    /// extension).
    DescribeTaskQuotas(task_cmd::QuotaArgs),
    /// Print a shell completion script (e.g. `amistore completions bash >
    /// ~/.local/share/bash-completion/completions/amistore`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page, in roff (`amistore man | man -l -`).
    Man,
}

fn data_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .or_else(|| dirs::data_dir().map(|d| d.join("amistore")))
        .ok_or_else(|| {
            anyhow::anyhow!("no data directory: pass --data-dir or set AMISTORE_DATA_DIR")
        })
}

/// Whether `command` can work against a server.
fn talks_to_servers(command: &Command) -> bool {
    refuse_endpoint(command, Some(&String::new())).is_ok()
        && !matches!(command, Command::Completions { .. } | Command::Man)
}

/// The configuration file's limits, where the command takes limits and none
/// were given.
fn with_config_limits(command: &mut Command, config: &config::Config) {
    let limits = match command {
        Command::StoreImage(args) => &mut args.engine.limits,
        Command::RestoreImage(args) => &mut args.engine.limits,
        Command::DescribeTaskQuotas(args) => &mut args.engine.limits,
        Command::Serve(args) => &mut args.limits,
        _ => return,
    };
    *limits = limits.or_config(config);
}

/// The commands that work against a server; every other one refuses
/// `--endpoint` rather than silently acting on this machine.
fn refuse_endpoint(command: &Command, endpoint: Option<&String>) -> anyhow::Result<()> {
    let name = match command {
        Command::StoreImage(_)
        | Command::RestoreImage(_)
        | Command::DescribeStoreImageTasks(_)
        | Command::DescribeRestoreImageTasks(_)
        | Command::CancelStoreImageTask(_)
        | Command::DeregisterImage(_)
        | Command::DescribeTaskQuotas(_)
        | Command::Bucket(_)
        | Command::Image(_) => {
            return Ok(());
        }
        Command::Archive(_) => "archive (which works on local files)",
        Command::Serve(_) => "serve",
        Command::Completions { .. } | Command::Man => return Ok(()),
    };
    match endpoint {
        Some(url) => anyhow::bail!(
            "--endpoint {url} (or AMISTORE_ENDPOINT) cannot be used with `amistore {name}`; \
             the task, image and bucket commands talk to a server"
        ),
        None => Ok(()),
    }
}

fn describe(
    args: task_cmd::DescribeArgs,
    kind: TaskKind,
    endpoint: Option<String>,
    ca_bundle: Option<&Path>,
    data_dir_arg: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    match &endpoint {
        Some(url) => remote::Remote::new(url, ca_bundle).and_then(|r| r.describe_tasks(args, kind)),
        None => data_dir(data_dir_arg).and_then(|dir| {
            let backend = args.backend.clone();
            task_cmd::describe_tasks(args, kind, &dir, Default::default(), &backend)
        }),
    }
}

/// An error and its causes on one line, each cause shown once: an error that
/// already quotes its cause (`opening disk x: No such file…`) is not followed
/// by the cause again.
fn report(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn print_bytes(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush())?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("amistore: error: {}", report(&err));
            return ExitCode::from(2);
        }
    };
    // `--endpoint ""` runs the command here, whatever the file says.
    let explicit = cli.endpoint.clone().filter(|e| !e.is_empty());
    if let Err(err) = refuse_endpoint(&cli.command, explicit.as_ref()) {
        eprintln!("amistore: error: {err:#}");
        return ExitCode::from(2);
    }
    cli.endpoint = match cli.endpoint {
        Some(_) => explicit,
        None if talks_to_servers(&cli.command) => config.endpoint.clone(),
        None => None,
    };
    cli.data_dir = cli.data_dir.or(config.data_dir.clone());
    with_config_limits(&mut cli.command, &config);
    let quiet = cli.quiet;
    let ca_bundle = cli.ca_bundle.as_deref();
    let result = match cli.command {
        Command::Archive(cmd) => archive_cmd::run(cmd, quiet),
        Command::Image(cmd) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle)
                .and_then(|r| image_cmd::run(cmd, image_cmd::Images::Remote(r), quiet)),
            None => data_dir(cli.data_dir)
                .and_then(|dir| image_cmd::run(cmd, image_cmd::Images::Local(&dir), quiet)),
        },
        Command::Bucket(cmd) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle)
                .and_then(|r| bucket_cmd::run(cmd, bucket_cmd::Buckets::Remote(r))),
            None => data_dir(cli.data_dir)
                .and_then(|dir| bucket_cmd::run(cmd, bucket_cmd::Buckets::Local(&dir))),
        },
        Command::StoreImage(args) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle).and_then(|r| {
                let wait = args.wait;
                r.store(args, wait, quiet)
            }),
            None => data_dir(cli.data_dir).and_then(|dir| {
                let engine = args.engine.clone();
                task_cmd::store(args, &dir, engine.limits, &engine.backend, quiet)
            }),
        },
        Command::RestoreImage(args) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle).and_then(|r| {
                let wait = args.wait;
                r.restore(args, wait, quiet)
            }),
            None => data_dir(cli.data_dir).and_then(|dir| {
                let engine = args.engine.clone();
                task_cmd::restore(args, &dir, engine.limits, &engine.backend, quiet)
            }),
        },
        Command::DescribeStoreImageTasks(args) => {
            describe(args, TaskKind::Store, cli.endpoint, ca_bundle, cli.data_dir)
        }
        Command::DescribeRestoreImageTasks(args) => describe(
            args,
            TaskKind::Restore,
            cli.endpoint,
            ca_bundle,
            cli.data_dir,
        ),
        Command::CancelStoreImageTask(args) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle).and_then(|r| r.cancel_store(args)),
            None => data_dir(cli.data_dir).and_then(|dir| {
                let backend = args.backend.clone();
                task_cmd::cancel_store(args, &dir, Default::default(), &backend)
            }),
        },
        Command::DescribeTaskQuotas(args) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle).and_then(|r| r.describe_quotas()),
            None => data_dir(cli.data_dir).and_then(|dir| {
                task_cmd::describe_quotas(&dir, args.engine.limits, &args.engine.backend)
            }),
        },
        Command::DeregisterImage(args) => match &cli.endpoint {
            Some(url) => remote::Remote::new(url, ca_bundle).and_then(|r| r.deregister(args)),
            None => data_dir(cli.data_dir).and_then(|dir| {
                let backend = args.backend.clone();
                task_cmd::deregister(args, &dir, Default::default(), &backend)
            }),
        },
        // Rendered into memory first: writing to a closed pipe (`| head`) is
        // an error to report, not a panic in the generator.
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "amistore",
                &mut script,
            );
            print_bytes(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(anyhow::Error::from)
                .and_then(|()| print_bytes(&page))
        }
        Command::Serve(args) => data_dir(cli.data_dir).and_then(|dir| serve_cmd::run(args, &dir)),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("amistore: error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}
