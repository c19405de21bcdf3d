//! Binary frames for WebTransport streams.
//!
//! Layout: `kind: u8 | seq: varint | len: varint | payload: [u8; len]` (varints are QUIC's, RFC 9000
//! §16). The payload is UTF-8: token text, or the JSON body of `done` and `error`. Heartbeats carry seq 0.
//! [`Decoder`] is incremental: it accepts any split of the byte stream, one byte at a time included.

use crate::error::FrameError;
use crate::varint;

/// Default largest payload a decoder accepts: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Token = 1,
    Done = 2,
    Error = 3,
    Heartbeat = 4,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Result<Self, FrameError> {
        match b {
            1 => Ok(Self::Token),
            2 => Ok(Self::Done),
            3 => Ok(Self::Error),
            4 => Ok(Self::Heartbeat),
            other => Err(FrameError::UnknownKind(other)),
        }
    }

    /// The SSE `event:` type of this kind.
    pub fn sse_event(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Done => "done",
            Self::Error => "error",
            Self::Heartbeat => "heartbeat",
        }
    }

    /// Kinds that live in a stream's history and so carry a seq >= 1.
    pub fn is_sequenced(self) -> bool {
        !matches!(self, Self::Heartbeat)
    }
}

/// Appends one frame to `out`. On error nothing is appended.
pub fn encode(out: &mut Vec<u8>, kind: FrameKind, seq: u64, payload: &[u8]) -> Result<(), FrameError> {
    if seq > varint::MAX {
        return Err(FrameError::VarintOverflow(seq));
    }
    if kind.is_sequenced() && seq == 0 {
        return Err(FrameError::ZeroSeq { kind: kind as u8 });
    }
    out.reserve(1 + varint::encoded_len(seq) + varint::encoded_len(payload.len() as u64) + payload.len());
    out.push(kind as u8);
    varint::encode(seq, out)?;
    varint::encode(payload.len() as u64, out)?;
    out.extend_from_slice(payload);
    Ok(())
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub seq: u64,
    pub payload: String,
}

/// Incremental decoder. After the first error it is poisoned: every later call returns that error.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_payload: usize,
    poisoned: Option<FrameError>,
}

enum Step<'a> {
    Frame(FrameKind, u64, &'a str, usize),
    NeedMore,
}

impl Decoder {
    pub fn new(max_payload: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_payload,
            poisoned: None,
        }
    }

    /// Bytes of an incomplete frame held back.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Decodes every complete frame in `data` (after what was buffered) into `out`. On a malformed frame,
    /// `out` still holds the frames before it and the error is returned (and returned again by every
    /// later call).
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        self.feed_with(data, |kind, seq, payload| {
            out.push(Frame {
                kind,
                seq,
                payload: payload.to_owned(),
            });
        })
    }

    /// As [`Decoder::feed`], but hands each frame to `f` with its payload borrowed from the input (no copy
    /// here: a binding makes its own string once).
    pub fn feed_with(&mut self, data: &[u8], mut f: impl FnMut(FrameKind, u64, &str)) -> Result<(), FrameError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let result = if self.buf.is_empty() {
            // Common case: parse straight from the caller's bytes and keep only the tail.
            let (used, r) = self.parse_all(data, &mut f);
            if r.is_ok() {
                self.buf.extend_from_slice(&data[used..]);
            }
            r
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            buf.extend_from_slice(data);
            let (used, r) = self.parse_all(&buf, &mut f);
            buf.drain(..used);
            self.buf = buf;
            r
        };
        if let Err(e) = &result {
            self.buf = Vec::new();
            self.poisoned = Some(e.clone());
        }
        result
    }

    /// Declares the end of the byte stream: an error if part of a frame is still buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }

    fn parse_all(&self, mut data: &[u8], f: &mut impl FnMut(FrameKind, u64, &str)) -> (usize, Result<(), FrameError>) {
        let mut used = 0;
        loop {
            match self.parse_one(data) {
                Ok(Step::Frame(kind, seq, payload, n)) => {
                    f(kind, seq, payload);
                    used += n;
                    data = &data[n..];
                }
                Ok(Step::NeedMore) => return (used, Ok(())),
                Err(e) => return (used, Err(e)),
            }
        }
    }

    fn parse_one<'a>(&self, data: &'a [u8]) -> Result<Step<'a>, FrameError> {
        let Some(&kind_byte) = data.first() else {
            return Ok(Step::NeedMore);
        };
        let kind = FrameKind::from_u8(kind_byte)?;
        let Some((seq, n1)) = varint::decode(&data[1..]) else {
            return Ok(Step::NeedMore);
        };
        if kind.is_sequenced() && seq == 0 {
            return Err(FrameError::ZeroSeq { kind: kind_byte });
        }
        let Some((len, n2)) = varint::decode(&data[1 + n1..]) else {
            return Ok(Step::NeedMore);
        };
        if len > self.max_payload as u64 {
            return Err(FrameError::Oversized {
                len,
                max: self.max_payload as u64,
            });
        }
        let start = 1 + n1 + n2;
        let end = start + len as usize;
        if data.len() < end {
            return Ok(Step::NeedMore);
        }
        let payload = std::str::from_utf8(&data[start..end]).map_err(|_| FrameError::InvalidUtf8 { seq })?;
        Ok(Step::Frame(kind, seq, payload, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<Frame>) {
        let frames = vec![
            Frame {
                kind: FrameKind::Token,
                seq: 1,
                payload: "Hé".into(),
            },
            Frame {
                kind: FrameKind::Heartbeat,
                seq: 0,
                payload: String::new(),
            },
            Frame {
                kind: FrameKind::Token,
                seq: 2,
                payload: "x".repeat(300),
            },
            Frame {
                kind: FrameKind::Done,
                seq: 3,
                payload: "{\"reason\":\"stop\"}".into(),
            },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            encode(&mut bytes, f.kind, f.seq, f.payload.as_bytes()).unwrap();
        }
        (bytes, frames)
    }

    #[test]
    fn round_trip_whole_and_byte_by_byte() {
        let (bytes, frames) = sample();
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut out = Vec::new();
        d.feed(&bytes, &mut out).unwrap();
        assert_eq!(out, frames);
        d.finish().unwrap();

        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut out = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, frames);
        d.finish().unwrap();
    }

    #[test]
    fn truncated_at_close() {
        let (bytes, _) = sample();
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut out = Vec::new();
        d.feed(&bytes[..bytes.len() - 1], &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn unknown_kind_keeps_earlier_frames_and_poisons() {
        let (mut bytes, _) = sample();
        bytes.push(0x7f);
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut out = Vec::new();
        assert_eq!(d.feed(&bytes, &mut out), Err(FrameError::UnknownKind(0x7f)));
        assert_eq!(out.len(), 4);
        assert_eq!(d.feed(b"", &mut out), Err(FrameError::UnknownKind(0x7f)));
        assert!(d.finish().is_err());
    }

    #[test]
    fn oversized_is_refused_before_the_payload_arrives() {
        let mut bytes = Vec::new();
        encode(&mut bytes, FrameKind::Token, 1, &[b'a'; 100]).unwrap();
        let mut d = Decoder::new(10);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(&bytes[..4], &mut out),
            Err(FrameError::Oversized { len: 100, max: 10 })
        );
    }

    #[test]
    fn invalid_utf8_and_zero_seq() {
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(&[1, 5, 1, 0xff], &mut out),
            Err(FrameError::InvalidUtf8 { seq: 5 })
        );
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD);
        assert_eq!(d.feed(&[1, 0, 0], &mut out), Err(FrameError::ZeroSeq { kind: 1 }));
        let mut bytes = Vec::new();
        assert!(encode(&mut bytes, FrameKind::Done, 0, b"").is_err());
        assert!(encode(&mut bytes, FrameKind::Token, varint::MAX + 1, b"").is_err());
        assert!(bytes.is_empty());
    }
}
