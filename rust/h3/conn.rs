//! The per-connection HTTP/3 state machine: bytes of each QUIC stream in, [`H3Event`]s out.
//!
//! Every stream keeps only what it cannot hand on yet: a partial varint or frame header, or the payload
//! of a HEADERS / control frame (at most [`MAX_FRAME_BUFFER`] bytes). DATA payloads and WebTransport
//! bytes go out as they arrive, so any split of the input gives the same events (up to how DATA and
//! WebTransport bytes are cut into events).

use std::collections::HashMap;

use super::code;
use super::frame::{
    put_varint, CANCEL_PUSH, DATA, GOAWAY, HEADERS, MAX_PUSH_ID, PUSH_PROMISE, SETTINGS, STREAM_CONTROL, STREAM_PUSH,
    STREAM_QPACK_DECODER, STREAM_QPACK_ENCODER, STREAM_WT_UNI, WT_BIDI_SIGNAL,
};
use super::qpack;
use super::{H3Error, H3Event, Role};
use crate::varint;

/// The largest HEADERS or control frame payload buffered; a larger one is `H3_EXCESSIVE_LOAD`.
pub const MAX_FRAME_BUFFER: u64 = 64 * 1024;

/// The session id reported for bytes on a bidi stream this server opened without registering it with
/// [`H3Conn::register_wt_stream`].
pub const UNKNOWN_SESSION: u64 = u64::MAX;

/// HTTP/2 frame types that HTTP/3 reserves (RFC 9114 §7.2.8): receiving one is `H3_FRAME_UNEXPECTED`.
const HTTP2_ONLY: [u64; 4] = [0x2, 0x6, 0x8, 0x9];
/// HTTP/2 setting identifiers that HTTP/3 reserves (RFC 9114 §7.2.4.1): `H3_SETTINGS_ERROR`.
const HTTP2_SETTINGS: [u64; 4] = [0x2, 0x3, 0x4, 0x5];

/// Where a request or response stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    /// No final HEADERS yet (client role: interim 1xx responses keep it here).
    Initial,
    /// HEADERS seen: DATA may follow, or trailing HEADERS.
    Body,
    /// Trailers seen: nothing but unknown frames may follow.
    Trailers,
}

/// What a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A peer uni stream whose type varint is not complete yet.
    UniType,
    Control,
    QpackEncoder,
    QpackDecoder,
    /// A stream whose bytes mean nothing here (unknown uni stream type).
    Drain,
    /// A peer bidi stream before its first HEADERS frame or WebTransport signal.
    BidiFirst,
    /// After the WebTransport signal (bidi 0x41 / uni 0x54), reading the session id.
    WtSessionId {
        bidi: bool,
    },
    /// WebTransport bytes of session `session_id`.
    Wt {
        session_id: u64,
    },
    /// A request (server role) or response (client role) stream.
    Request(Msg),
}

/// Where the frame parser of a frame-carrying stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a frame type.
    Type,
    /// Reading the length of a frame of type `ty`.
    Len { ty: u64 },
    /// Passing on (DATA) or skipping (unknown frames) `remaining` payload bytes.
    Stream { ty: u64, remaining: u64 },
    /// Gathering a `len`-byte payload in the stream's buffer.
    Collect { ty: u64, len: usize },
}

#[derive(Debug)]
struct Stream {
    kind: Kind,
    phase: Phase,
    /// A partial varint, or the payload gathered in [`Phase::Collect`].
    buf: Vec<u8>,
}

fn err(code: u64, reason: impl Into<String>) -> H3Error {
    H3Error::new(code, reason)
}

/// Completes a varint from `buf` (its first bytes, if any) and `input`; `None` while incomplete.
fn take_varint(buf: &mut Vec<u8>, input: &mut &[u8]) -> Option<u64> {
    let first = *buf.first().or(input.first())?;
    let need = 1usize << (first >> 6);
    if buf.is_empty() && input.len() >= need {
        let (v, n) = varint::decode(input)?;
        *input = &input[n..];
        return Some(v);
    }
    let take = (need - buf.len()).min(input.len());
    buf.extend_from_slice(&input[..take]);
    *input = &input[take..];
    if buf.len() < need {
        return None;
    }
    let (v, _) = varint::decode(buf)?;
    buf.clear();
    Some(v)
}

/// Reads exactly one varint from a whole frame payload (GOAWAY, `MAX_PUSH_ID`, `CANCEL_PUSH`).
fn single_varint(payload: &[u8], frame: &str) -> Result<u64, H3Error> {
    match varint::decode(payload) {
        Some((v, n)) if n == payload.len() => Ok(v),
        _ => Err(err(
            code::H3_FRAME_ERROR,
            format!("{frame} frame payload is not one varint"),
        )),
    }
}

fn parse_settings(mut payload: &[u8]) -> Result<Vec<(u64, u64)>, H3Error> {
    let mut settings: Vec<(u64, u64)> = Vec::new();
    while !payload.is_empty() {
        let (id, n) =
            varint::decode(payload).ok_or_else(|| err(code::H3_FRAME_ERROR, "SETTINGS ends inside an identifier"))?;
        payload = &payload[n..];
        let (value, n) =
            varint::decode(payload).ok_or_else(|| err(code::H3_FRAME_ERROR, "SETTINGS ends inside a value"))?;
        payload = &payload[n..];
        if HTTP2_SETTINGS.contains(&id) {
            return Err(err(
                code::H3_SETTINGS_ERROR,
                format!("HTTP/2 setting 0x{id:x} in HTTP/3 SETTINGS"),
            ));
        }
        if settings.iter().any(|&(i, _)| i == id) {
            return Err(err(code::H3_SETTINGS_ERROR, format!("setting 0x{id:x} sent twice")));
        }
        settings.push((id, value));
    }
    Ok(settings)
}

/// Appends DATA payload bytes as an event, joining the previous event of this call if it is DATA of the
/// same stream.
fn push_data(out: &mut Vec<H3Event>, start: usize, stream_id: u64, bytes: &[u8]) {
    if out.len() > start {
        if let Some(H3Event::Data { stream_id: s, data, .. }) = out.last_mut() {
            if *s == stream_id {
                data.extend_from_slice(bytes);
                return;
            }
        }
    }
    out.push(H3Event::Data {
        stream_id,
        data: bytes.to_vec(),
        fin: false,
    });
}

/// Appends WebTransport bytes, joining the previous event of this call if it is of the same stream.
fn push_wt(out: &mut Vec<H3Event>, start: usize, stream_id: u64, session_id: u64, bytes: &[u8]) {
    if out.len() > start {
        if let Some(H3Event::WtStream { stream_id: s, data, .. }) = out.last_mut() {
            if *s == stream_id {
                data.extend_from_slice(bytes);
                return;
            }
        }
    }
    out.push(H3Event::WtStream {
        stream_id,
        session_id,
        data: bytes.to_vec(),
        fin: false,
    });
}

/// One HTTP/3 connection's parse state: the peer's control stream, its QPACK streams, and every open
/// stream that carries requests, responses or WebTransport data.
#[derive(Debug)]
pub struct H3Conn {
    role: Role,
    local_settings: Vec<(u64, u64)>,
    peer_settings: Option<Vec<(u64, u64)>>,
    streams: HashMap<u64, Stream>,
    /// Bidi streams this end opened as WebTransport streams, not seen yet: stream id -> session id.
    local_wt: HashMap<u64, u64>,
    control_stream: Option<u64>,
    qpack_encoder_stream: Option<u64>,
    qpack_decoder_stream: Option<u64>,
    last_goaway: Option<u64>,
    /// The error that ended the connection: every later call returns it again.
    error: Option<H3Error>,
}

impl H3Conn {
    /// `local_settings`: every setting this end announces, in order.
    pub fn new(role: Role, local_settings: &[(u64, u64)]) -> Self {
        Self {
            role,
            local_settings: local_settings.to_vec(),
            peer_settings: None,
            streams: HashMap::new(),
            local_wt: HashMap::new(),
            control_stream: None,
            qpack_encoder_stream: None,
            qpack_decoder_stream: None,
            last_goaway: None,
            error: None,
        }
    }

    /// The first bytes of the local control stream: stream type 0x00 and the SETTINGS frame.
    pub fn control_stream_bytes(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        for &(id, value) in &self.local_settings {
            put_varint(id, &mut payload);
            put_varint(value, &mut payload);
        }
        let mut out = Vec::new();
        put_varint(STREAM_CONTROL, &mut out);
        put_varint(SETTINGS, &mut out);
        put_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(&payload);
        out
    }

    /// The peer's SETTINGS, once they arrived.
    pub fn peer_settings(&self) -> Option<&[(u64, u64)]> {
        self.peer_settings.as_deref()
    }

    /// The error that ended this connection, if one did (also a critical stream reset by the peer).
    pub fn error(&self) -> Option<&H3Error> {
        self.error.as_ref()
    }

    /// Marks a bidi stream this end opened (and began with [`super::encode_wt_stream_header`]) as a
    /// WebTransport stream of `session_id`: the peer's bytes on it come as raw
    /// [`H3Event::WtStream`] data. Without this, a client's own bidi streams parse as responses.
    pub fn register_wt_stream(&mut self, stream_id: u64, session_id: u64) {
        if let Some(st) = self.streams.get_mut(&stream_id) {
            st.kind = Kind::Wt { session_id };
        } else {
            self.local_wt.insert(stream_id, session_id);
        }
    }

    fn is_local(&self, stream_id: u64) -> bool {
        let client_initiated = stream_id & 1 == 0;
        client_initiated == (self.role == Role::Client)
    }

    /// Feeds bytes that arrived on a stream: a peer's stream, or (the peer's half of) a bidi stream this
    /// end opened. `fin`: the stream ends after `data`. An error closes the connection; every later call
    /// returns it again.
    pub fn on_stream_data(
        &mut self,
        stream_id: u64,
        data: &[u8],
        fin: bool,
        out: &mut Vec<H3Event>,
    ) -> Result<(), H3Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let result = self.stream_data(stream_id, data, fin, out);
        if let Err(e) = &result {
            self.error = Some(e.clone());
        }
        result
    }

    /// The peer reset the stream (or the driver gave up on it): forget its parse state. Resetting the
    /// peer's control or QPACK stream is `H3_CLOSED_CRITICAL_STREAM`: [`Self::error`] reports it and
    /// every later call returns it.
    pub fn on_stream_reset(&mut self, stream_id: u64) {
        self.streams.remove(&stream_id);
        self.local_wt.remove(&stream_id);
        let critical = [
            self.control_stream,
            self.qpack_encoder_stream,
            self.qpack_decoder_stream,
        ];
        if self.error.is_none() && critical.contains(&Some(stream_id)) {
            self.error = Some(err(
                code::H3_CLOSED_CRITICAL_STREAM,
                format!("critical stream {stream_id} reset"),
            ));
        }
    }

    /// An HTTP/3 datagram arrived (the payload of a QUIC DATAGRAM frame).
    pub fn on_datagram(&mut self, data: &[u8], out: &mut Vec<H3Event>) -> Result<(), H3Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let parsed = varint::decode(data).filter(|&(q, _)| q <= varint::MAX / 4);
        let Some((quarter, n)) = parsed else {
            let e = err(code::H3_DATAGRAM_ERROR, "datagram without a valid quarter stream id");
            self.error = Some(e.clone());
            return Err(e);
        };
        out.push(H3Event::Datagram {
            session_id: quarter * 4,
            payload: data[n..].to_vec(),
        });
        Ok(())
    }

    fn new_stream(&mut self, stream_id: u64) -> Stream {
        let uni = stream_id & 2 != 0;
        let kind = match (uni, self.is_local(stream_id)) {
            (true, true) => Kind::Drain,
            (true, false) => Kind::UniType,
            (false, false) => Kind::BidiFirst,
            (false, true) => match self.local_wt.remove(&stream_id) {
                Some(session_id) => Kind::Wt { session_id },
                None if self.role == Role::Client => Kind::Request(Msg::Initial),
                None => Kind::Wt {
                    session_id: UNKNOWN_SESSION,
                },
            },
        };
        Stream {
            kind,
            phase: Phase::Type,
            buf: Vec::new(),
        }
    }

    fn stream_data(&mut self, stream_id: u64, data: &[u8], fin: bool, out: &mut Vec<H3Event>) -> Result<(), H3Error> {
        let mut st = match self.streams.remove(&stream_id) {
            Some(st) => st,
            None => self.new_stream(stream_id),
        };
        let start = out.len();
        let mut input = data;
        while self.step(stream_id, &mut st, &mut input, start, out)? {}
        if fin {
            Self::finish(stream_id, &st, start, out)
        } else {
            self.streams.insert(stream_id, st);
            Ok(())
        }
    }

    /// One parsing step; `false` when the stream needs more input.
    fn step(
        &mut self,
        stream_id: u64,
        st: &mut Stream,
        input: &mut &[u8],
        start: usize,
        out: &mut Vec<H3Event>,
    ) -> Result<bool, H3Error> {
        match st.kind {
            Kind::UniType => {
                let Some(ty) = take_varint(&mut st.buf, input) else {
                    return Ok(false);
                };
                st.kind = self.open_uni(stream_id, ty)?;
                Ok(true)
            }
            Kind::Drain | Kind::QpackDecoder => {
                // Decoder-stream instructions concern an encoder with a dynamic table; there is none.
                *input = &[];
                Ok(false)
            }
            Kind::QpackEncoder => {
                for &b in *input {
                    // Only "Set Dynamic Table Capacity" to 0 (0b001_00000) fits a zero-capacity table.
                    if b != 0x20 {
                        return Err(err(
                            code::QPACK_ENCODER_STREAM_ERROR,
                            "encoder stream instruction needs a dynamic table (capacity 0)",
                        ));
                    }
                }
                *input = &[];
                Ok(false)
            }
            Kind::WtSessionId { .. } => {
                let Some(session_id) = take_varint(&mut st.buf, input) else {
                    return Ok(false);
                };
                st.kind = Kind::Wt { session_id };
                out.push(H3Event::WtStream {
                    stream_id,
                    session_id,
                    data: Vec::new(),
                    fin: false,
                });
                Ok(true)
            }
            Kind::Wt { session_id } => {
                if input.is_empty() {
                    return Ok(false);
                }
                push_wt(out, start, stream_id, session_id, input);
                *input = &[];
                Ok(false)
            }
            Kind::Control | Kind::BidiFirst | Kind::Request(_) => self.frame_step(stream_id, st, input, start, out),
        }
    }

    fn open_uni(&mut self, stream_id: u64, ty: u64) -> Result<Kind, H3Error> {
        let once = |slot: &mut Option<u64>, name: &str| {
            if slot.is_some() {
                return Err(err(code::H3_STREAM_CREATION_ERROR, format!("second {name} stream")));
            }
            *slot = Some(stream_id);
            Ok(())
        };
        Ok(match ty {
            STREAM_CONTROL => {
                once(&mut self.control_stream, "control")?;
                Kind::Control
            }
            STREAM_QPACK_ENCODER => {
                once(&mut self.qpack_encoder_stream, "QPACK encoder")?;
                Kind::QpackEncoder
            }
            STREAM_QPACK_DECODER => {
                once(&mut self.qpack_decoder_stream, "QPACK decoder")?;
                Kind::QpackDecoder
            }
            STREAM_PUSH => {
                return Err(match self.role {
                    Role::Server => err(code::H3_STREAM_CREATION_ERROR, "push stream from a client"),
                    Role::Client => err(code::H3_ID_ERROR, "push stream without MAX_PUSH_ID"),
                })
            }
            STREAM_WT_UNI => Kind::WtSessionId { bidi: false },
            _ => Kind::Drain,
        })
    }

    fn frame_step(
        &mut self,
        stream_id: u64,
        st: &mut Stream,
        input: &mut &[u8],
        start: usize,
        out: &mut Vec<H3Event>,
    ) -> Result<bool, H3Error> {
        match st.phase {
            Phase::Type => {
                let Some(ty) = take_varint(&mut st.buf, input) else {
                    return Ok(false);
                };
                if st.kind == Kind::BidiFirst && ty == WT_BIDI_SIGNAL {
                    st.kind = Kind::WtSessionId { bidi: true };
                } else {
                    st.phase = Phase::Len { ty };
                }
            }
            Phase::Len { ty } => {
                let Some(len) = take_varint(&mut st.buf, input) else {
                    return Ok(false);
                };
                st.phase = self.frame_start(st, ty, len)?;
            }
            Phase::Stream { ty, remaining } => {
                if input.is_empty() {
                    return Ok(false);
                }
                let n = remaining.min(input.len() as u64) as usize;
                if ty == DATA {
                    push_data(out, start, stream_id, &input[..n]);
                }
                *input = &input[n..];
                st.phase = if n as u64 == remaining {
                    Phase::Type
                } else {
                    Phase::Stream {
                        ty,
                        remaining: remaining - n as u64,
                    }
                };
            }
            Phase::Collect { ty, len } => {
                let n = (len - st.buf.len()).min(input.len());
                st.buf.extend_from_slice(&input[..n]);
                *input = &input[n..];
                if st.buf.len() < len {
                    return Ok(false);
                }
                let payload = std::mem::take(&mut st.buf);
                st.phase = Phase::Type;
                self.frame_end(stream_id, st, ty, &payload, out)?;
            }
        }
        Ok(true)
    }

    /// Checks that a frame of type `ty` may come now on this stream; the phase that reads its payload.
    fn frame_start(&mut self, st: &mut Stream, ty: u64, len: u64) -> Result<Phase, H3Error> {
        let unexpected = |what: &str| Err(err(code::H3_FRAME_UNEXPECTED, format!("frame type 0x{ty:x} {what}")));
        if HTTP2_ONLY.contains(&ty) {
            return unexpected("is reserved (HTTP/2 only)");
        }
        let collect = || {
            if len > MAX_FRAME_BUFFER {
                return Err(err(
                    code::H3_EXCESSIVE_LOAD,
                    format!("frame type 0x{ty:x} of {len} bytes (limit {MAX_FRAME_BUFFER})"),
                ));
            }
            Ok(Phase::Collect { ty, len: len as usize })
        };
        let skip = || {
            if len == 0 {
                Phase::Type
            } else {
                Phase::Stream { ty, remaining: len }
            }
        };
        match st.kind {
            Kind::Control => {
                if self.peer_settings.is_none() && ty != SETTINGS {
                    return Err(err(
                        code::H3_MISSING_SETTINGS,
                        format!("control stream begins with frame type 0x{ty:x}"),
                    ));
                }
                match ty {
                    SETTINGS if self.peer_settings.is_some() => unexpected("(a second SETTINGS)"),
                    DATA | HEADERS | PUSH_PROMISE => unexpected("on the control stream"),
                    MAX_PUSH_ID if self.role == Role::Client => unexpected("(MAX_PUSH_ID) sent by a server"),
                    SETTINGS | GOAWAY | MAX_PUSH_ID | CANCEL_PUSH => collect(),
                    _ => Ok(skip()),
                }
            }
            Kind::BidiFirst | Kind::Request(_) => {
                let msg = match st.kind {
                    Kind::Request(msg) => msg,
                    _ if ty == HEADERS && self.role == Role::Client => {
                        return Err(err(code::H3_STREAM_CREATION_ERROR, "request stream opened by a server"));
                    }
                    _ if ty == HEADERS => {
                        st.kind = Kind::Request(Msg::Initial);
                        Msg::Initial
                    }
                    _ => Msg::Initial,
                };
                match ty {
                    HEADERS if msg == Msg::Trailers => unexpected("(HEADERS) after trailers"),
                    HEADERS => collect(),
                    DATA if msg != Msg::Body => unexpected("(DATA) before HEADERS or after trailers"),
                    // DATA in the body streams out; unknown and reserved types are skipped.
                    PUSH_PROMISE if self.role == Role::Client => {
                        Err(err(code::H3_ID_ERROR, "PUSH_PROMISE without MAX_PUSH_ID"))
                    }
                    SETTINGS | GOAWAY | MAX_PUSH_ID | CANCEL_PUSH | PUSH_PROMISE => unexpected("on a request stream"),
                    _ => Ok(skip()),
                }
            }
            _ => Ok(skip()),
        }
    }

    fn frame_end(
        &mut self,
        stream_id: u64,
        st: &mut Stream,
        ty: u64,
        payload: &[u8],
        out: &mut Vec<H3Event>,
    ) -> Result<(), H3Error> {
        match (st.kind, ty) {
            (Kind::Control, SETTINGS) => {
                let settings = parse_settings(payload)?;
                self.peer_settings = Some(settings.clone());
                out.push(H3Event::Settings(settings));
            }
            (Kind::Control, GOAWAY) => {
                let id = single_varint(payload, "GOAWAY")?;
                if self.role == Role::Client && id % 4 != 0 {
                    return Err(err(
                        code::H3_ID_ERROR,
                        format!("GOAWAY names stream {id}, not a client request stream"),
                    ));
                }
                if self.last_goaway.is_some_and(|last| id > last) {
                    return Err(err(code::H3_ID_ERROR, "GOAWAY id grew"));
                }
                self.last_goaway = Some(id);
                out.push(H3Event::GoAway(id));
            }
            (Kind::Control, _) => {
                // MAX_PUSH_ID (this end never pushes) or CANCEL_PUSH (nothing was promised).
                single_varint(payload, "push id")?;
            }
            (Kind::Request(msg), HEADERS) => {
                let headers = qpack::decode_field_section(payload)?;
                st.kind = Kind::Request(match msg {
                    Msg::Initial if self.role == Role::Client && is_interim(&headers) => Msg::Initial,
                    Msg::Initial => Msg::Body,
                    Msg::Body | Msg::Trailers => Msg::Trailers,
                });
                out.push(H3Event::Headers {
                    stream_id,
                    headers,
                    fin: false,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// The stream ended (FIN) after its last bytes were parsed.
    fn finish(stream_id: u64, st: &Stream, start: usize, out: &mut Vec<H3Event>) -> Result<(), H3Error> {
        let mid_frame = st.phase != Phase::Type || !st.buf.is_empty();
        match st.kind {
            Kind::Control | Kind::QpackEncoder | Kind::QpackDecoder => Err(err(
                code::H3_CLOSED_CRITICAL_STREAM,
                format!("critical stream {stream_id} closed"),
            )),
            Kind::UniType | Kind::Drain | Kind::WtSessionId { bidi: false } => Ok(()),
            Kind::WtSessionId { bidi: true } => Err(err(
                code::H3_FRAME_ERROR,
                "stream ended inside the WebTransport session id",
            )),
            _ if mid_frame => Err(err(
                code::H3_FRAME_ERROR,
                format!("stream {stream_id} ended inside a frame"),
            )),
            Kind::BidiFirst => Ok(()),
            Kind::Wt { session_id } => {
                match out[start..].last_mut() {
                    Some(H3Event::WtStream { fin, .. }) => *fin = true,
                    _ => out.push(H3Event::WtStream {
                        stream_id,
                        session_id,
                        data: Vec::new(),
                        fin: true,
                    }),
                }
                Ok(())
            }
            Kind::Request(_) => {
                match out[start..].last_mut() {
                    Some(H3Event::Headers { fin, .. } | H3Event::Data { fin, .. }) => *fin = true,
                    _ => out.push(H3Event::Data {
                        stream_id,
                        data: Vec::new(),
                        fin: true,
                    }),
                }
                Ok(())
            }
        }
    }
}

/// An interim (1xx) response's HEADERS: a final one follows.
fn is_interim(headers: &[(Vec<u8>, Vec<u8>)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == b":status" && v.len() == 3 && v[0] == b'1')
}
