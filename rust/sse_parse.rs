//! Incremental server-sent events parser: WHATWG HTML "9.2.6 Interpreting an event stream", client side.
//!
//! Bytes go in in any split, down to one byte at a time; complete events come out. The stream is UTF-8
//! decoded lossily (an invalid sequence becomes U+FFFD) and one leading BOM is dropped. Lines end with CRLF,
//! LF or a lone CR; a CR that ends one chunk and an LF that starts the next are one line end. Lines are cut
//! on bytes (CR and LF never occur inside a UTF-8 sequence), so decoding each line on its own gives exactly
//! what decoding the whole stream first would, and a character split across chunks decodes as one.
//!
//! Fields: `event` sets the type, `data` appends its value and LF, `id` sets the last event id unless the
//! value holds NUL (the id persists across events), `retry` sets the reconnection time if the value is
//! ASCII digits (saturating at `u64::MAX`); a line starting with `:` is a comment, other fields are
//! ignored. A blank line dispatches the event unless its data is empty, removing one trailing LF; the type
//! defaults to `message`. At [`SseParser::close`] an incomplete event is discarded.
//!
//! Limits: no line and no event's data may exceed `max_event_bytes`; past that the parser fails with
//! [`SseParseError::Oversized`] and stays failed (poisoned). Events completed before the error in the same
//! call are still delivered.

use std::borrow::Cow;

use crate::error::SseParseError;

/// Default limit of one line or one event's data: 1 MiB (the largest frame payload) plus 4 KiB of room for
/// field names, ids and line ends.
pub const DEFAULT_MAX_EVENT_BYTES: usize = (1 << 20) + 4096;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Lossy UTF-8 decoding, with the (much faster) strict validator tried first.
#[inline]
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// One dispatched event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub last_event_id: String,
    pub event_type: String,
    pub data: String,
}

/// One dispatched event, borrowed from the parser for the duration of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// The last event id buffer: set by this event's `id` field or kept from an earlier event.
    pub last_event_id: &'a str,
    /// `message` when the event had no (or an empty) `event` field.
    pub event_type: &'a str,
    pub data: &'a str,
}

impl EventRef<'_> {
    pub fn to_owned_event(&self) -> Event {
        Event {
            last_event_id: self.last_event_id.to_owned(),
            event_type: self.event_type.to_owned(),
            data: self.data.to_owned(),
        }
    }
}

/// The field buffers of the event being read, and what persists across events.
#[derive(Debug, Default)]
struct Fields {
    data: Vec<u8>,
    event_type: Vec<u8>,
    last_event_id: String,
    retry: Option<u64>,
}

impl Fields {
    /// One complete line (without its terminator).
    #[inline]
    fn line<E>(
        &mut self,
        line: &[u8],
        max: usize,
        on_event: &mut impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<(), LineError<E>> {
        if line.is_empty() {
            return self.dispatch(on_event).map_err(LineError::Callback);
        }
        // Field names are short: a plain scan finds the colon sooner than a vectorised search sets up.
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(()), // comment
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                let len = self.data.len() + value.len();
                if len > max {
                    return Err(LineError::Parse(SseParseError::Oversized { len, max }));
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                self.last_event_id.clear();
                self.last_event_id.push_str(&lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.retry = Some(ms);
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<E>(&mut self, on_event: &mut impl FnMut(EventRef<'_>) -> Result<(), E>) -> Result<(), E> {
        if self.data.is_empty() {
            self.event_type.clear();
            return Ok(());
        }
        let raw = &self.data[..self.data.len() - 1]; // one trailing LF removed
        let data = lossy(raw);
        let event_type = if self.event_type.is_empty() {
            Cow::Borrowed("message")
        } else {
            lossy(&self.event_type)
        };
        let result = on_event(EventRef {
            last_event_id: &self.last_event_id,
            event_type: &event_type,
            data: &data,
        });
        self.data.clear();
        self.event_type.clear();
        result
    }

    /// Discards the event being read (not the last event id or retry).
    fn discard(&mut self) {
        self.data.clear();
        self.event_type.clear();
    }
}

enum LineError<E> {
    Parse(SseParseError),
    Callback(E),
}

/// The incremental parser. See the module documentation for the rules.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of an incomplete line carried over from earlier chunks.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting the next chunk belongs to that line end.
    pending_cr: bool,
    /// No line has completed yet: the first one may start with a BOM.
    at_start: bool,
    fields: Fields,
    max: usize,
    error: Option<SseParseError>,
    closed: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that refuses a line or event data longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            pending_cr: false,
            at_start: true,
            fields: Fields::default(),
            max: max_event_bytes,
            error: None,
            closed: false,
        }
    }

    /// Feeds one chunk; calls `on_event` for each event it completes, in order.
    ///
    /// A parse error poisons the parser: this call and every later one return it. An error from
    /// `on_event` stops the call at once (the rest of the chunk is not parsed) and is returned as is; the
    /// caller should then drop the parser or stop feeding it.
    pub fn feed_with<E: From<SseParseError>>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(e) = &self.error {
            return Err(e.clone().into());
        }
        if self.closed {
            return Err(SseParseError::Closed.into());
        }
        match self.parse(chunk, &mut on_event) {
            Ok(()) => Ok(()),
            Err(LineError::Callback(e)) => Err(e),
            Err(LineError::Parse(e)) => {
                self.error = Some(e.clone());
                self.line = Vec::new();
                self.fields.discard();
                Err(e.into())
            }
        }
    }

    /// Feeds one chunk and appends the events it completes to `out`. Events completed before an error are
    /// appended too.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseParseError> {
        self.feed_with(chunk, |ev| {
            out.push(ev.to_owned_event());
            Ok::<(), SseParseError>(())
        })
    }

    fn parse<E>(
        &mut self,
        mut chunk: &[u8],
        on_event: &mut impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<(), LineError<E>> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..]; // second half of a CRLF split across chunks
            }
        }
        let max = self.max;
        let mut start = 0;
        for i in memchr::memchr2_iter(b'\r', b'\n', chunk) {
            if i < start {
                continue; // the LF of a CRLF already consumed
            }
            let piece = &chunk[start..i];
            start = i + 1;
            if chunk[i] == b'\r' {
                match chunk.get(i + 1) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            if self.line.is_empty() {
                if piece.len() > max {
                    return Err(LineError::Parse(SseParseError::Oversized { len: piece.len(), max }));
                }
                let piece = self.strip_bom(piece);
                self.fields.line(piece, max, on_event)?;
            } else {
                let len = self.line.len() + piece.len();
                if len > max {
                    return Err(LineError::Parse(SseParseError::Oversized { len, max }));
                }
                self.line.extend_from_slice(piece);
                let mut line = std::mem::take(&mut self.line);
                let result = {
                    let whole = self.strip_bom(&line);
                    self.fields.line(whole, max, on_event)
                };
                line.clear();
                self.line = line; // keep the allocation
                result?;
            }
        }
        let rest = &chunk[start..];
        if !rest.is_empty() {
            let len = self.line.len() + rest.len();
            if len > max {
                return Err(LineError::Parse(SseParseError::Oversized { len, max }));
            }
            self.line.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Drops a BOM at the start of the stream's first line.
    #[inline]
    fn strip_bom<'a>(&mut self, line: &'a [u8]) -> &'a [u8] {
        if self.at_start {
            self.at_start = false;
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        }
    }

    /// End of the stream: an incomplete line or event is discarded (as the specification says). Returns
    /// the parser's error if it failed. Later calls to `feed` fail with [`SseParseError::Closed`].
    pub fn close(&mut self) -> Result<(), SseParseError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        self.closed = true;
        self.line = Vec::new();
        self.pending_cr = false;
        self.fields.discard();
        Ok(())
    }

    /// The last event id buffer (empty until an `id` field sets it).
    pub fn last_event_id(&self) -> &str {
        &self.fields.last_event_id
    }

    /// The reconnection time in ms last set by a valid `retry` field.
    pub fn retry(&self) -> Option<u64> {
        self.fields.retry
    }

    /// Bytes of an incomplete line and event held back.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.fields.data.len()
    }

    pub fn max_event_bytes(&self) -> usize {
        self.max
    }

    pub fn error(&self) -> Option<&SseParseError> {
        self.error.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ty: &str, data: &str, id: &str) -> Event {
        Event {
            last_event_id: id.into(),
            event_type: ty.into(),
            data: data.into(),
        }
    }

    fn parse_all(stream: &[u8]) -> Vec<Event> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(stream, &mut out).unwrap();
        p.close().unwrap();
        out
    }

    fn parse_bytewise(stream: &[u8]) -> Vec<Event> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for b in stream {
            p.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        p.close().unwrap();
        out
    }

    fn parse_every_split(stream: &[u8], want: &[Event]) {
        assert_eq!(parse_all(stream), want);
        assert_eq!(parse_bytewise(stream), want);
        for cut in 0..=stream.len() {
            let mut p = SseParser::default();
            let mut out = Vec::new();
            p.feed(&stream[..cut], &mut out).unwrap();
            p.feed(&stream[cut..], &mut out).unwrap();
            assert_eq!(out, want, "cut at {cut}");
        }
    }

    #[test]
    fn whatwg_examples() {
        assert_eq!(
            parse_all(b"data: YHOO\ndata: +2\ndata: 10\n\n"),
            [ev("message", "YHOO\n+2\n10", "")]
        );
        assert_eq!(
            parse_all(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"),
            [
                ev("message", "first event", "1"),
                ev("message", "second event", ""),
                ev("message", " third event", ""),
            ]
        );
        assert_eq!(
            parse_all(b"data\n\ndata\ndata\n\ndata:"),
            [ev("message", "", ""), ev("message", "\n", "")]
        );
        assert_eq!(
            parse_all(b"data:test\n\ndata: test\n\n"),
            [ev("message", "test", ""), ev("message", "test", "")]
        );
    }

    #[test]
    fn line_ends_bom_nul_id_and_every_split() {
        let stream =
            "\u{feff}data: a\r\ndata: \u{2028}b\rid: x\0\nid: 7\n\revent: e\ndata: é𝄞\r\n\r\nretry: 1x\nretry: 12\n\n";
        let want = [ev("message", "a\n\u{2028}b", "7"), ev("e", "é𝄞", "7")];
        parse_every_split(stream.as_bytes(), &want);
        let mut p = SseParser::default();
        p.feed(stream.as_bytes(), &mut Vec::new()).unwrap();
        assert_eq!(p.retry(), Some(12));
        assert_eq!(p.last_event_id(), "7");
    }

    #[test]
    fn only_one_bom_and_only_at_the_start() {
        assert_eq!(parse_all(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"), []);
        assert_eq!(parse_all(b"\xEF\xBB\xBFdata: x\n\n"), [ev("message", "x", "")]);
        assert_eq!(parse_all(b"\n\xEF\xBB\xBFdata: x\n\n"), []);
        // A BOM alone, then the stream.
        parse_every_split(b"\xEF\xBB\xBF\ndata: y\n\n", &[ev("message", "y", "")]);
    }

    #[test]
    fn cr_at_chunk_end_then_lf_is_one_line_end() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out).unwrap();
        p.feed(b"", &mut out).unwrap(); // an empty chunk keeps the pending CR
        p.feed(b"\ndata: b\r", &mut out).unwrap();
        assert!(out.is_empty());
        p.feed(b"\r", &mut out).unwrap();
        assert_eq!(out, [ev("message", "a\nb", "")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_and_split_characters_decode_whole() {
        assert_eq!(
            parse_all(b"data: a\xFFb\xE2\x82\nevent: \xC3\n\n"),
            [ev("\u{fffd}", "a\u{fffd}b\u{fffd}", "")]
        );
        parse_every_split("data: 𝄞é€\n\n".as_bytes(), &[ev("message", "𝄞é€", "")]);
    }

    #[test]
    fn fields_without_colon_unknown_fields_and_event_type_reset() {
        let stream = b"event: a\ndata\nfoo: bar\n\ndata: 2\n\nevent: b\n\ndata: 3\n\n";
        assert_eq!(
            parse_all(stream),
            [ev("a", "", ""), ev("message", "2", ""), ev("message", "3", "")]
        );
    }

    #[test]
    fn retry_digits_only_and_saturating() {
        let mut p = SseParser::default();
        p.feed(b"retry: 100\nretry: -1\nretry:\nretry: 1 \n", &mut Vec::new())
            .unwrap();
        assert_eq!(p.retry(), Some(100));
        p.feed(b"retry: 99999999999999999999999\n", &mut Vec::new()).unwrap();
        assert_eq!(p.retry(), Some(u64::MAX));
    }

    #[test]
    fn incomplete_event_is_discarded_at_close_and_feed_after_close_fails() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(b"data: x\n", &mut out).unwrap();
        p.close().unwrap();
        assert!(out.is_empty());
        assert_eq!(p.feed(b"\n", &mut out), Err(SseParseError::Closed));
        p.close().unwrap();
    }

    #[test]
    fn oversized_line_poisons_and_keeps_earlier_events() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        let err = p.feed(b"data: ok\n\ndata: 0123456789abcdef\n\n", &mut out).unwrap_err();
        assert_eq!(err, SseParseError::Oversized { len: 22, max: 16 });
        assert_eq!(out, [ev("message", "ok", "")]);
        assert_eq!(p.feed(b"data: x\n\n", &mut out), Err(err.clone()));
        assert_eq!(p.close(), Err(err));
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn oversized_line_detected_while_buffering_byte_by_byte() {
        let mut p = SseParser::new(8);
        let mut out = Vec::new();
        let mut result = Ok(());
        for (n, b) in b"data: 1234567890".iter().enumerate() {
            result = p.feed(std::slice::from_ref(b), &mut out);
            if result.is_err() {
                assert_eq!(n, 8); // the 9th byte
                break;
            }
        }
        assert_eq!(result, Err(SseParseError::Oversized { len: 9, max: 8 }));
    }

    #[test]
    fn oversized_data_across_lines() {
        let mut p = SseParser::new(12);
        let mut out = Vec::new();
        p.feed(b"data: 123456\n", &mut out).unwrap();
        // 7 bytes held ("123456\n") + 6 more is over 12, though each line fits.
        assert_eq!(
            p.feed(b"data: 123456\n", &mut out),
            Err(SseParseError::Oversized { len: 13, max: 12 })
        );
        // Exactly at the limit is accepted.
        let mut p = SseParser::new(12);
        p.feed(b"data: 12345\ndata: 123456\n\n", &mut out).unwrap();
        assert_eq!(out, [ev("message", "12345\n123456", "")]);
    }

    #[test]
    fn callback_error_stops_the_call() {
        #[derive(Debug, PartialEq)]
        enum E {
            Stop,
            Parse,
        }
        impl From<SseParseError> for E {
            fn from(_: SseParseError) -> Self {
                Self::Parse
            }
        }
        let mut p = SseParser::default();
        let mut n = 0;
        let r = p.feed_with(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", |_| {
            n += 1;
            if n == 2 {
                Err(E::Stop)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(E::Stop));
        assert_eq!(n, 2);
    }

    #[test]
    fn borrowed_events_and_id_persistence() {
        let mut p = SseParser::default();
        let mut seen = Vec::new();
        p.feed_with(b"id: 1\nevent: token\ndata: a\n\ndata: b\n\nid\ndata: c\n\n", |e| {
            seen.push(format!("{}|{}|{}", e.last_event_id, e.event_type, e.data));
            Ok::<(), SseParseError>(())
        })
        .unwrap();
        assert_eq!(seen, ["1|token|a", "1|message|b", "|message|c"]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: xorshift bytes biased towards the interesting ones.
        let alphabet = b"\r\n:data eventidretry\0\xEF\xBB\xBF\xFF\xC3\xA9";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..200 {
            let mut p = SseParser::new(64);
            let mut out = Vec::new();
            let mut buf = Vec::new();
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = if x % 4 == 0 {
                    (x >> 8) as u8
                } else {
                    alphabet[(x >> 16) as usize % alphabet.len()]
                };
                buf.push(b);
            }
            for piece in buf.chunks(1 + round % 7) {
                if p.feed(piece, &mut out).is_err() {
                    break;
                }
            }
            let _ = p.close();
        }
    }
}
