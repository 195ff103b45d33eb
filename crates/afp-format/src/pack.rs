//! Dense bit packing of codes of any width 2..=8.
//!
//! Layout: a little-endian bit stream. Code `i` occupies bits `i*w .. i*w + w` of the stream,
//! where bit `k` of the stream is bit `k % 8` of byte `k / 8`. The last byte is zero-padded.

use crate::FormatError;

fn check_width(width: u32) -> Result<(), FormatError> {
    if (2..=8).contains(&width) {
        Ok(())
    } else {
        Err(FormatError::BadWidth(width))
    }
}

/// Bytes needed for `count` codes of `width` bits.
pub fn packed_len(count: usize, width: u32) -> usize {
    count.saturating_mul(width as usize).div_ceil(8)
}

/// Packs codes (each `< 2^width`) into a dense bit stream.
pub fn pack(codes: &[u8], width: u32) -> Result<Vec<u8>, FormatError> {
    check_width(width)?;
    let limit = if width == 8 { 0 } else { 0xFFu8 << width };
    if codes.iter().fold(0u8, |acc, &c| acc | (c & limit)) != 0 {
        let index = codes.iter().position(|&c| c & limit != 0).unwrap_or(0);
        return Err(FormatError::CodeTooWide {
            index,
            code: codes[index],
            width,
        });
    }
    let w = width as usize;
    let mut out = vec![0u8; packed_len(codes.len(), width)];
    // Eight codes fill exactly `w` bytes: build them in a u64 and store its low `w` bytes.
    let chunks = codes.chunks_exact(8);
    let tail = chunks.remainder();
    for (group, dst) in chunks.zip(out.chunks_exact_mut(w)) {
        let mut acc = 0u64;
        for (i, &c) in group.iter().enumerate() {
            acc |= (c as u64) << (i * w);
        }
        dst.copy_from_slice(&acc.to_le_bytes()[..w]);
    }
    let base = (codes.len() / 8) * w;
    let mut acc = 0u64;
    for (i, &c) in tail.iter().enumerate() {
        acc |= (c as u64) << (i * w);
    }
    let rest = out.len() - base;
    out[base..].copy_from_slice(&acc.to_le_bytes()[..rest]);
    Ok(out)
}

/// Unpacks `count` codes of `width` bits from `bytes` into `out` (`out.len() == count`).
pub fn unpack_into(bytes: &[u8], width: u32, out: &mut [u8]) -> Result<(), FormatError> {
    check_width(width)?;
    let count = out.len();
    let needed = packed_len(count, width);
    if bytes.len() < needed {
        return Err(FormatError::PackedTooShort {
            needed,
            got: bytes.len(),
            count,
            width,
        });
    }
    let w = width as usize;
    let mask = (1u64 << w) - 1;
    let mut groups = out.chunks_exact_mut(8);
    for (dst, src) in (&mut groups).zip(bytes.chunks_exact(w)) {
        let mut buf = [0u8; 8];
        buf[..w].copy_from_slice(src);
        let acc = u64::from_le_bytes(buf);
        for (i, d) in dst.iter_mut().enumerate() {
            *d = ((acc >> (i * w)) & mask) as u8;
        }
    }
    let tail = groups.into_remainder();
    if !tail.is_empty() {
        let base = (count / 8) * w;
        let mut buf = [0u8; 8];
        buf[..needed - base].copy_from_slice(&bytes[base..needed]);
        let acc = u64::from_le_bytes(buf);
        for (i, d) in tail.iter_mut().enumerate() {
            *d = ((acc >> (i * w)) & mask) as u8;
        }
    }
    Ok(())
}

/// Unpacks `count` codes of `width` bits.
pub fn unpack(bytes: &[u8], width: u32, count: usize) -> Result<Vec<u8>, FormatError> {
    check_width(width)?;
    let needed = packed_len(count, width);
    if bytes.len() < needed {
        // Checked before allocating: `count` may come from an untrusted file.
        return Err(FormatError::PackedTooShort {
            needed,
            got: bytes.len(),
            count,
            width,
        });
    }
    let mut out = vec![0u8; count];
    unpack_into(bytes, width, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_little_endian_bit_stream() {
        assert_eq!(pack(&[1, 2, 3], 2).unwrap(), vec![0b0011_1001]);
        assert_eq!(pack(&[0xA, 0x5, 0xF], 4).unwrap(), vec![0x5A, 0x0F]);
        assert_eq!(
            pack(&[0b101, 0b110, 0b011], 3).unwrap(),
            vec![0b1111_0101, 0b0]
        );
    }

    #[test]
    fn rejects_wide_codes_short_input_and_bad_width() {
        assert!(matches!(
            pack(&[1, 4, 1], 2),
            Err(FormatError::CodeTooWide {
                index: 1,
                code: 4,
                width: 2
            })
        ));
        assert!(pack(&[1], 1).is_err());
        assert!(pack(&[1], 9).is_err());
        assert!(unpack(&[0u8; 2], 5, 4).is_err());
        assert!(unpack(&[0u8; 3], 5, 4).is_ok());
        // A huge count with short data is refused before any allocation.
        assert!(unpack(&[0u8; 3], 5, usize::MAX / 16).is_err());
    }
}
