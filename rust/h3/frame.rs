//! HTTP/3 frame and stream-type codes (RFC 9114 §7, §6.2), WebTransport signals, and encoders.

use super::qpack;
use crate::varint;

/// Frame types.
pub const DATA: u64 = 0x0;
pub const HEADERS: u64 = 0x1;
pub const CANCEL_PUSH: u64 = 0x3;
pub const SETTINGS: u64 = 0x4;
pub const PUSH_PROMISE: u64 = 0x5;
pub const GOAWAY: u64 = 0x7;
pub const MAX_PUSH_ID: u64 = 0xd;
/// The WebTransport bidirectional stream signal (draft-ietf-webtrans-http3): takes the place of a
/// frame type at the start of a bidi stream, followed by the session id.
pub const WT_BIDI_SIGNAL: u64 = 0x41;

/// Unidirectional stream types.
pub const STREAM_CONTROL: u64 = 0x00;
pub const STREAM_PUSH: u64 = 0x01;
pub const STREAM_QPACK_ENCODER: u64 = 0x02;
pub const STREAM_QPACK_DECODER: u64 = 0x03;
pub const STREAM_WT_UNI: u64 = 0x54;

/// Appends a varint. Stream ids and lengths from QUIC stay below 2^62; a larger value (a caller's setting)
/// is written as 2^62-1, since these encoders have no error to return.
pub(crate) fn put_varint(v: u64, out: &mut Vec<u8>) {
    let _ = varint::encode(v.min(varint::MAX), out);
}

/// Appends a HEADERS frame carrying `headers` as a QPACK field section (static table only).
pub fn encode_headers_frame(headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    let mut block = Vec::new();
    qpack::encode_field_section(headers, &mut block);
    put_varint(HEADERS, out);
    put_varint(block.len() as u64, out);
    out.extend_from_slice(&block);
}

/// Appends the type and length of a DATA frame whose `len` payload bytes the caller writes next.
pub fn encode_data_frame_header(len: u64, out: &mut Vec<u8>) {
    put_varint(DATA, out);
    put_varint(len, out);
}

/// Appends the WebTransport bidi stream signal 0x41 and the session id: the first bytes of a
/// WebTransport bidirectional stream.
pub fn encode_wt_stream_header(session_id: u64, out: &mut Vec<u8>) {
    put_varint(WT_BIDI_SIGNAL, out);
    put_varint(session_id, out);
}

/// Appends an HTTP/3 datagram (RFC 9297 §2.1): the quarter stream id of the session's CONNECT stream,
/// then the payload.
pub fn encode_datagram(session_id: u64, payload: &[u8], out: &mut Vec<u8>) {
    put_varint(session_id / 4, out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_write_type_length_and_ids() {
        let mut out = Vec::new();
        encode_data_frame_header(5, &mut out);
        encode_data_frame_header(16_384, &mut out);
        assert_eq!(out, [0x00, 0x05, 0x00, 0x80, 0x00, 0x40, 0x00]);

        out.clear();
        encode_wt_stream_header(0, &mut out);
        encode_wt_stream_header(1_000, &mut out);
        assert_eq!(out, [0x40, 0x41, 0x00, 0x40, 0x41, 0x43, 0xe8]);

        out.clear();
        encode_datagram(8, b"hi", &mut out);
        assert_eq!(out, [0x02, b'h', b'i']);

        out.clear();
        encode_headers_frame(&[(b":status", b"200")], &mut out);
        assert_eq!(out, [0x01, 0x03, 0x00, 0x00, 0xd9]);

        out.clear();
        put_varint(u64::MAX, &mut out);
        assert_eq!(out, [0xff; 8]);
    }
}
