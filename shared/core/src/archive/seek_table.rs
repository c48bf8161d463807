//! The seek table at the end of every archive, in the zstd seekable format
//! (contrib/seekable_format, v0.1.0 footer layout).
//!
//! ```text
//! skippable frame:  magic 0x184D2A5E (u32 LE) | frame size (u32 LE)
//!                   entries: compressed size (u32 LE) | decompressed size (u32 LE)
//!                            [| checksum (u32 LE) if the descriptor's bit 7 is set]
//! footer (9 bytes): number of frames (u32 LE) | descriptor (u8) | magic 0x8F92EAB1 (u32 LE)
//! ```
//!
//! Every frame of the object before the seek table has an entry, skippable padding
//! included (with decompressed size 0). We write no per-entry checksums: each zstd
//! frame already carries its own.

use crate::archive::frame::read_u32_le;
use crate::{Error, Result};

/// Magic number at the very end of a seekable object.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Magic of the skippable frame that holds the seek table.
pub const SEEK_TABLE_FRAME_MAGIC: u32 = 0x184D_2A5E;
/// Length of the footer.
pub const FOOTER_LEN: u64 = 9;
/// Upper bound on frames a reader accepts (64 MiB of entries); keeps allocations
/// bounded whatever a footer claims.
pub const MAX_FRAMES: u32 = 8 * 1024 * 1024;

/// Sizes of one frame, as the seek table records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameEntry {
    /// Bytes the frame occupies in the object.
    pub compressed: u32,
    /// Bytes it decompresses to (0 for skippable frames).
    pub decompressed: u32,
}

/// What the footer says about the table in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Number of entries.
    pub frames: u32,
    /// Whether entries carry a checksum (4 more bytes each).
    pub checksums: bool,
}

impl Footer {
    /// Bytes per entry.
    pub fn entry_len(&self) -> u64 {
        if self.checksums { 12 } else { 8 }
    }

    /// Length of the whole seek-table frame, footer included.
    pub fn table_len(&self) -> u64 {
        8 + u64::from(self.frames) * self.entry_len() + FOOTER_LEN
    }
}

/// Serialises the seek table frame for `entries`.
pub fn encode(entries: &[FrameEntry]) -> Vec<u8> {
    let payload = entries.len() * 8 + FOOTER_LEN as usize;
    let mut out = Vec::with_capacity(8 + payload);
    out.extend_from_slice(&SEEK_TABLE_FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.compressed.to_le_bytes());
        out.extend_from_slice(&e.decompressed.to_le_bytes());
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out
}

/// Parses the footer from the last 9 bytes of an object of `object_len` bytes.
pub fn parse_footer(last9: &[u8], object_len: u64) -> Result<Footer> {
    let magic = read_u32_le(last9, 5).filter(|_| last9.len() == FOOTER_LEN as usize);
    let Some(magic) = magic else {
        return Err(Error::NotAnArchive(
            format!("object is {object_len} bytes, too short to hold a seek table").into(),
        ));
    };
    if magic != SEEKABLE_MAGIC {
        return Err(Error::NotAnArchive(format!(
            "last 4 bytes are {magic:#010x}, not the seekable magic {SEEKABLE_MAGIC:#010x} (truncated or not an archive)"
        ).into()));
    }
    let descriptor = last9[4];
    if descriptor & 0b0111_1100 != 0 {
        return Err(Error::malformed(format!(
            "seek table descriptor {descriptor:#04x} sets reserved bits"
        )));
    }
    let footer = Footer {
        frames: read_u32_le(last9, 0).unwrap_or_default(),
        checksums: descriptor & 0x80 != 0,
    };
    if footer.frames > MAX_FRAMES {
        return Err(Error::malformed(format!(
            "seek table claims {} frames; the limit is {MAX_FRAMES}",
            footer.frames
        )));
    }
    if footer.table_len() > object_len {
        return Err(Error::Truncated(
            format!(
                "seek table of {} frames needs {} bytes but the object has {object_len}",
                footer.frames,
                footer.table_len()
            )
            .into(),
        ));
    }
    Ok(footer)
}

/// The sum of the table's compressed sizes (what the frames before it must
/// occupy), read without building the entries.
pub fn compressed_total(table: &[u8], footer: Footer) -> Result<u64> {
    if table.len() as u64 != footer.table_len() {
        return Err(Error::Truncated("seek table is incomplete".into()));
    }
    let entry_len = footer.entry_len() as usize;
    Ok(table[8..table.len() - FOOTER_LEN as usize]
        .chunks_exact(entry_len)
        .map(|e| u64::from(read_u32_le(e, 0).unwrap_or_default()))
        .sum())
}

/// Parses the whole seek-table frame (`table` is exactly `footer.table_len()` bytes).
pub fn parse(table: &[u8], footer: Footer) -> Result<Vec<FrameEntry>> {
    if table.len() as u64 != footer.table_len() {
        return Err(Error::Truncated("seek table is incomplete".into()));
    }
    if read_u32_le(table, 0) != Some(SEEK_TABLE_FRAME_MAGIC) {
        return Err(Error::malformed(
            "seek table does not start with its skippable frame magic 0x184d2a5e",
        ));
    }
    let declared = read_u32_le(table, 4).unwrap_or_default();
    if u64::from(declared) + 8 != footer.table_len() {
        return Err(Error::malformed(format!(
            "seek table frame declares {declared} bytes but its footer implies {}",
            footer.table_len() - 8
        )));
    }
    let entry_len = footer.entry_len() as usize;
    let entries = table[8..table.len() - FOOTER_LEN as usize]
        .chunks_exact(entry_len)
        .map(|e| FrameEntry {
            compressed: read_u32_le(e, 0).unwrap_or_default(),
            decompressed: read_u32_le(e, 4).unwrap_or_default(),
        })
        .collect();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let entries = vec![
            FrameEntry {
                compressed: 10,
                decompressed: 20,
            },
            FrameEntry {
                compressed: 8,
                decompressed: 0,
            },
        ];
        let bytes = encode(&entries);
        let footer = parse_footer(&bytes[bytes.len() - 9..], bytes.len() as u64).unwrap();
        assert_eq!(
            footer,
            Footer {
                frames: 2,
                checksums: false
            }
        );
        assert_eq!(footer.table_len(), bytes.len() as u64);
        assert_eq!(parse(&bytes, footer).unwrap(), entries);
    }

    #[test]
    fn rejects_bad_footers() {
        let bytes = encode(&[FrameEntry {
            compressed: 1,
            decompressed: 1,
        }]);
        let n = bytes.len() as u64;
        let tail = |b: &[u8]| b[b.len() - 9..].to_vec();
        let mut bad_magic = bytes.clone();
        *bad_magic.last_mut().unwrap() ^= 0x10;
        assert!(matches!(
            parse_footer(&tail(&bad_magic), n),
            Err(Error::NotAnArchive(_))
        ));
        let mut reserved = bytes.clone();
        reserved[bytes.len() - 5] = 0x04;
        assert!(matches!(
            parse_footer(&tail(&reserved), n),
            Err(Error::Malformed(_))
        ));
        let mut huge = bytes.clone();
        huge[bytes.len() - 9..bytes.len() - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_footer(&tail(&huge), n),
            Err(Error::Malformed(_))
        ));
        let mut long = bytes.clone();
        long[bytes.len() - 9..bytes.len() - 5].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            parse_footer(&tail(&long), n),
            Err(Error::Truncated(_))
        ));
        assert!(matches!(
            parse_footer(&[1, 2], 2),
            Err(Error::NotAnArchive(_))
        ));
    }
}
