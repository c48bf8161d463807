//! `manifest.json`: everything a restore needs, stored as the archive's last tar
//! member. See docs/format.md for the field-by-field specification.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::archive::tar::{MAX_NAME_LEN, MEMBER_HEADER_LEN};
use crate::blocks::{BLOCK_SIZE, BlockRanges};
use crate::image::{DeviceName, ImageMetadata, Tag};
use crate::{Detail, Error, Result};

/// Value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "amistore-archive";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest's tar member.
pub const MANIFEST_MEMBER: &str = "manifest.json";
/// Hash algorithm of the unit digests.
pub const UNIT_HASH: &str = "blake3";
/// Largest volume the format accepts (EBS's largest is 64 TiB).
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;

/// The archive's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for archives this build reads.
    pub version: u32,
    /// When the archive was written (RFC 3339, UTC). Also every tar member's mtime.
    pub stored_at: String,
    /// Hash algorithm of [`Unit::hash`]; always [`UNIT_HASH`].
    pub unit_hash: String,
    /// The AMI's metadata and tags.
    pub image: ImageMetadata,
    /// One entry per snapshot, in tar-member order.
    pub disks: Vec<Disk>,
    /// The units, in object order.
    pub units: Vec<Unit>,
}

/// One snapshot (disk) in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// tar member name holding the raw volume.
    pub member: String,
    /// Device the snapshot is mapped to in the AMI.
    pub device_name: DeviceName,
    /// The source snapshot id, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Volume size in bytes (a multiple of `blockSize`).
    pub volume_size: u64,
    /// Block size in bytes; 524288 in version 1.
    pub block_size: u64,
    /// Present (written) blocks as `[first, count]` runs.
    pub present: BlockRanges,
    /// Tags of the snapshot.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Disk {
    /// Number of blocks in the volume.
    pub fn block_count(&self) -> u64 {
        self.volume_size / self.block_size
    }

    /// Bytes of present blocks.
    pub fn present_bytes(&self) -> u64 {
        self.present.present_count() * self.block_size
    }
}

/// One unit: a block range of one disk, stored as one contiguous run of frames
/// (and, on S3, as one multipart part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unit {
    /// Index into `disks`.
    pub disk: usize,
    /// First block covered.
    pub first_block: u64,
    /// Number of blocks covered.
    pub block_count: u64,
    /// Bytes of tar header in front of the blocks (1536 on a disk's first unit, else 0).
    pub header_len: u64,
    /// Byte offset of the unit's first frame in the object.
    pub offset: u64,
    /// Bytes the unit occupies in the object, padding included.
    pub compressed_len: u64,
    /// Bytes the unit decompresses to: `headerLen + blockCount * blockSize`.
    pub decompressed_len: u64,
    /// BLAKE3 (hex) of the decompressed bytes of the unit's header and data frames,
    /// in order; hole frames contribute nothing.
    pub hash: String,
}

impl Manifest {
    /// BLAKE3 (hex) of the manifest's JSON: what a restore pins of it.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    /// The manifest's time stamp as seconds since the epoch (the tar mtime).
    pub fn mtime(&self) -> Result<u64> {
        mtime_of(&self.stored_at)
    }

    /// Parses and validates a manifest. A manifest of another version is reported
    /// as such even if the rest of it has a shape this build does not know.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            version: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(json)
            .map_err(|e| Error::Malformed(Detail::because("manifest.json is not valid JSON", e)))?;
        if probe.format.as_deref() != Some(FORMAT_NAME) {
            return Err(Error::NotAnArchive(
                format!(
                    "manifest format is {:?}, expected {FORMAT_NAME:?}",
                    probe.format
                )
                .into(),
            ));
        }
        match probe.version {
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(Error::UnsupportedVersion {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            None => return Err(Error::malformed("manifest has no version")),
        }
        let manifest: Manifest = serde_json::from_slice(json).map_err(|e| {
            Error::Malformed(Detail::because("manifest.json does not fit version 1", e))
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every internal consistency rule of the format.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Malformed(format!("manifest: {msg}").into()));
        self.mtime()?;
        if self.unit_hash != UNIT_HASH {
            return bad(format!(
                "unit hash {:?} is not {UNIT_HASH:?}",
                self.unit_hash
            ));
        }
        if self.disks.is_empty() {
            return bad("no disks".into());
        }
        // What a restore registers and tags comes from here: the same rules
        // as the API's.
        self.image.validate().or_else(|e| bad(e.to_string()))?;
        for (i, disk) in self.disks.iter().enumerate() {
            check_member_name(&disk.member).or_else(|e| bad(format!("disk {i}: {e}")))?;
            if self.disks[..i].iter().any(|d| d.member == disk.member) {
                return bad(format!("disk {i}: member name {:?} repeats", disk.member));
            }
            if disk.block_size != BLOCK_SIZE {
                return bad(format!(
                    "disk {i}: block size {} is not {BLOCK_SIZE}",
                    disk.block_size
                ));
            }
            if disk.volume_size == 0
                || disk.volume_size % BLOCK_SIZE != 0
                || disk.volume_size > MAX_VOLUME_SIZE
            {
                return bad(format!(
                    "disk {i}: volume size {} is not a positive multiple of {BLOCK_SIZE} up to 64 TiB",
                    disk.volume_size
                ));
            }
            disk.present
                .validate(disk.block_count())
                .or_else(|e| bad(format!("disk {i}: {e}")))?;
            crate::image::check_unique_tag_keys(&disk.tags)
                .or_else(|e| bad(format!("disk {i}: {e}")))?;
        }
        for m in &self.image.block_device_mappings {
            if let Some(d) = m.ebs.as_ref().and_then(|e| e.disk)
                && d >= self.disks.len()
            {
                return bad(format!(
                    "{} maps to disk {d}, which does not exist",
                    m.device_name
                ));
            }
        }
        self.validate_units()
    }

    fn validate_units(&self) -> Result<()> {
        let bad = |i: usize, msg: String| {
            Err(Error::Malformed(
                format!("manifest: unit {i}: {msg}").into(),
            ))
        };
        let mut offset = 0u64;
        let mut units = self.units.iter().enumerate().peekable();
        for (d, disk) in self.disks.iter().enumerate() {
            let mut next_block = 0u64;
            while next_block < disk.block_count() {
                let Some((i, unit)) = units.next() else {
                    return Err(Error::malformed(format!(
                        "manifest: units stop before the end of disk {d}"
                    )));
                };
                if unit.disk != d || unit.first_block != next_block {
                    return bad(
                        i,
                        format!(
                            "covers disk {} from block {}, expected disk {d} from block {next_block}",
                            unit.disk, unit.first_block
                        ),
                    );
                }
                let end = unit.first_block.checked_add(unit.block_count);
                if unit.block_count == 0 || end.is_none_or(|e| e > disk.block_count()) {
                    return bad(
                        i,
                        format!("block count {} does not fit the disk", unit.block_count),
                    );
                }
                let header = if next_block == 0 {
                    MEMBER_HEADER_LEN
                } else {
                    0
                };
                if unit.header_len != header {
                    return bad(
                        i,
                        format!("header length {} should be {header}", unit.header_len),
                    );
                }
                if unit.decompressed_len != header + unit.block_count * BLOCK_SIZE {
                    return bad(
                        i,
                        format!(
                            "decompressed length {} contradicts its {} blocks",
                            unit.decompressed_len, unit.block_count
                        ),
                    );
                }
                if unit.offset != offset {
                    return bad(
                        i,
                        format!("starts at offset {}, expected {offset}", unit.offset),
                    );
                }
                offset = offset.checked_add(unit.compressed_len).ok_or_else(|| {
                    Error::malformed(format!("manifest: unit {i}: compressed length overflows"))
                })?;
                if unit.hash.len() != 64 || !unit.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return bad(i, "hash is not 64 hex digits".into());
                }
                next_block += unit.block_count;
            }
        }
        if let Some((i, _)) = units.next() {
            return bad(i, "lies beyond the last disk".into());
        }
        Ok(())
    }

    /// Total bytes of present blocks across disks.
    pub fn present_bytes(&self) -> u64 {
        self.disks.iter().map(Disk::present_bytes).sum()
    }
}

/// Seconds since the epoch of an RFC 3339 time stamp.
pub(crate) fn mtime_of(stored_at: &str) -> Result<u64> {
    let t = OffsetDateTime::parse(stored_at, &Rfc3339).map_err(|e| {
        Error::Malformed(Detail::because(
            format!("storedAt {stored_at:?} is not RFC 3339"),
            e,
        ))
    })?;
    u64::try_from(t.unix_timestamp())
        .map_err(|_| Error::malformed(format!("storedAt {stored_at:?} is before 1970")))
}

/// Formats a time as the manifest stores it: RFC 3339 in UTC, whole seconds.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A member name must be a plain relative file name: printable ASCII, no `/`,
/// not `.`/`..`, at most 100 bytes, and not the manifest's own name.
pub fn check_member_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "member name {name:?} must be 1 to {MAX_NAME_LEN} bytes"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
    {
        return Err(format!(
            "member name {name:?} must be printable ASCII without slashes"
        ));
    }
    if name == "." || name == ".." || name == MANIFEST_MEMBER {
        return Err(format!("member name {name:?} is reserved"));
    }
    Ok(())
}
