//! Files and folders of the data directory, for their owner's eyes only: the
//! data directory holds disk images, archives, and the key that signs
//! NextTokens. Folders are created 0700 and files 0600, whatever the umask
//! allows (it can only take permissions away).

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file amistore creates in its data directory.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder amistore creates in its data directory.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` and its missing parents, each 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Open options that create files 0600.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) `path` for writing, 0600.
pub fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Creates `path` for writing, 0600; fails if it exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    options().write(true).create_new(true).open(path)
}

/// Takes group and other permissions away from `path` (the data directory
/// itself, which earlier versions created 0755).
pub fn restrict(path: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}
