//! Raw disk image files, read and written sparsely.
//!
//! A block of a raw file is present when any byte of it is allocated
//! (SEEK_DATA/SEEK_HOLE), even if the allocated bytes are zeros; holes are never
//! read. Written back, present blocks are written in full (zero ones included,
//! so they are allocated again) and holes are left as holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use amistore_core::archive::BlockSource;
use amistore_core::blocks::{BLOCK_SIZE, BlockRanges};
use amistore_core::image::{DeviceName, ImageMetadata, ImageSpec};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::{Error, Result};

/// Which 512 KiB blocks of `file` (of `len` bytes) hold allocated data.
pub fn present_blocks(file: &File, len: u64) -> std::io::Result<BlockRanges> {
    let mut runs = Vec::new();
    let mut at = 0u64;
    while at < len {
        let data = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break,
            // A file system without hole reporting: everything counts as data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                runs.push(at / BLOCK_SIZE..len.div_ceil(BLOCK_SIZE));
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data))?.min(len);
        runs.push(data / BLOCK_SIZE..hole.div_ceil(BLOCK_SIZE));
        at = hole;
    }
    Ok(BlockRanges::from_unsorted(runs))
}

/// A file format that holds a disk image but is not one: archiving it as a
/// raw disk would make its container the disk's contents (an AMI that never
/// boots).
struct Container {
    /// What it is, for the message.
    name: &'static str,
    /// Where its signature is (negative: from the end of the file).
    offset: i64,
    signature: &'static [u8],
    /// What to do instead: a command to run on the file, or advice.
    instead: Instead,
}

enum Instead {
    /// Run this, with the file's path (and for a conversion, the output's).
    Run(&'static str),
    Advice(&'static str),
}

/// qemu-img's `convert` reads all the disk formats; it keeps holes as holes.
const CONVERT: Instead = Instead::Run("convert it to a raw disk first: qemu-img convert -O raw");

const CONTAINERS: &[Container] = &[
    Container {
        name: "a qcow2 image",
        offset: 0,
        signature: b"QFI\xfb",
        instead: CONVERT,
    },
    Container {
        name: "a VMDK image",
        offset: 0,
        signature: b"KDMV",
        instead: CONVERT,
    },
    Container {
        name: "a VMDK descriptor",
        offset: 0,
        signature: b"# Disk DescriptorFile",
        instead: CONVERT,
    },
    Container {
        name: "a VHDX image",
        offset: 0,
        signature: b"vhdxfile",
        instead: CONVERT,
    },
    Container {
        name: "a VHD image",
        offset: 0,
        signature: b"conectix",
        instead: CONVERT,
    },
    Container {
        name: "a VHD image",
        offset: -512,
        signature: b"conectix",
        instead: CONVERT,
    },
    Container {
        name: "a VDI image",
        offset: 0x40,
        signature: b"\x7f\x10\xda\xbe",
        instead: CONVERT,
    },
    Container {
        name: "an ISO 9660 image",
        offset: 0x8001,
        signature: b"CD001",
        instead: Instead::Advice(
            "an ISO is installation media, not a disk: install from it onto a raw disk first",
        ),
    },
    Container {
        name: "a gzip file",
        offset: 0,
        signature: b"\x1f\x8b",
        instead: Instead::Run("decompress it first: gunzip -k"),
    },
    Container {
        name: "an xz file",
        offset: 0,
        signature: b"\xfd7zXZ\x00",
        instead: Instead::Run("decompress it first: xz -dk"),
    },
    Container {
        name: "a bzip2 file",
        offset: 0,
        signature: b"BZh",
        instead: Instead::Run("decompress it first: bunzip2 -k"),
    },
    Container {
        name: "a zip file",
        offset: 0,
        signature: b"PK\x03\x04",
        instead: Instead::Run("unpack it first: unzip"),
    },
    Container {
        name: "a zstd file (an amistore archive?)",
        offset: 0,
        signature: b"\x28\xb5\x2f\xfd",
        instead: Instead::Advice(
            "decompress it first (zstd -d), or restore an archive with restore-image or extract it with archive extract",
        ),
    },
];

/// The container format `file` (of `size` bytes) is in, if any.
fn container_of(file: &File, size: u64) -> std::io::Result<Option<&'static Container>> {
    for c in CONTAINERS {
        let at = if c.offset < 0 {
            match size.checked_sub(c.offset.unsigned_abs()) {
                Some(at) => at,
                None => continue,
            }
        } else {
            c.offset as u64
        };
        if at + c.signature.len() as u64 > size {
            continue;
        }
        let mut buf = vec![0u8; c.signature.len()];
        file.read_exact_at(&mut buf, at)?;
        if buf == c.signature {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// A raw disk file opened for archiving: its size, present blocks and handle.
#[derive(Debug)]
pub struct RawDisk {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes (a multiple of 512 KiB).
    pub size: u64,
    /// Its allocated blocks.
    pub present: BlockRanges,
    file: File,
}

impl RawDisk {
    /// Opens a raw disk file. Its size must be a positive multiple of 512 KiB:
    /// padding it silently would change the disk.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("opening disk {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::InvalidInput(
                format!(
                    "{} is not a regular file; give a raw disk image file",
                    path.display()
                )
                .into(),
            ));
        }
        let size = meta.len();
        // Before the size rule: padding a container to 512 KiB must not make
        // it acceptable.
        let container = container_of(&file, size)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if let Some(c) = container {
            let shown = path.display();
            let command = match c.instead {
                Instead::Run(run) if run.contains("qemu-img") => {
                    let mut out = path.with_extension("raw");
                    if out == path {
                        out = path.with_extension("converted.raw");
                    }
                    format!("{run} {shown} {}", out.display())
                }
                Instead::Run(run) => format!("{run} {shown}"),
                Instead::Advice(advice) => advice.to_owned(),
            };
            return Err(Error::InvalidInput(
                format!("{shown} is {}, not a raw disk; {command}", c.name).into(),
            ));
        }
        if size == 0 || size % BLOCK_SIZE != 0 {
            return Err(Error::InvalidInput(
                format!(
                    "disk {} is {size} bytes, not a positive multiple of 512 KiB (524288 bytes); \
                 round it up with `truncate -s %512K {}`",
                    path.display(),
                    path.display()
                )
                .into(),
            ));
        }
        let present = present_blocks(&file, size)
            .map_err(|e| Error::io(format!("finding the data in {}", path.display()), e))?;
        Ok(Self {
            path: path.to_owned(),
            size,
            present,
            file,
        })
    }
}

/// Opens the raw disk files of an image described by `spec` and derives its
/// metadata from them (`archive pack` and `image import` start the same way).
pub fn open_image_disks(
    spec: &ImageSpec,
    disks: &[(DeviceName, PathBuf)],
) -> Result<(ImageMetadata, Vec<(DeviceName, RawDisk)>)> {
    let opened: Vec<(DeviceName, RawDisk)> = disks
        .iter()
        .map(|(device, path)| Ok((device.clone(), RawDisk::open(path)?)))
        .collect::<Result<_>>()?;
    let sizes: Vec<(DeviceName, u64)> = opened.iter().map(|(d, r)| (d.clone(), r.size)).collect();
    Ok((spec.to_metadata(&sizes)?, opened))
}

/// Raw disk files as a block source for the archive writer.
pub struct RawDisks(pub Vec<RawDisk>);

impl BlockSource for RawDisks {
    fn read_blocks(
        &self,
        disk: usize,
        first_block: u64,
        buf: &mut [u8],
    ) -> amistore_core::Result<()> {
        let d = self
            .0
            .get(disk)
            .ok_or_else(|| amistore_core::Error::InvalidInput(format!("no disk {disk}").into()))?;
        d.file
            .read_exact_at(buf, first_block * BLOCK_SIZE)
            .map_err(|e| {
                amistore_core::Error::io(
                    format!("reading block {first_block} of {}", d.path.display()),
                    e,
                )
            })
    }
}

/// A sparse raw file being filled block by block.
pub struct SparseFile {
    path: PathBuf,
    file: File,
}

impl SparseFile {
    /// Creates `path` (which must not exist) as an all-hole file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        // Disk images hold whatever their owner's disks held.
        let file = crate::private::create_new(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.set_len(size)
            .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Writes `bytes` at block `first_block`.
    pub fn write_blocks(&self, first_block: u64, bytes: &[u8]) -> amistore_core::Result<()> {
        self.file
            .write_all_at(bytes, first_block * BLOCK_SIZE)
            .map_err(|e| amistore_core::Error::io(format!("writing {}", self.path.display()), e))
    }

    /// Flushes the file to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

/// Blocks copied per read/write by [`copy_sparse`] (8 MiB).
const COPY_BLOCKS: u64 = 16;

/// Copies `src` into a new sparse file at `dst` (which must not exist): present
/// blocks are written in full, holes stay holes. The file is synced.
pub fn copy_sparse(src: &RawDisk, dst: &Path) -> Result<()> {
    let out = SparseFile::create(dst, src.size)?;
    let mut buf = Vec::new();
    for run in src.present.runs() {
        let mut block = run.start;
        while block < run.end {
            let count = (run.end - block).min(COPY_BLOCKS);
            buf.resize((count * BLOCK_SIZE) as usize, 0);
            src.file
                .read_exact_at(&mut buf, block * BLOCK_SIZE)
                .map_err(|e| Error::io(format!("reading {}", src.path.display()), e))?;
            out.write_blocks(block, &buf)?;
            block += count;
        }
    }
    out.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn holes_are_absent_and_allocated_zeros_are_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let f = SparseFile::create(&path, 8 * BLOCK_SIZE).unwrap();
        f.write_blocks(1, &vec![0u8; BLOCK_SIZE as usize]).unwrap();
        f.write_blocks(4, &[7u8; 10]).unwrap();
        f.sync().unwrap();
        let disk = RawDisk::open(&path).unwrap();
        assert_eq!(disk.present.runs(), &[1..2, 4..5]);
    }

    #[test]
    fn sparse_copies_keep_contents_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        let f = SparseFile::create(&src, 40 * BLOCK_SIZE).unwrap();
        f.write_blocks(0, &vec![0u8; BLOCK_SIZE as usize]).unwrap();
        f.write_blocks(3, &vec![9u8; 20 * BLOCK_SIZE as usize])
            .unwrap();
        let dst = dir.path().join("dst.raw");
        copy_sparse(&RawDisk::open(&src).unwrap(), &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(RawDisk::open(&dst).unwrap().present.runs(), &[0..1, 3..23]);
        assert!(
            copy_sparse(&RawDisk::open(&src).unwrap(), &dst).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn sizes_that_are_not_whole_blocks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.raw");
        File::create(&path)
            .unwrap()
            .write_all(&[1u8; 1000])
            .unwrap();
        let err = RawDisk::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("1000 bytes") && err.contains("truncate -s %512K"),
            "{err}"
        );
        File::create(dir.path().join("empty.raw")).unwrap();
        assert!(RawDisk::open(&dir.path().join("empty.raw")).is_err());
        assert!(RawDisk::open(dir.path()).is_err());
        assert!(
            RawDisk::open(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }
}
