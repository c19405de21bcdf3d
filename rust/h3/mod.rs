//! HTTP/3 (RFC 9114) and WebTransport-over-HTTP/3 framing, sans-I/O: bytes of QUIC streams and
//! datagrams in, [`H3Event`]s out; encoders for what a server or client writes.
//!
//! QPACK (RFC 9204) runs without a dynamic table: the encoder uses the static table and literals, the
//! decoder accepts everything a peer may send to a zero-capacity table (static references, literals,
//! Huffman strings) and refuses any reference into a dynamic table.
//!
//! The QUIC engine (`crate::quic`) owns one [`H3Conn`] per connection and feeds it stream data.
//!
//! A client's extended CONNECT and a WebTransport stream, as the server's [`H3Conn`] sees them:
//!
//! ```
//! use _core::h3::{encode_headers_frame, encode_wt_stream_header, setting, H3Conn, H3Event, Role};
//!
//! let settings = [(setting::ENABLE_CONNECT_PROTOCOL, 1), (setting::H3_DATAGRAM, 1)];
//! let client = H3Conn::new(Role::Client, &settings);
//! let mut server = H3Conn::new(Role::Server, &settings);
//! let mut events = Vec::new();
//!
//! // The client's control stream (client uni stream 2), its CONNECT (bidi stream 0), a WebTransport stream.
//! server.on_stream_data(2, &client.control_stream_bytes(), false, &mut events)?;
//! let mut connect = Vec::new();
//! encode_headers_frame(&[(b":method", b"CONNECT"), (b":protocol", b"webtransport")], &mut connect);
//! server.on_stream_data(0, &connect, false, &mut events)?;
//! let mut wt = Vec::new();
//! encode_wt_stream_header(0, &mut wt);
//! wt.extend_from_slice(b"hello");
//! server.on_stream_data(4, &wt, true, &mut events)?;
//!
//! assert_eq!(events[0], H3Event::Settings(settings.to_vec()));
//! let H3Event::Headers { stream_id: 0, headers, fin: false } = &events[1] else { panic!() };
//! assert_eq!(headers[1], (b":protocol".to_vec(), b"webtransport".to_vec()));
//! assert_eq!(events[2], H3Event::WtStream { stream_id: 4, session_id: 0, data: b"hello".to_vec(), fin: true });
//! # Ok::<(), _core::h3::H3Error>(())
//! ```

mod conn;
pub mod frame;
pub mod qpack;

use std::fmt;

pub use conn::{H3Conn, MAX_FRAME_BUFFER, UNKNOWN_SESSION};
pub use frame::{encode_data_frame_header, encode_datagram, encode_headers_frame, encode_wt_stream_header};

/// HTTP/3 setting identifiers this module's users announce or read.
pub mod setting {
    /// RFC 9204: the decoder's dynamic table capacity. Always announced as 0 here (see [`super::H3Conn::new`]).
    pub const QPACK_MAX_TABLE_CAPACITY: u64 = 0x1;
    pub const MAX_FIELD_SECTION_SIZE: u64 = 0x6;
    /// RFC 9204: streams that may block on the dynamic table. Always announced as 0 here.
    pub const QPACK_BLOCKED_STREAMS: u64 = 0x7;
    /// RFC 8441 / RFC 9220: extended CONNECT (`:protocol`).
    pub const ENABLE_CONNECT_PROTOCOL: u64 = 0x8;
    /// RFC 9297: HTTP/3 datagrams.
    pub const H3_DATAGRAM: u64 = 0x33;
    /// HTTP/3 datagrams as draft-ietf-masque-h3-datagram-04 numbered them (Chromium still sends it).
    pub const H3_DATAGRAM_DRAFT04: u64 = 0xff_d277;
    /// WebTransport draft 02's `SETTINGS_ENABLE_WEBTRANSPORT`.
    pub const ENABLE_WEBTRANSPORT: u64 = 0x2b60_3742;
}

/// HTTP/3 error codes (RFC 9114 §8.1, RFC 9204 §6).
pub mod code {
    pub const H3_NO_ERROR: u64 = 0x100;
    pub const H3_GENERAL_PROTOCOL_ERROR: u64 = 0x101;
    pub const H3_INTERNAL_ERROR: u64 = 0x102;
    pub const H3_STREAM_CREATION_ERROR: u64 = 0x103;
    pub const H3_CLOSED_CRITICAL_STREAM: u64 = 0x104;
    pub const H3_FRAME_UNEXPECTED: u64 = 0x105;
    pub const H3_FRAME_ERROR: u64 = 0x106;
    pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
    pub const H3_ID_ERROR: u64 = 0x108;
    pub const H3_SETTINGS_ERROR: u64 = 0x109;
    pub const H3_MISSING_SETTINGS: u64 = 0x10a;
    pub const H3_REQUEST_REJECTED: u64 = 0x10b;
    pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
    pub const H3_REQUEST_INCOMPLETE: u64 = 0x10d;
    pub const H3_MESSAGE_ERROR: u64 = 0x10e;
    pub const H3_CONNECT_ERROR: u64 = 0x10f;
    pub const H3_VERSION_FALLBACK: u64 = 0x110;
    pub const H3_DATAGRAM_ERROR: u64 = 0x33;
    pub const QPACK_DECOMPRESSION_FAILED: u64 = 0x200;
    pub const QPACK_ENCODER_STREAM_ERROR: u64 = 0x201;
    pub const QPACK_DECODER_STREAM_ERROR: u64 = 0x202;
}

/// Decoded header fields (name, value), in order.
pub type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A connection error: the driver closes the QUIC connection with `code` (an HTTP/3 code from [`code`])
/// and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H3Error {
    pub code: u64,
    pub reason: String,
}

impl H3Error {
    pub fn new(code: u64, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for H3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP/3 error 0x{:x}: {}", self.code, self.reason)
    }
}

impl std::error::Error for H3Error {}

/// What the peer said, in the order it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H3Event {
    /// The peer's SETTINGS (identifier, value), as sent; once per connection.
    Settings(Vec<(u64, u64)>),
    /// A request's (server role) or response's (client role) HEADERS, or trailers; `fin`: the stream
    /// ended right after them.
    Headers {
        stream_id: u64,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        fin: bool,
    },
    /// The payload of DATA frames on a request stream (for an extended CONNECT: the capsules). `data` may
    /// be empty when only `fin` is news.
    Data { stream_id: u64, data: Vec<u8>, fin: bool },
    /// Bytes of a WebTransport stream of session `session_id` (the CONNECT stream's id). The first event
    /// of a stream announces it (its `data` may be empty).
    WtStream {
        stream_id: u64,
        session_id: u64,
        data: Vec<u8>,
        fin: bool,
    },
    /// An HTTP/3 datagram (RFC 9297) for the session whose CONNECT stream is `session_id`.
    Datagram { session_id: u64, payload: Vec<u8> },
    /// The peer's GOAWAY with its stream (server) or push (client) id.
    GoAway(u64),
}
