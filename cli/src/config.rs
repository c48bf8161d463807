//! The optional configuration file: defaults for the data directory, the
//! endpoint and the quota limits, so they need not be given on every command.
//!
//! ```toml
//! # ~/.config/amistore/config.toml (or --config FILE, or AMISTORE_CONFIG)
//! data_dir = "/srv/amistore"
//! endpoint = "http://127.0.0.1:9000"
//! store_limit_gib = 1200
//! restore_limit_gib = 600
//! ```
//!
//! The command line and the environment win over the file, the file over the
//! built-in defaults. An endpoint from the file applies to the commands that
//! can talk to a server; the others (archive, serve) run here as usual, and
//! `--endpoint ""` runs a command here despite the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// What the file may set.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The data directory.
    pub data_dir: Option<PathBuf>,
    /// The server the task, image and bucket commands talk to.
    pub endpoint: Option<String>,
    /// Admit store tasks while fewer GiB than this are in progress.
    pub store_limit_gib: Option<u64>,
    /// Admit restore tasks while fewer GiB than this are in progress.
    pub restore_limit_gib: Option<u64>,
}

/// The largest configuration file read (it holds four settings).
const MAX_BYTES: u64 = 64 * 1024;

impl Config {
    /// The file `given` (which must exist), else the user's
    /// `<config dir>/amistore/config.toml` if there is one, else nothing.
    pub fn load(given: Option<&Path>) -> Result<Self> {
        let path = match given {
            Some(p) => p.to_owned(),
            None => match dirs::config_dir().map(|d| d.join("amistore/config.toml")) {
                Some(p) if p.exists() => p,
                _ => return Ok(Self::default()),
            },
        };
        Self::read(&path)
    }

    fn read(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?
            .len();
        anyhow::ensure!(
            len <= MAX_BYTES,
            "the configuration file {} is {len} bytes; it holds a few settings, at most {MAX_BYTES} bytes",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "the configuration file {} is not valid (settings: data_dir, endpoint, store_limit_gib, restore_limit_gib)",
                path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_unknown_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/a\"\nendpoint = \"http://127.0.0.1:9000\"\nstore_limit_gib = 10\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/srv/a")));
        assert_eq!(c.store_limit_gib, Some(10));
        assert_eq!(c.restore_limit_gib, None);
        for bad in ["data-dir = \"x\"\n", "store_limit_gib = \"ten\"\n", "[x\n"] {
            std::fs::write(&path, bad).unwrap();
            let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
            assert!(err.contains("is not valid"), "{bad}: {err}");
        }
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
