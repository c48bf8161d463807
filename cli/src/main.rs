//! `amistore`: store and restore AMIs as open archives. This file only parses
//! the command line and reports errors; the work is done by the library crates.

mod archive_cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "amistore",
    version,
    about = "Store and restore AMIs as open, verifiable archives"
)]
struct Cli {
    /// Print no progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with archive files offline: pack, inspect, verify, extract.
    #[command(subcommand)]
    Archive(archive_cmd::ArchiveCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Archive(cmd) => archive_cmd::run(cmd, cli.quiet),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("amistore: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
