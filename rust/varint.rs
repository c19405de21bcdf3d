//! QUIC variable-length integers (RFC 9000 §16): the two high bits of the first byte give the length
//! (1, 2, 4 or 8 bytes), the rest is the value in network byte order.

use crate::error::FrameError;

/// The largest value a varint can carry: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// Bytes needed to encode `v` (minimal encoding); `v` must be at most [`MAX`].
#[inline]
pub fn encoded_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends the minimal encoding of `v` to `out`.
#[inline]
pub fn encode(v: u64, out: &mut Vec<u8>) -> Result<(), FrameError> {
    match encoded_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => {
            if v > MAX {
                return Err(FrameError::VarintOverflow(v));
            }
            out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
        }
    }
    Ok(())
}

/// Decodes one varint from the front of `buf`: `Some((value, bytes used))`, or `None` when `buf`
/// holds only part of it. Non-minimal encodings are accepted, as RFC 9000 allows.
#[inline]
pub fn decode(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for &b in &buf[1..len] {
        v = (v << 8) | u64::from(b);
    }
    Some((v, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 appendix A.1 sample decodings.
        assert_eq!(
            decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(decode(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(decode(&[0x25]), Some((37, 1)));
        assert_eq!(decode(&[0x40, 0x25]), Some((37, 2)));
    }

    #[test]
    fn round_trip_at_boundaries() {
        for v in [0, 1, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let mut out = Vec::new();
            encode(v, &mut out).unwrap();
            assert_eq!(out.len(), encoded_len(v));
            assert_eq!(decode(&out), Some((v, out.len())));
            assert_eq!(decode(&out[..out.len() - 1]), None);
        }
    }

    #[test]
    fn overflow_is_an_error() {
        let mut out = Vec::new();
        assert_eq!(encode(MAX + 1, &mut out), Err(FrameError::VarintOverflow(MAX + 1)));
        assert!(out.is_empty());
    }

    #[test]
    fn empty_needs_more() {
        assert_eq!(decode(&[]), None);
    }
}
