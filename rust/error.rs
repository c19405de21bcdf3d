//! Error types of the core, one enum per concern. No `PyO3` here: `py.rs` maps them to Python classes.

use std::fmt;

/// A field that SSE cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// `id` or `event` contains CR or LF (would end the field early), or `id` contains NUL
    /// (WHATWG parsers ignore such an id).
    InvalidField { field: &'static str, reason: &'static str },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidField { field, reason } => write!(f, "SSE field `{field}` {reason}"),
        }
    }
}

impl std::error::Error for SseError {}

/// A binary frame that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The kind byte names no frame kind.
    UnknownKind(u8),
    /// A payload length above the decoder's (or codec's) limit.
    Oversized { len: u64, max: u64 },
    /// The stream closed in the middle of a frame.
    Truncated { buffered: usize },
    /// A payload that is not UTF-8.
    InvalidUtf8 { seq: u64 },
    /// A value above 2^62-1 cannot be a QUIC varint.
    VarintOverflow(u64),
    /// A token, done or error frame with sequence number 0.
    ZeroSeq { kind: u8 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            Self::Oversized { len, max } => write!(f, "frame payload of {len} bytes exceeds the limit of {max} bytes"),
            Self::Truncated { buffered } => {
                write!(
                    f,
                    "stream ended inside a frame ({buffered} bytes of an incomplete frame buffered)"
                )
            }
            Self::InvalidUtf8 { seq } => write!(f, "payload of frame seq {seq} is not valid UTF-8"),
            Self::VarintOverflow(v) => write!(f, "{v} does not fit a QUIC variable-length integer (max 2^62-1)"),
            Self::ZeroSeq { kind } => write!(f, "frame kind 0x{kind:02x} must carry a seq >= 1"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A resume ring refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The frames after the requested seq are no longer held; `oldest_seq` is the oldest still held.
    Expired { requested: u64, oldest_seq: u64 },
    /// The requested seq has not been produced yet.
    Future { requested: u64, last_seq: u64 },
    /// One payload larger than the ring's byte bound (or a decoder's default limit) can never be held.
    TooLarge { len: usize, max: usize },
    /// Only history (token, done, error) goes in a ring; the kind byte is given.
    NotHistory(u8),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired { requested, oldest_seq } => write!(
                f,
                "resume point seq {requested} has expired: the oldest frame still held is seq {oldest_seq}"
            ),
            Self::Future { requested, last_seq } => write!(
                f,
                "resume point seq {requested} is in the future: the last frame produced is seq {last_seq}"
            ),
            Self::TooLarge { len, max } => {
                write!(f, "a payload of {len} bytes exceeds the ring's bound of {max} bytes")
            }
            Self::NotHistory(kind) => write!(f, "frame kind 0x{kind:02x} is not history and is never stored"),
        }
    }
}

impl std::error::Error for RingError {}

/// The registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// No stream with that handle or key (never created, removed, or expired).
    NotFound,
    /// A stream with that key exists already.
    Duplicate(String),
    /// The global memory cap is reached and only open streams hold memory.
    Full {
        used: usize,
        cap: usize,
    },
    /// The stream has ended; nothing more can be appended.
    Closed(crate::registry::StreamState),
    Ring(RingError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(f, "no such stream"),
            Self::Duplicate(key) => write!(f, "stream {key:?} exists already"),
            Self::Full { used, cap } => write!(
                f,
                "hub memory cap reached ({used} of {cap} bytes held by open streams); no new stream can start"
            ),
            Self::Closed(state) => write!(f, "stream is {}; nothing more can be sent", state.as_str()),
            Self::Ring(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<RingError> for RegistryError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// An SSE byte stream that the client-side parser refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseParseError {
    /// A line, or an event's data, longer than the parser's limit.
    Oversized { len: usize, max: usize },
    /// `feed` after `close` (caller misuse, not the peer's fault).
    Closed,
}

impl fmt::Display for SseParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversized { len, max } => {
                write!(
                    f,
                    "SSE line or event data of {len} bytes exceeds the limit of {max} bytes"
                )
            }
            Self::Closed => write!(f, "SSE parser fed after close()"),
        }
    }
}

impl std::error::Error for SseParseError {}

/// A tokenwire SSE stream that a [`crate::tracker::Tracker`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerError {
    Parse(SseParseError),
    /// A `token`, `done` or `error` event whose id is not `{stream_id}:{epoch}:{seq}` with a seq >= 1.
    BadId {
        event: &'static str,
        id: String,
    },
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => e.fmt(f),
            Self::BadId { event, id } => {
                write!(
                    f,
                    "`{event}` event with id {id:?}: expected `{{stream_id}}:{{epoch}}:{{seq}}`, seq >= 1"
                )
            }
        }
    }
}

impl std::error::Error for TrackerError {}

impl From<SseParseError> for TrackerError {
    fn from(e: SseParseError) -> Self {
        Self::Parse(e)
    }
}
