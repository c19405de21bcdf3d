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
use super::{setting, H3Error, H3Event, Role};
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

/// Where the events of one `on_stream_data` call go: all of them concern `stream_id`.
struct Emit<'a> {
    stream_id: u64,
    out: &'a mut Vec<H3Event>,
    /// Where this call's events begin in `out`.
    start: usize,
}

impl Emit<'_> {
    /// This call's last event.
    fn last(&mut self) -> Option<&mut H3Event> {
        self.out[self.start..].last_mut()
    }

    /// Appends DATA payload bytes, joining them to this call's DATA event if it is the last one.
    fn data(&mut self, bytes: &[u8]) {
        if let Some(H3Event::Data { data, .. }) = self.last() {
            data.extend_from_slice(bytes);
        } else {
            let stream_id = self.stream_id;
            self.out.push(H3Event::Data {
                stream_id,
                data: bytes.to_vec(),
                fin: false,
            });
        }
    }

    /// Appends WebTransport bytes, joining them to this call's WebTransport event if it is the last one.
    fn wt(&mut self, session_id: u64, bytes: &[u8]) {
        if let Some(H3Event::WtStream { data, .. }) = self.last() {
            data.extend_from_slice(bytes);
        } else {
            let stream_id = self.stream_id;
            self.out.push(H3Event::WtStream {
                stream_id,
                session_id,
                data: bytes.to_vec(),
                fin: false,
            });
        }
    }
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
    /// `local_settings`: every setting this end announces, in order. A QPACK dynamic table capacity or
    /// blocked-streams count above 0 is announced as 0: this decoder has no dynamic table, and a peer
    /// told otherwise would refer to one.
    pub fn new(role: Role, local_settings: &[(u64, u64)]) -> Self {
        let no_dynamic_table = [setting::QPACK_MAX_TABLE_CAPACITY, setting::QPACK_BLOCKED_STREAMS];
        let local_settings = local_settings
            .iter()
            .map(|&(id, value)| (id, if no_dynamic_table.contains(&id) { 0 } else { value }))
            .collect();
        Self {
            role,
            local_settings,
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
        let mut em = Emit {
            stream_id,
            start: out.len(),
            out,
        };
        let mut input = data;
        while self.step(&mut st, &mut input, &mut em)? {}
        if fin {
            Self::finish(&st, &mut em)
        } else {
            self.streams.insert(stream_id, st);
            Ok(())
        }
    }

    /// One parsing step; `false` when the stream needs more input.
    fn step(&mut self, st: &mut Stream, input: &mut &[u8], em: &mut Emit) -> Result<bool, H3Error> {
        match st.kind {
            Kind::UniType => {
                let Some(ty) = take_varint(&mut st.buf, input) else {
                    return Ok(false);
                };
                st.kind = self.open_uni(em.stream_id, ty)?;
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
                em.wt(session_id, &[]);
                Ok(true)
            }
            Kind::Wt { session_id } => {
                if input.is_empty() {
                    return Ok(false);
                }
                em.wt(session_id, input);
                *input = &[];
                Ok(false)
            }
            Kind::Control | Kind::BidiFirst | Kind::Request(_) => self.frame_step(st, input, em),
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

    fn frame_step(&mut self, st: &mut Stream, input: &mut &[u8], em: &mut Emit) -> Result<bool, H3Error> {
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
                    em.data(&input[..n]);
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
                self.frame_end(st, ty, &payload, em)?;
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

    fn frame_end(&mut self, st: &mut Stream, ty: u64, payload: &[u8], em: &mut Emit) -> Result<(), H3Error> {
        match (st.kind, ty) {
            (Kind::Control, SETTINGS) => {
                let settings = parse_settings(payload)?;
                self.peer_settings = Some(settings.clone());
                em.out.push(H3Event::Settings(settings));
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
                em.out.push(H3Event::GoAway(id));
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
                let stream_id = em.stream_id;
                em.out.push(H3Event::Headers {
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
    fn finish(st: &Stream, em: &mut Emit) -> Result<(), H3Error> {
        let stream_id = em.stream_id;
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
                em.wt(session_id, &[]);
                if let Some(H3Event::WtStream { fin, .. }) = em.last() {
                    *fin = true;
                }
                Ok(())
            }
            Kind::Request(_) => {
                if let Some(H3Event::Headers { fin, .. } | H3Event::Data { fin, .. }) = em.last() {
                    *fin = true;
                } else {
                    em.out.push(H3Event::Data {
                        stream_id,
                        data: Vec::new(),
                        fin: true,
                    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h3::qpack::tests_support::{unhex, CHROMIUM_CONNECT};
    use crate::h3::{encode_data_frame_header, encode_datagram, encode_headers_frame, encode_wt_stream_header};

    const SETTINGS_WT: [(u64, u64); 4] = [
        (setting::QPACK_MAX_TABLE_CAPACITY, 0),
        (setting::H3_DATAGRAM, 1),
        (setting::ENABLE_CONNECT_PROTOCOL, 1),
        (setting::ENABLE_WEBTRANSPORT, 1),
    ];

    fn ev(conn: &mut H3Conn, stream_id: u64, data: &[u8], fin: bool) -> Result<Vec<H3Event>, H3Error> {
        let mut out = Vec::new();
        conn.on_stream_data(stream_id, data, fin, &mut out).map(|()| out)
    }

    fn fails(conn: &mut H3Conn, stream_id: u64, data: &[u8], fin: bool) -> u64 {
        ev(conn, stream_id, data, fin).unwrap_err().code
    }

    /// Joins what a split may cut differently: consecutive DATA (or WebTransport bytes) of one stream,
    /// and a bare FIN after HEADERS.
    fn normalize(events: Vec<H3Event>) -> Vec<H3Event> {
        let mut out: Vec<H3Event> = Vec::new();
        for e in events {
            match (out.last_mut(), e) {
                (
                    Some(H3Event::Data {
                        stream_id: a,
                        data,
                        fin,
                    }),
                    H3Event::Data {
                        stream_id: b,
                        data: more,
                        fin: f,
                    },
                ) if *a == b => {
                    data.extend_from_slice(&more);
                    *fin |= f;
                }
                (
                    Some(H3Event::WtStream {
                        stream_id: a,
                        data,
                        fin,
                        ..
                    }),
                    H3Event::WtStream {
                        stream_id: b,
                        data: more,
                        fin: f,
                        ..
                    },
                ) if *a == b => {
                    data.extend_from_slice(&more);
                    *fin |= f;
                }
                (
                    Some(H3Event::Headers { stream_id: a, fin, .. }),
                    H3Event::Data {
                        stream_id: b,
                        data,
                        fin: true,
                    },
                ) if *a == b && data.is_empty() => {
                    *fin = true;
                }
                (_, e) => out.push(e),
            }
        }
        out
    }

    /// Feeds `chunks` of each (stream, bytes) in order, FIN with the last chunk of each.
    fn feed_split(role: Role, script: &[(u64, Vec<u8>)], cut: &dyn Fn(&[u8]) -> Vec<Vec<u8>>) -> Vec<H3Event> {
        let mut conn = H3Conn::new(role, &SETTINGS_WT);
        let mut out = Vec::new();
        for (stream_id, bytes) in script {
            let pieces = cut(bytes);
            let n = pieces.len();
            for (i, piece) in pieces.iter().enumerate() {
                let fin = i + 1 == n && *stream_id & 3 != 2 && *stream_id & 3 != 3;
                conn.on_stream_data(*stream_id, piece, fin, &mut out).unwrap();
            }
        }
        normalize(out)
    }

    fn headers_frame(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_headers_frame(headers, &mut out);
        out
    }

    fn data_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_data_frame_header(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn owned(headers: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        headers.iter().map(|&(n, v)| (n.to_vec(), v.to_vec())).collect()
    }

    fn frame(ty: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(ty, &mut out);
        put_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A browser's side of a WebTransport session as a server sees it: control stream (with a grease
    /// frame), QPACK streams, a grease uni stream, the CONNECT request with a capsule, a WebTransport
    /// bidi stream and uni stream.
    fn browser_script() -> Vec<(u64, Vec<u8>)> {
        let client = H3Conn::new(Role::Client, &SETTINGS_WT);
        let connect = CHROMIUM_CONNECT;
        let mut wt = Vec::new();
        encode_wt_stream_header(0, &mut wt);
        wt.extend_from_slice(b"request bytes");
        vec![
            (
                2,
                cat(&[
                    &client.control_stream_bytes(),
                    &frame(0x21, b"grease"),
                    &frame(GOAWAY, &[8]),
                ]),
            ),
            (6, vec![0x02, 0x20]),
            (10, vec![0x03]),
            (14, cat(&[&[0x40, 0x21], b"ignored bytes"])),
            (
                0,
                cat(&[
                    &frame(0x21, b""),
                    &headers_frame(&connect),
                    &data_frame(b"\x00\x05capsule"),
                ]),
            ),
            (4, wt),
            (18, cat(&[&[0x40, 0x54, 0x00], b"uni bytes"])),
        ]
    }

    #[test]
    fn server_sees_a_browser_session() {
        let connect = CHROMIUM_CONNECT;
        let events = feed_split(Role::Server, &browser_script(), &|b| vec![b.to_vec()]);
        assert_eq!(
            events,
            vec![
                H3Event::Settings(SETTINGS_WT.to_vec()),
                H3Event::GoAway(8),
                H3Event::Headers {
                    stream_id: 0,
                    headers: owned(&connect),
                    fin: false
                },
                H3Event::Data {
                    stream_id: 0,
                    data: b"\x00\x05capsule".to_vec(),
                    fin: true
                },
                H3Event::WtStream {
                    stream_id: 4,
                    session_id: 0,
                    data: b"request bytes".to_vec(),
                    fin: true
                },
                H3Event::WtStream {
                    stream_id: 18,
                    session_id: 0,
                    data: b"uni bytes".to_vec(),
                    fin: false
                },
            ]
        );
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let script = browser_script();
        let whole = feed_split(Role::Server, &script, &|b| vec![b.to_vec()]);
        let bytewise = feed_split(Role::Server, &script, &|b| b.iter().map(|&x| vec![x]).collect());
        assert_eq!(bytewise, whole);
        let longest = script.iter().map(|(_, b)| b.len()).max().unwrap();
        for at in 0..=longest {
            let split = feed_split(Role::Server, &script, &|b| {
                let at = at.min(b.len());
                vec![b[..at].to_vec(), b[at..].to_vec()]
            });
            assert_eq!(split, whole, "split at {at}");
        }
    }

    #[test]
    fn control_stream_bytes_carry_the_settings() {
        let server = H3Conn::new(Role::Server, &SETTINGS_WT);
        let bytes = server.control_stream_bytes();
        assert_eq!(&bytes[..3], &[0x00, 0x04, 11]);
        let mut client = H3Conn::new(Role::Client, &[]);
        assert!(client.peer_settings().is_none());
        assert_eq!(
            ev(&mut client, 3, &bytes, false).unwrap(),
            vec![H3Event::Settings(SETTINGS_WT.to_vec())]
        );
        assert_eq!(client.peer_settings(), Some(&SETTINGS_WT[..]));
        assert_eq!(
            H3Conn::new(Role::Client, &[]).control_stream_bytes(),
            [0x00, 0x04, 0x00]
        );
    }

    #[test]
    fn client_reads_responses_and_server_streams() {
        let mut client = H3Conn::new(Role::Client, &SETTINGS_WT);
        let server = H3Conn::new(Role::Server, &SETTINGS_WT);
        let mut response = headers_frame(&[(b":status", b"100")]);
        response.extend(headers_frame(&[
            (b":status", b"200"),
            (b"sec-webtransport-http3-draft", b"draft02"),
        ]));
        response.extend(data_frame(b"capsule"));
        response.extend(headers_frame(&[(b"x-trailer", b"t")]));
        let mut events = ev(&mut client, 3, &server.control_stream_bytes(), false).unwrap();
        for &b in &response {
            events.extend(ev(&mut client, 0, &[b], false).unwrap());
        }
        events.extend(ev(&mut client, 0, b"", true).unwrap());
        // A WebTransport stream the client opened: the server's bytes come raw.
        client.register_wt_stream(4, 0);
        events.extend(ev(&mut client, 4, b"\x00\x01raw", false).unwrap());
        // A WebTransport stream the server opened.
        let mut wt = Vec::new();
        encode_wt_stream_header(0, &mut wt);
        wt.extend_from_slice(b"pushed");
        events.extend(ev(&mut client, 1, &wt, true).unwrap());
        assert_eq!(
            normalize(events),
            vec![
                H3Event::Settings(SETTINGS_WT.to_vec()),
                H3Event::Headers {
                    stream_id: 0,
                    headers: owned(&[(b":status", b"100")]),
                    fin: false
                },
                H3Event::Headers {
                    stream_id: 0,
                    headers: owned(&[(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")]),
                    fin: false
                },
                H3Event::Data {
                    stream_id: 0,
                    data: b"capsule".to_vec(),
                    fin: false
                },
                H3Event::Headers {
                    stream_id: 0,
                    headers: owned(&[(b"x-trailer", b"t")]),
                    fin: true
                },
                H3Event::WtStream {
                    stream_id: 4,
                    session_id: 0,
                    data: b"\x00\x01raw".to_vec(),
                    fin: false
                },
                H3Event::WtStream {
                    stream_id: 1,
                    session_id: 0,
                    data: b"pushed".to_vec(),
                    fin: true
                },
            ]
        );
    }

    #[test]
    fn server_opened_streams_carry_raw_bytes() {
        let mut server = H3Conn::new(Role::Server, &SETTINGS_WT);
        server.register_wt_stream(1, 8);
        assert_eq!(
            ev(&mut server, 1, b"answer", false).unwrap(),
            vec![H3Event::WtStream {
                stream_id: 1,
                session_id: 8,
                data: b"answer".to_vec(),
                fin: false
            }]
        );
        // Registered after its first bytes: later bytes carry the session.
        assert_eq!(
            ev(&mut server, 5, b"a", false).unwrap(),
            vec![H3Event::WtStream {
                stream_id: 5,
                session_id: UNKNOWN_SESSION,
                data: b"a".to_vec(),
                fin: false
            }]
        );
        server.register_wt_stream(5, 0);
        assert_eq!(
            ev(&mut server, 5, b"", true).unwrap(),
            vec![H3Event::WtStream {
                stream_id: 5,
                session_id: 0,
                data: Vec::new(),
                fin: true
            }]
        );
    }

    #[test]
    fn datagrams_carry_the_quarter_stream_id() {
        let mut conn = H3Conn::new(Role::Server, &SETTINGS_WT);
        let mut bytes = Vec::new();
        encode_datagram(400, b"preview", &mut bytes);
        assert_eq!(&bytes[..2], &[0x40, 100]);
        let mut out = Vec::new();
        conn.on_datagram(&bytes, &mut out).unwrap();
        conn.on_datagram(&[0x00], &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                H3Event::Datagram {
                    session_id: 400,
                    payload: b"preview".to_vec()
                },
                H3Event::Datagram {
                    session_id: 0,
                    payload: Vec::new()
                },
            ]
        );
        assert_eq!(
            conn.on_datagram(&[], &mut out).unwrap_err().code,
            code::H3_DATAGRAM_ERROR
        );
        assert_eq!(
            H3Conn::new(Role::Server, &[])
                .on_datagram(&[0x40], &mut out)
                .unwrap_err()
                .code,
            code::H3_DATAGRAM_ERROR
        );
    }

    fn with_settings(role: Role) -> H3Conn {
        let mut conn = H3Conn::new(role, &SETTINGS_WT);
        let peer = H3Conn::new(
            if role == Role::Server {
                Role::Client
            } else {
                Role::Server
            },
            &[],
        );
        let control = if role == Role::Server { 2 } else { 3 };
        ev(&mut conn, control, &peer.control_stream_bytes(), false).unwrap();
        conn
    }

    #[test]
    fn control_stream_errors() {
        // First frame not SETTINGS (even an unknown one).
        assert_eq!(
            fails(
                &mut H3Conn::new(Role::Server, &[]),
                2,
                &cat(&[&[0], &frame(GOAWAY, &[0])]),
                false
            ),
            0x10a
        );
        assert_eq!(
            fails(
                &mut H3Conn::new(Role::Server, &[]),
                2,
                &cat(&[&[0], &frame(0x21, b"")]),
                false
            ),
            0x10a
        );
        // A second SETTINGS, DATA, HEADERS, an HTTP/2 type; MAX_PUSH_ID from a server.
        for bad in [
            frame(SETTINGS, &[]),
            frame(DATA, b"x"),
            frame(HEADERS, &[0, 0]),
            frame(0x6, &[0; 8]),
        ] {
            assert_eq!(fails(&mut with_settings(Role::Server), 2, &bad, false), 0x105);
        }
        assert_eq!(
            fails(&mut with_settings(Role::Client), 3, &frame(MAX_PUSH_ID, &[4]), false),
            0x105
        );
        assert!(
            ev(&mut with_settings(Role::Server), 2, &frame(MAX_PUSH_ID, &[4]), false)
                .unwrap()
                .is_empty()
        );
        // Malformed SETTINGS.
        for (payload, code) in [
            (&[0x21][..], 0x106),
            (&[0x02, 0x00], 0x109),
            (&[0x21, 1, 0x21, 2], 0x109),
        ] {
            let mut conn = H3Conn::new(Role::Server, &[]);
            assert_eq!(
                fails(&mut conn, 2, &cat(&[&[0], &frame(SETTINGS, payload)]), false),
                code
            );
        }
        // GOAWAY: one varint; a client checks it names a client request stream and never grows.
        assert_eq!(
            fails(&mut with_settings(Role::Server), 2, &frame(GOAWAY, &[0, 0]), false),
            0x106
        );
        assert_eq!(
            fails(&mut with_settings(Role::Client), 3, &frame(GOAWAY, &[2]), false),
            0x108
        );
        let mut client = with_settings(Role::Client);
        assert_eq!(
            ev(&mut client, 3, &frame(GOAWAY, &[8]), false).unwrap(),
            vec![H3Event::GoAway(8)]
        );
        assert_eq!(fails(&mut client, 3, &frame(GOAWAY, &[12]), false), 0x108);
        // A second control stream; the control stream closing or reset.
        assert_eq!(fails(&mut with_settings(Role::Server), 6, &[0], false), 0x103);
        assert_eq!(fails(&mut with_settings(Role::Server), 2, b"", true), 0x104);
        assert_eq!(fails(&mut H3Conn::new(Role::Server, &[]), 2, &[0], true), 0x104);
        let mut conn = with_settings(Role::Server);
        conn.on_stream_reset(2);
        assert_eq!(conn.error().map(|e| e.code), Some(0x104));
        assert_eq!(fails(&mut conn, 0, &headers_frame(&[]), false), 0x104);
        // Oversized control frames.
        let mut big = vec![0x00];
        put_varint(SETTINGS, &mut big);
        put_varint(MAX_FRAME_BUFFER + 1, &mut big);
        assert_eq!(fails(&mut H3Conn::new(Role::Server, &[]), 2, &big, false), 0x107);
    }

    #[test]
    fn uni_stream_errors() {
        // Push streams: from a client, and to a client that never sent MAX_PUSH_ID.
        assert_eq!(
            fails(&mut H3Conn::new(Role::Server, &[]), 2, &[0x01, 0x00], false),
            0x103
        );
        assert_eq!(
            fails(&mut H3Conn::new(Role::Client, &[]), 3, &[0x01, 0x00], false),
            0x108
        );
        // QPACK streams: once each, never closed, and the encoder may insert nothing.
        for ty in [0x02, 0x03] {
            let mut conn = H3Conn::new(Role::Server, &[]);
            assert!(ev(&mut conn, 6, &[ty], false).unwrap().is_empty());
            assert_eq!(fails(&mut conn, 10, &[ty], false), 0x103);
            assert_eq!(fails(&mut H3Conn::new(Role::Server, &[]), 6, &[ty], true), 0x104);
            let mut conn = H3Conn::new(Role::Server, &[]);
            ev(&mut conn, 6, &[ty], false).unwrap();
            conn.on_stream_reset(6);
            assert_eq!(conn.error().map(|e| e.code), Some(0x104));
        }
        for insert in [&[0x21][..], &[0x3f, 0x01], &[0xc0, 0x00], &[0x41, b'a', 0x00], &[0x00]] {
            let mut conn = H3Conn::new(Role::Server, &[]);
            assert_eq!(fails(&mut conn, 6, &cat(&[&[0x02], insert]), false), 0x201);
        }
        // Decoder-stream instructions are drained.
        assert!(
            ev(&mut H3Conn::new(Role::Server, &[]), 6, &[0x03, 0x81, 0x41, 0x01], false)
                .unwrap()
                .is_empty()
        );
        // An unknown stream ends quietly, half-read or not; a WebTransport uni stream cut in its id too.
        assert!(ev(&mut H3Conn::new(Role::Server, &[]), 6, &[0x40], true)
            .unwrap()
            .is_empty());
        assert!(ev(&mut H3Conn::new(Role::Server, &[]), 6, &[0x40, 0x54, 0x40], true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn request_stream_errors() {
        let get = headers_frame(&[(b":method", b"GET")]);
        // DATA first; an HTTP/2-only frame; control frames on a request stream.
        assert_eq!(
            fails(&mut with_settings(Role::Server), 0, &data_frame(b"x"), false),
            0x105
        );
        for ty in [
            0x2,
            0x6,
            0x8,
            0x9,
            SETTINGS,
            GOAWAY,
            MAX_PUSH_ID,
            CANCEL_PUSH,
            PUSH_PROMISE,
        ] {
            assert_eq!(
                fails(&mut with_settings(Role::Server), 0, &frame(ty, &[0]), false),
                0x105,
                "{ty}"
            );
            let after_headers = cat(&[&get, &frame(ty, &[0])]);
            assert_eq!(
                fails(&mut with_settings(Role::Server), 0, &after_headers, false),
                0x105,
                "{ty}"
            );
        }
        // HEADERS or DATA after trailers.
        let trailers = cat(&[&get, &data_frame(b"body"), &get]);
        for late in [get.clone(), data_frame(b"x")] {
            assert_eq!(
                fails(&mut with_settings(Role::Server), 0, &cat(&[&trailers, &late]), false),
                0x105
            );
        }
        // A HEADERS frame over the bound is refused from its header alone.
        let mut big = Vec::new();
        put_varint(HEADERS, &mut big);
        put_varint(MAX_FRAME_BUFFER + 1, &mut big);
        assert_eq!(fails(&mut with_settings(Role::Server), 0, &big, false), 0x107);
        // The bound itself is accepted (a field section of 64 KiB).
        let value = vec![b'v'; MAX_FRAME_BUFFER as usize - 10];
        let at_bound = headers_frame(&[(b"x-a", &value)]);
        assert_eq!(at_bound.len() as u64, MAX_FRAME_BUFFER + 5);
        assert_eq!(
            ev(&mut with_settings(Role::Server), 0, &at_bound, false).unwrap().len(),
            1
        );
        // Truncated frames at FIN: in a DATA payload, a HEADERS payload, a frame header, the WT signal.
        for cut in [
            cat(&[&get, &data_frame(b"body")[..3]]),
            get[..get.len() - 1].to_vec(),
            vec![0x01],
            vec![0x41],
        ] {
            assert_eq!(fails(&mut with_settings(Role::Server), 0, &cut, true), 0x106);
        }
        // A broken field section; a server opening a request stream to a client.
        assert_eq!(
            fails(
                &mut with_settings(Role::Server),
                0,
                &frame(HEADERS, &[0, 0, 0x80]),
                false
            ),
            0x200
        );
        assert_eq!(fails(&mut with_settings(Role::Client), 1, &get, false), 0x103);
        assert_eq!(
            fails(&mut with_settings(Role::Client), 0, &frame(PUSH_PROMISE, &[0]), false),
            0x108
        );
        // An empty request stream or one of unknown frames ends quietly.
        assert!(ev(&mut with_settings(Role::Server), 0, &frame(0x21, b"x"), true)
            .unwrap()
            .is_empty());
        // Errors stick.
        let mut conn = with_settings(Role::Server);
        assert_eq!(fails(&mut conn, 0, &data_frame(b"x"), false), 0x105);
        assert_eq!(fails(&mut conn, 4, &get, false), 0x105);
        assert_eq!(conn.on_datagram(&[0], &mut Vec::new()).unwrap_err().code, 0x105);
    }

    #[test]
    fn reset_forgets_a_stream() {
        let mut conn = with_settings(Role::Server);
        let get = headers_frame(&[(b":method", b"GET")]);
        ev(&mut conn, 0, &get[..2], false).unwrap();
        conn.on_stream_reset(0);
        assert!(conn.error().is_none());
        assert!(!conn.streams.contains_key(&0));
        // A stream's state is dropped when it ends, too.
        ev(&mut conn, 4, &get, true).unwrap();
        assert_eq!(conn.streams.keys().collect::<Vec<_>>(), [&2]);
    }

    /// A browser's own bytes, one QUIC read each, replayed into a server (whole reads, or a byte at a time):
    /// the normalized events.
    fn replay(capture: &str, bytewise: bool) -> Vec<H3Event> {
        let mut conn = H3Conn::new(Role::Server, &SETTINGS_WT);
        let mut events = Vec::new();
        for line in capture.lines().filter(|l| l.starts_with("s ")) {
            let f: Vec<&str> = line.split(' ').collect();
            let (stream_id, fin, bytes) = (f[1].parse().unwrap(), f[2] == "1", unhex(f[3]));
            if bytewise && !bytes.is_empty() {
                for (i, b) in bytes.iter().enumerate() {
                    conn.on_stream_data(stream_id, &[*b], fin && i + 1 == bytes.len(), &mut events)
                        .unwrap();
                }
            } else {
                conn.on_stream_data(stream_id, &bytes, fin, &mut events).unwrap();
            }
        }
        normalize(events)
    }

    /// Checks a captured session: SETTINGS holding `settings`, the CONNECT's `headers`, then `capsules` (DATA
    /// on the CONNECT stream, if any), the two WebTransport streams (each opened by a read of the signal
    /// alone, then its request with FIN), and the session's close capsule (`CLOSE_WEBTRANSPORT_SESSION` 0x2843,
    /// code 0) with FIN. The same events a byte at a time.
    fn check_capture(capture: &str, settings: &[(u64, u64)], headers: &[(&[u8], &[u8])], capsules: &[u8]) {
        let events = replay(capture, false);
        let H3Event::Settings(sent) = &events[0] else {
            panic!("{events:?}")
        };
        for needed in settings {
            assert!(sent.contains(needed), "{needed:?} in {sent:?}");
        }
        let mut expected = vec![H3Event::Headers {
            stream_id: 0,
            headers: owned(headers),
            fin: false,
        }];
        if !capsules.is_empty() {
            expected.push(H3Event::Data {
                stream_id: 0,
                data: capsules.to_vec(),
                fin: false,
            });
        }
        let wt = |stream_id, data: &[u8], fin| H3Event::WtStream {
            stream_id,
            session_id: 0,
            data: data.to_vec(),
            fin,
        };
        expected.extend([
            wt(4, b"", false),
            wt(8, b"", false),
            wt(4, b"alpha:10", true),
            wt(8, b"beta:3", true),
        ]);
        expected.push(H3Event::Data {
            stream_id: 0,
            data: vec![0x68, 0x43, 0x04, 0, 0, 0, 0],
            fin: true,
        });
        assert_eq!(events[1..], expected);
        assert_eq!(replay(capture, true), events);
    }

    #[test]
    fn chromium_session_as_captured() {
        // QPACK settings, both datagram drafts, WebTransport draft 02 (and a grease setting); Huffman strings;
        // a grease capsule in a DATA frame right after the CONNECT.
        check_capture(
            include_str!("testdata/chromium_session.txt"),
            &[
                (0x1, 65_536),
                (0x6, 16_384),
                (0x7, 100),
                (0x33, 1),
                (0xff_d277, 1),
                (0x2b60_3742, 1),
            ],
            &[
                (b":scheme", b"https"),
                (b":method", b"CONNECT"),
                (b":authority", b"127.0.0.1:60999"),
                (b":path", b"/wt"),
                (b":protocol", b"webtransport"),
                (b"sec-webtransport-http3-draft02", b"1"),
                (b"origin", b"http://127.0.0.1:37199"),
            ],
            &[0xc0, 0x84, 0x9d, 0xed, 0x38, 0x08, 0x63, 0xd3, 0x03, 0xb1, 0x8b, 0x0b],
        );
    }

    #[test]
    fn firefox_session_as_captured() {
        // Firefox also opens both QPACK streams and sends a longer CONNECT (fetch metadata, priority).
        check_capture(
            include_str!("testdata/firefox_session.txt"),
            &[
                (0x1, 65_536),
                (0x7, 20),
                (0x8, 1),
                (0x33, 1),
                (0xff_d277, 1),
                (0x2b60_3742, 1),
            ],
            &[
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", b"127.0.0.1:37946"),
                (b":path", b"/wt"),
                (b":protocol", b"webtransport"),
                (
                    b"user-agent",
                    b"Mozilla/5.0 (X11; Linux x86_64; rv:153.0) Gecko/20100101 Firefox/153.0",
                ),
                (b"accept", b"*/*"),
                (b"accept-language", b"en-US,en;q=0.9"),
                (b"accept-encoding", b"gzip, deflate, br, zstd"),
                (b"sec-webtransport-http3-draft02", b"1"),
                (b"origin", b"http://127.0.0.1:46341"),
                (b"sec-fetch-dest", b"webtransport"),
                (b"sec-fetch-mode", b"no-cors"),
                (b"sec-fetch-site", b"same-site"),
                (b"priority", b"u=4"),
                (b"pragma", b"no-cache"),
                (b"cache-control", b"no-cache"),
            ],
            &[],
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A fixed xorshift stream of inputs: random bytes, and mutations of real streams, on every kind of
        // stream of both roles. Any outcome but a panic is fine.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: Vec<Vec<u8>> = browser_script().into_iter().map(|(_, b)| b).collect();
        for round in 0..3000 {
            let role = if round % 2 == 0 { Role::Server } else { Role::Client };
            let mut conn = H3Conn::new(role, &SETTINGS_WT);
            let mut out = Vec::new();
            for _ in 0..4 {
                let stream_id = next() % 16;
                let mut bytes = if next() % 2 == 0 {
                    seeds[(next() % seeds.len() as u64) as usize].clone()
                } else {
                    (0..next() % 64).map(|_| next() as u8).collect()
                };
                for _ in 0..next() % 4 {
                    if !bytes.is_empty() {
                        let i = (next() % bytes.len() as u64) as usize;
                        bytes[i] = next() as u8;
                    }
                }
                let cut = if bytes.is_empty() {
                    0
                } else {
                    (next() % bytes.len() as u64) as usize
                };
                let _ = conn.on_stream_data(stream_id, &bytes[..cut], false, &mut out);
                let _ = conn.on_stream_data(stream_id, &bytes[cut..], next() % 3 == 0, &mut out);
                let _ = conn.on_datagram(&bytes, &mut out);
            }
        }
    }
}
