//! The POSIX tar (pax) headers that turn the archive's decompressed stream into
//! something stock `tar` extracts.
//!
//! Every member gets the same 1,536-byte header: a pax extended header (typeflag
//! `x`) whose one record is `size=<bytes>`, then a ustar header. The pax record is
//! what lets volumes of 8 GiB and more be members; the ustar size field holds the
//! size too when it fits in 11 octal digits, and zero otherwise.

/// tar's record unit.
pub const TAR_BLOCK: u64 = 512;
/// Length of every member header we write.
pub const MEMBER_HEADER_LEN: u64 = 3 * TAR_BLOCK;
/// The end-of-archive marker: two zero blocks.
pub const END_OF_ARCHIVE_LEN: u64 = 2 * TAR_BLOCK;
/// Longest member name (it must fit the ustar name field).
pub const MAX_NAME_LEN: usize = 100;
/// Offset of the ustar header (after the pax header and its one data block).
const USTAR_AT: usize = 2 * TAR_BLOCK as usize;
const SIZE_FIELD: std::ops::Range<usize> = 124..136;
const LARGEST_OCTAL_SIZE: u64 = 0o777_7777_7777;

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn ustar(name: &[u8], size: u64, mtime: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(
        &mut h[SIZE_FIELD],
        if size <= LARGEST_OCTAL_SIZE { size } else { 0 },
    );
    octal(&mut h[136..148], mtime.min(LARGEST_OCTAL_SIZE));
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    h
}

/// A pax record `"<len> size=<size>\n"` whose length prefix counts itself.
fn size_record(size: u64) -> String {
    let body = format!(" size={size}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// The 1,536-byte header of a regular-file member. `name` must be ASCII and at
/// most [`MAX_NAME_LEN`] bytes (the manifest validates member names).
pub fn member_header(name: &str, size: u64, mtime: u64) -> Vec<u8> {
    let record = size_record(size);
    let pax_name = format!("PaxHeaders/{name}");
    let pax_name = &pax_name.as_bytes()[..pax_name.len().min(MAX_NAME_LEN)];
    let mut out = Vec::with_capacity(MEMBER_HEADER_LEN as usize);
    out.extend_from_slice(&ustar(pax_name, record.len() as u64, mtime, b'x'));
    let mut data = [0u8; 512];
    data[..record.len()].copy_from_slice(record.as_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&ustar(
        &name.as_bytes()[..name.len().min(MAX_NAME_LEN)],
        size,
        mtime,
        b'0',
    ));
    out
}

/// Zero bytes that pad a member of `size` bytes to a whole tar block.
pub fn padding_len(size: u64) -> u64 {
    (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK
}

/// Reads the octal size from the ustar part of a member header written by
/// [`member_header`], if it is there and well formed.
pub fn ustar_size(header: &[u8]) -> Option<u64> {
    let field = header.get(USTAR_AT + SIZE_FIELD.start..USTAR_AT + SIZE_FIELD.end)?;
    let digits = field.split(|&b| b == 0 || b == b' ').next()?;
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_size_record_counts_itself() {
        for size in [0u64, 9, 99_999, 8 << 30, u64::MAX] {
            let r = size_record(size);
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{r:?}");
        }
    }

    #[test]
    fn headers_have_valid_checksums_and_sizes() {
        let h = member_header("disk0-xvda.raw", 12345, 1_700_000_000);
        assert_eq!(h.len() as u64, MEMBER_HEADER_LEN);
        for block in [&h[..512], &h[1024..]] {
            let stored = std::str::from_utf8(&block[148..154]).unwrap();
            let mut copy = block.to_vec();
            copy[148..156].fill(b' ');
            let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
            assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        }
        assert_eq!(ustar_size(&h), Some(12345));
        assert_eq!(ustar_size(&member_header("big", 9 << 30, 0)), Some(0));
        assert_eq!(padding_len(512), 0);
        assert_eq!(padding_len(513), 511);
    }
}
