//! QPACK (RFC 9204) without a dynamic table.

use super::{code, H3Error, HeaderList};

/// Appends an encoded field section (prefix + field lines) for `headers`.
pub fn encode_field_section(headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0]);
    let _ = headers;
}

/// Decodes a field section.
pub fn decode_field_section(block: &[u8]) -> Result<HeaderList, H3Error> {
    let _ = block;
    Err(H3Error::new(code::QPACK_DECOMPRESSION_FAILED, "not yet"))
}
