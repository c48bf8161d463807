//! zstd frames at the byte level (RFC 8878): the data frames we compress, the
//! hand-built hole frames that stand for runs of absent blocks, skippable padding,
//! and the strict checks the reader applies to each.
//!
//! Hole frames are built directly from RLE blocks (4 bytes per 128 KiB of zeros),
//! so a hole costs ~32 KiB per GiB and no compression work. They declare a 128 KiB
//! window instead of being single-segment: stock `zstd` refuses frames whose window
//! exceeds 128 MiB unless told `--long`, and a single-segment frame's window is its
//! whole content size.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use xxhash_rust::xxh64::Xxh64;

use crate::blocks::BLOCK_SIZE;

/// Magic number of a zstd frame.
pub const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frame magics are `0x184D2A50..=0x184D2A5F`.
pub const SKIPPABLE_MAGIC_BASE: u32 = 0x184D_2A50;
/// Largest hole frame the writer emits, in blocks (256 MiB).
pub const MAX_HOLE_FRAME_BLOCKS: u64 = 512;
/// zstd's largest block.
const MAX_BLOCK_LEN: u64 = 128 * 1024;
/// Frame header descriptor of a hole frame: 4-byte content size, not single-segment,
/// content checksum on, no dictionary.
const HOLE_FRAME_DESCRIPTOR: u8 = 0b1000_0100;
/// Window descriptor for a 128 KiB window (exponent 7, mantissa 0).
const HOLE_WINDOW_DESCRIPTOR: u8 = 7 << 3;

/// Little-endian u32 at `at`, if the bytes are there.
pub(crate) fn read_u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Whether `magic` is one of the sixteen skippable-frame magics.
pub fn is_skippable_magic(magic: u32) -> bool {
    magic & 0xFFFF_FFF0 == SKIPPABLE_MAGIC_BASE
}

/// The low 32 bits of XXH64 (seed 0) of `len` zero bytes: the content checksum
/// of a hole frame of that length. Memoised because the same few lengths recur.
pub(crate) fn zeros_checksum(len: u64) -> u32 {
    static CACHE: OnceLock<Mutex<HashMap<u64, u32>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(sum) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&len) {
        return *sum;
    }
    let zeros = [0u8; 64 * 1024];
    let mut hasher = Xxh64::new(0);
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        hasher.update(&zeros[..n]);
        left -= n as u64;
    }
    let sum = hasher.digest() as u32;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(len, sum);
    sum
}

fn build_hole_frame(len: u64) -> Vec<u8> {
    debug_assert!(len > 0 && len <= u64::from(u32::MAX));
    let blocks = len.div_ceil(MAX_BLOCK_LEN) as usize;
    let mut frame = Vec::with_capacity(10 + blocks * 4 + 4);
    frame.extend_from_slice(&ZSTD_MAGIC.to_le_bytes());
    frame.push(HOLE_FRAME_DESCRIPTOR);
    frame.push(HOLE_WINDOW_DESCRIPTOR);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    let mut left = len;
    while left > 0 {
        let n = left.min(MAX_BLOCK_LEN);
        left -= n;
        let last = u32::from(left == 0);
        // Block header: bit 0 last-block, bits 1-2 type (1 = RLE), bits 3-23 size.
        let header = last | (1 << 1) | ((n as u32) << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame.extend_from_slice(&zeros_checksum(len).to_le_bytes());
    frame
}

/// The precomputed hole frame of `2^k` blocks, for `k` in `0..=9`.
fn hole_frame_pow2(k: u32) -> &'static [u8] {
    const N: usize = MAX_HOLE_FRAME_BLOCKS.trailing_zeros() as usize + 1;
    static FRAMES: [OnceLock<Vec<u8>>; N] = [const { OnceLock::new() }; N];
    FRAMES[k as usize].get_or_init(|| build_hole_frame(BLOCK_SIZE << k))
}

/// The hole frames that stand for `blocks` absent blocks: the largest
/// power-of-two frames first, each a shared precomputed byte string.
pub fn hole_frames(mut blocks: u64) -> impl Iterator<Item = (&'static [u8], u64)> {
    std::iter::from_fn(move || {
        if blocks == 0 {
            return None;
        }
        let k = (63 - blocks.leading_zeros()).min(MAX_HOLE_FRAME_BLOCKS.trailing_zeros());
        blocks -= 1 << k;
        Some((hole_frame_pow2(k), 1 << k))
    })
}

/// A skippable frame of exactly `total_len` bytes (at least 8) with zero payload.
pub fn padding_frame(total_len: usize) -> Vec<u8> {
    let total_len = total_len.max(8);
    let mut frame = Vec::with_capacity(total_len);
    frame.extend_from_slice(&SKIPPABLE_MAGIC_BASE.to_le_bytes());
    frame.extend_from_slice(&((total_len - 8) as u32).to_le_bytes());
    frame.resize(total_len, 0);
    frame
}

/// The parsed header of a zstd frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Bytes taken by magic and header.
    pub len: usize,
    /// Declared decompressed size, if the frame declares one.
    pub content_size: Option<u64>,
    /// Whether a 4-byte content checksum follows the last block.
    pub has_checksum: bool,
    /// Largest block the frame may contain.
    pub max_block: u64,
}

/// Parses a zstd frame header (magic included), rejecting dictionaries and
/// reserved bits.
pub(crate) fn parse_frame_header(bytes: &[u8]) -> Result<FrameHeader, String> {
    let magic = read_u32_le(bytes, 0).ok_or("frame is shorter than its magic number")?;
    if magic != ZSTD_MAGIC {
        return Err(format!("bad zstd frame magic {magic:#010x}"));
    }
    let fhd = *bytes.get(4).ok_or("frame header is truncated")?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err("frame header sets a reserved bit".into());
    }
    if fhd & 0x03 != 0 {
        return Err("frame needs a dictionary".into());
    }
    let mut at = 5;
    let mut window = None;
    if !single_segment {
        let wd = *bytes.get(at).ok_or("frame header is truncated")?;
        let log = 10 + u64::from(wd >> 3);
        if log > 41 {
            return Err(format!("frame declares an absurd window (2^{log} bytes)"));
        }
        let base = 1u64 << log;
        window = Some(base + (base / 8) * u64::from(wd & 7));
        at += 1;
    }
    let fcs_len = match (fcs_flag, single_segment) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let field = bytes
        .get(at..at + fcs_len)
        .ok_or("frame header is truncated")?;
    let content_size = match fcs_len {
        0 => None,
        1 => Some(u64::from(field[0])),
        2 => Some(u64::from(u16::from_le_bytes([field[0], field[1]])) + 256),
        4 => Some(u64::from(u32::from_le_bytes([
            field[0], field[1], field[2], field[3],
        ]))),
        _ => Some(u64::from_le_bytes(
            field.try_into().map_err(|_| "bad size")?,
        )),
    };
    let window = window.or(content_size).unwrap_or(0);
    Ok(FrameHeader {
        len: at + fcs_len,
        content_size,
        has_checksum: fhd & 0x04 != 0,
        max_block: window.min(MAX_BLOCK_LEN),
    })
}

/// Checks that `bytes` is exactly one zstd frame holding `expected_len` zero bytes,
/// built only from RLE-zero or raw-zero blocks, with a matching checksum if it has one.
/// Nothing is decompressed.
pub(crate) fn check_hole_frame(bytes: &[u8], expected_len: u64) -> Result<(), String> {
    let header = parse_frame_header(bytes)?;
    if header.content_size.is_some_and(|s| s != expected_len) {
        return Err(format!(
            "hole frame declares {} bytes, the seek table says {expected_len}",
            header.content_size.unwrap_or_default()
        ));
    }
    let mut at = header.len;
    let mut total = 0u64;
    loop {
        let h = bytes
            .get(at..at + 3)
            .ok_or("hole frame is truncated inside a block header")?;
        let h = u32::from_le_bytes([h[0], h[1], h[2], 0]);
        at += 3;
        let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, u64::from(h >> 3));
        if size > header.max_block {
            return Err(format!(
                "block of {size} bytes exceeds the frame's block limit"
            ));
        }
        match kind {
            0 => {
                let raw = bytes
                    .get(at..at + size as usize)
                    .ok_or("hole frame is truncated inside a raw block")?;
                if raw.iter().any(|&b| b != 0) {
                    return Err("hole frame holds non-zero bytes".into());
                }
                at += size as usize;
            }
            1 => {
                if *bytes
                    .get(at)
                    .ok_or("hole frame is truncated in an RLE block")?
                    != 0
                {
                    return Err("hole frame repeats a non-zero byte".into());
                }
                at += 1;
            }
            2 => return Err("hole frame contains a compressed block".into()),
            _ => return Err("hole frame uses the reserved block type".into()),
        }
        total += size;
        if total > expected_len {
            return Err(format!("hole frame holds more than {expected_len} bytes"));
        }
        if last {
            break;
        }
    }
    if total != expected_len {
        return Err(format!(
            "hole frame holds {total} bytes, expected {expected_len}"
        ));
    }
    if header.has_checksum {
        let sum = read_u32_le(bytes, at).ok_or("hole frame is truncated at its checksum")?;
        if sum != zeros_checksum(expected_len) {
            return Err("hole frame checksum does not match".into());
        }
        at += 4;
    }
    if at != bytes.len() {
        return Err(format!(
            "{} stray bytes follow the hole frame",
            bytes.len() - at
        ));
    }
    Ok(())
}

/// Checks that `bytes` is exactly one skippable frame.
pub(crate) fn check_padding_frame(bytes: &[u8]) -> Result<(), String> {
    let magic = read_u32_le(bytes, 0).ok_or("padding frame is truncated")?;
    if !is_skippable_magic(magic) {
        return Err(format!(
            "expected a skippable frame, found magic {magic:#010x}"
        ));
    }
    let size = read_u32_le(bytes, 4).ok_or("padding frame is truncated")?;
    if u64::from(size) + 8 != bytes.len() as u64 {
        return Err(format!(
            "skippable frame declares {size} payload bytes but occupies {}",
            bytes.len()
        ));
    }
    Ok(())
}

/// Compresses data frames: zstd level 3 with the content size and checksum recorded.
pub struct FrameCompressor {
    inner: zstd::bulk::Compressor<'static>,
}

/// Compression level of data frames (the zstd CLI default).
pub const COMPRESSION_LEVEL: i32 = 3;

impl FrameCompressor {
    /// A compressor with amistore's frame settings.
    pub fn new() -> std::io::Result<Self> {
        let mut inner = zstd::bulk::Compressor::new(COMPRESSION_LEVEL)?;
        inner.include_checksum(true)?;
        inner.include_contentsize(true)?;
        Ok(Self { inner })
    }

    /// Compresses `data` into one frame.
    pub fn compress(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.inner.compress(data)
    }

    /// Compresses `data` into one frame in `out` (replacing its contents), reusing
    /// `out`'s allocation.
    pub fn compress_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        self.inner.compress_to_buffer(data, out).map(|_| ())
    }
}

/// Decompresses one data frame of exactly `expected_len` bytes, checking that the
/// frame carries a checksum (zstd verifies it) and that nothing follows the frame.
pub(crate) fn decompress_frame(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    bytes: &[u8],
    expected_len: u64,
) -> Result<Vec<u8>, String> {
    let header = parse_frame_header(bytes)?;
    if !header.has_checksum {
        return Err("data frame carries no content checksum".into());
    }
    if header.content_size != Some(expected_len) {
        return Err(format!(
            "frame declares {:?} bytes, the seek table says {expected_len}",
            header.content_size
        ));
    }
    let mut out = Vec::with_capacity(expected_len as usize);
    let written = dctx
        .decompress_to_buffer(bytes, &mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if written as u64 != expected_len {
        return Err(format!(
            "frame decompressed to {written} bytes, expected {expected_len}"
        ));
    }
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(bytes)
        .map_err(|code| format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))?;
    if frame_len != bytes.len() {
        return Err(format!(
            "{} stray bytes follow the frame",
            bytes.len() - frame_len
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_frames_decode_to_zeros_with_stock_zstd_library() {
        for k in [0, 1, 9] {
            let frame = hole_frame_pow2(k);
            let len = (BLOCK_SIZE << k) as usize;
            let out = zstd::stream::decode_all(frame).unwrap();
            assert_eq!(out.len(), len);
            assert!(out.iter().all(|&b| b == 0));
            check_hole_frame(frame, len as u64).unwrap();
        }
        // ~32 KiB per GiB of holes.
        let gib: usize = hole_frames(2048).map(|(f, _)| f.len()).sum();
        assert!(gib < 33 * 1024, "{gib}");
    }

    #[test]
    fn hole_frames_decompose_any_count() {
        for n in [1u64, 3, 511, 512, 513, 1500, 4096] {
            let parts: Vec<u64> = hole_frames(n).map(|(_, b)| b).collect();
            assert_eq!(parts.iter().sum::<u64>(), n);
            assert!(parts.iter().all(|b| b.is_power_of_two() && *b <= 512));
        }
    }

    #[test]
    fn hole_frame_check_rejects_tampering() {
        let good = hole_frame_pow2(1).to_vec();
        assert!(check_hole_frame(&good, 2 * BLOCK_SIZE).is_ok());
        assert!(check_hole_frame(&good, BLOCK_SIZE).is_err());
        let mut nonzero = good.clone();
        nonzero[13] = 1; // the RLE byte of the first block
        assert!(check_hole_frame(&nonzero, 2 * BLOCK_SIZE).is_err());
        let mut sum = good.clone();
        *sum.last_mut().unwrap() ^= 1;
        assert!(check_hole_frame(&sum, 2 * BLOCK_SIZE).is_err());
        assert!(check_hole_frame(&good[..good.len() - 1], 2 * BLOCK_SIZE).is_err());
        let data = FrameCompressor::new()
            .unwrap()
            .compress(&[0u8; 1000])
            .unwrap();
        assert!(check_hole_frame(&data, 1000).is_err());
    }

    #[test]
    fn data_frames_round_trip_and_reject_wrong_sizes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let frame = FrameCompressor::new().unwrap().compress(&data).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        assert_eq!(
            decompress_frame(&mut d, &frame, data.len() as u64).unwrap(),
            data
        );
        assert!(decompress_frame(&mut d, &frame, 10).is_err());
        let mut extra = frame.clone();
        extra.push(0);
        assert!(decompress_frame(&mut d, &extra, data.len() as u64).is_err());
    }

    #[test]
    fn padding_frames_are_skippable() {
        let p = padding_frame(100);
        assert_eq!(p.len(), 100);
        check_padding_frame(&p).unwrap();
        assert!(check_padding_frame(&p[..99]).is_err());
        assert!(zstd::stream::decode_all(&p[..]).unwrap().is_empty());
    }
}
