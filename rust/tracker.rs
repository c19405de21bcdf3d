//! Client-side checking of one tokenwire SSE stream, for load tests: exactly-once accounting and lag.
//!
//! A [`Tracker`] is fed the raw response bytes of one stream (any split) and parses them with
//! [`SseParser`]. Events (docs/protocol.md section 2):
//!
//! - `stream` (id `{stream_id}:{epoch}:{resume seq}`, JSON data) opens every response, the first and each
//!   resumed one. It changes no count; it only gives [`Tracker::last_event_id`] a value before the first
//!   token arrives.
//! - `token`, `done`, `error` carry id `{stream_id}:{epoch}:{seq}`. With `last` the seq of the last frame
//!   accepted: seq <= last is a duplicate (counted, not delivered); seq > last + 1 is a gap, and
//!   `seq - last - 1` frames count as lost; then the frame is accepted and `last = seq`.
//! - anything else is ignored.
//!
//! An accepted token's text (minus a stamp, below) is hashed into a running FNV-1a 64 ([`fnv1a64`] over the
//! concatenated UTF-8 bytes), so the hash of all tokens in seq order equals the hash of the joined text. No
//! text is kept.
//!
//! **Stamps.** A token that ends with U+2063 (INVISIBLE SEPARATOR) followed by 1-20 ASCII digits carries
//! its production time in µs since the Unix epoch. If the caller passes `now_us > 0`, the lag `now_us -
//! stamp` (0 if negative) goes into a [`LagHistogram`]. `now_us` is an argument: no clock is read here.
//!
//! After a connection drops, call [`Tracker::new_response`] before feeding the resumed response: it drops
//! the incomplete event of the old response and keeps every count.

use crate::error::TrackerError;
use crate::frame::FrameKind;
use crate::sse_parse::{EventRef, SseParser, DEFAULT_MAX_EVENT_BYTES};

/// The separator between a token's text and its production stamp.
pub const STAMP_SEPARATOR: char = '\u{2063}';

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `hash` (start from [`fnv1a64`]'s offset basis: `fnv1a64(b"")`).
#[inline]
pub fn fnv1a64_update(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_update(FNV_OFFSET, bytes)
}

/// Splits `"text\u{2063}1732540000123456"` into `("text", Some(1732540000123456))`; text without a stamp
/// comes back whole with `None`.
pub fn split_stamp(token: &str) -> (&str, Option<u64>) {
    let mut sep = [0; 4];
    match trailing_number(token, STAMP_SEPARATOR.encode_utf8(&mut sep).as_bytes()) {
        Some((text_end, stamp)) => (&token[..text_end], Some(stamp)),
        None => (token, None),
    }
}

/// The number that ends `s`: 1-20 ASCII digits right after `sep`, as `(where sep starts, the number)`;
/// `None` without one (or 20 digits above `u64::MAX`).
#[inline]
fn trailing_number(s: &str, sep: &[u8]) -> Option<(usize, u64)> {
    let bytes = s.as_bytes();
    let digits = bytes.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || bytes.len() < digits + sep.len() {
        return None;
    }
    let sep_start = bytes.len() - digits - sep.len();
    if &bytes[sep_start..sep_start + sep.len()] != sep {
        return None;
    }
    Some((sep_start, s[bytes.len() - digits..].parse().ok()?))
}

// -- lag histogram ------------------------------------------------------------------------------------

/// Linear sub-buckets per power of two: a bucket is at most 1/32 (3.1 %) of its values wide, so its
/// midpoint is within 1.6 % of any value in it.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values are bucketed up to 2^27 µs (134 s); larger ones share the top bucket (`max` stays exact).
const TOP_BITS: u32 = 27;
const BUCKETS: usize = (SUB + (TOP_BITS - SUB_BITS) as u64 * SUB) as usize;

/// A log-linear (HDR-style) histogram of lags in µs: exact below 32 µs, then 32 buckets per power of
/// two up to 134 s (relative error <= 1.6 %); fixed memory (5.9 KiB, allocated at the first record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LagHistogram {
    counts: Vec<u64>,
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
}

#[inline]
fn bucket_of(v: u64) -> usize {
    let v = v.min((1 << TOP_BITS) - 1);
    if v < SUB {
        return v as usize;
    }
    let e = v.ilog2(); // SUB_BITS ..= TOP_BITS - 1
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0 .. SUB
    (SUB + u64::from(shift) * SUB + mantissa) as usize
}

/// The smallest and largest value of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    let lo = (SUB + mantissa) << shift;
    (lo, lo + (1 << shift) - 1)
}

impl LagHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one lag in µs.
    #[inline]
    pub fn record(&mut self, lag_us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
            self.min = lag_us;
            self.max = lag_us;
        }
        self.counts[bucket_of(lag_us)] += 1;
        self.count += 1;
        self.min = self.min.min(lag_us);
        self.max = self.max.max(lag_us);
        self.sum += u128::from(lag_us);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.clone_from(other);
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value recorded (0 if none).
    pub fn min(&self) -> u64 {
        self.min
    }

    /// Largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean in µs, `None` if nothing was recorded.
    #[allow(clippy::cast_precision_loss)]
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at percentile `p` (0..=100) in µs: the midpoint of the bucket holding the
    /// `ceil(p/100 * count)`-th smallest value, clamped to the exact min and max (the first and last ranks
    /// give the exact min and max). `None` if nothing was
    /// recorded or `p` is outside 0..=100 (or NaN).
    #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=100.0).contains(&p) {
            return None;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == 1 {
            return Some(self.min as f64);
        }
        if rank == self.count {
            return Some(self.max as f64);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                let mid = f64::midpoint(lo as f64, hi as f64);
                return Some(mid.clamp(self.min as f64, self.max as f64));
            }
        }
        Some(self.max as f64)
    }
}

// -- tracker ------------------------------------------------------------------------------------------

/// Counts and state of one tracked stream (everything but the parser and the histogram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Tokens accepted (in order, each once).
    pub tokens: u64,
    /// Frames (tokens, `done`, `error`) with a seq at or below the last accepted one.
    pub duplicates: u64,
    /// Frames skipped over by gaps.
    pub lost: u64,
    /// Seq of the last accepted frame (0 before any).
    pub last_seq: u64,
    /// Id of the last accepted frame (or of the first `stream` event until a frame is accepted): the
    /// `Last-Event-ID` to resume with.
    pub last_event_id: String,
    pub done: bool,
    /// Data of the `done` event (JSON).
    pub done_data: Option<String>,
    /// Data of the `error` event (JSON).
    pub error: Option<String>,
    /// FNV-1a 64 of the accepted tokens' texts (stamps removed), in seq order.
    pub content_hash: u64,
    /// Tokens whose lag was recorded.
    pub lag_count: u64,
    /// `now_us` of the feed that delivered the first token (only feeds with `now_us > 0` count).
    pub first_token_at_us: Option<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            tokens: 0,
            duplicates: 0,
            lost: 0,
            last_seq: 0,
            last_event_id: String::new(),
            done: false,
            done_data: None,
            error: None,
            content_hash: FNV_OFFSET,
            lag_count: 0,
            first_token_at_us: None,
        }
    }
}

/// The seq of a `{stream_id}:{epoch}:{seq}` id: 1-20 ASCII digits after the last `:`.
#[inline]
fn seq_of(id: &str) -> Option<u64> {
    trailing_number(id, b":").map(|(_, seq)| seq)
}

impl Progress {
    /// Handles one event; returns whether it delivered a new token.
    #[inline]
    fn event(&mut self, ev: EventRef<'_>, now_us: u64, lag: &mut LagHistogram) -> Result<bool, TrackerError> {
        let kind = match ev.event_type {
            "token" => FrameKind::Token,
            "done" => FrameKind::Done,
            "error" => FrameKind::Error,
            "stream" => {
                if self.last_event_id.is_empty() && self.last_seq == 0 {
                    self.last_event_id.push_str(ev.last_event_id);
                }
                return Ok(false);
            }
            _ => return Ok(false),
        };
        let seq = match seq_of(ev.last_event_id) {
            Some(seq) if seq > 0 => seq,
            _ => {
                return Err(TrackerError::BadId {
                    event: kind.sse_event(),
                    id: ev.last_event_id.to_owned(),
                })
            }
        };
        if seq <= self.last_seq {
            self.duplicates += 1;
            return Ok(false);
        }
        self.lost += seq - self.last_seq - 1;
        self.last_seq = seq;
        self.last_event_id.clear();
        self.last_event_id.push_str(ev.last_event_id);
        match kind {
            FrameKind::Token => {
                let (text, stamp) = split_stamp(ev.data);
                self.tokens += 1;
                self.content_hash = fnv1a64_update(self.content_hash, text.as_bytes());
                if now_us > 0 {
                    if self.first_token_at_us.is_none() {
                        self.first_token_at_us = Some(now_us);
                    }
                    if let Some(stamp) = stamp {
                        lag.record(now_us.saturating_sub(stamp));
                        self.lag_count += 1;
                    }
                }
                Ok(true)
            }
            FrameKind::Done => {
                self.done = true;
                self.done_data = Some(ev.data.to_owned());
                Ok(false)
            }
            _ => {
                self.error = Some(ev.data.to_owned());
                Ok(false)
            }
        }
    }
}

/// Exactly-once and lag accounting of one stream, fed raw SSE bytes. See the module documentation.
#[derive(Debug)]
pub struct Tracker {
    parser: SseParser,
    progress: Progress,
    lag: LagHistogram,
    error: Option<TrackerError>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl Tracker {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            parser: SseParser::new(max_event_bytes),
            progress: Progress::default(),
            lag: LagHistogram::new(),
            error: None,
        }
    }

    /// Feeds one chunk, recording lags in the tracker's own histogram; returns the number of new tokens.
    pub fn feed(&mut self, data: &[u8], now_us: u64) -> Result<u64, TrackerError> {
        let Self {
            parser,
            progress,
            lag,
            error,
        } = self;
        Self::run(parser, progress, error, data, now_us, lag)
    }

    /// Like [`Tracker::feed`], recording lags in `lag` instead (one histogram shared by many streams).
    pub fn feed_into(&mut self, data: &[u8], now_us: u64, lag: &mut LagHistogram) -> Result<u64, TrackerError> {
        Self::run(&mut self.parser, &mut self.progress, &mut self.error, data, now_us, lag)
    }

    /// Counts and errors are updated for every event before a failure; the failure is returned by this
    /// call and every later one until [`Tracker::new_response`].
    fn run(
        parser: &mut SseParser,
        progress: &mut Progress,
        error: &mut Option<TrackerError>,
        data: &[u8],
        now_us: u64,
        lag: &mut LagHistogram,
    ) -> Result<u64, TrackerError> {
        if let Some(e) = error {
            return Err(e.clone());
        }
        let mut new_tokens = 0;
        let result: Result<(), TrackerError> = parser.feed_with(data, |ev| {
            new_tokens += u64::from(progress.event(ev, now_us, lag)?);
            Ok(())
        });
        match result {
            Ok(()) => Ok(new_tokens),
            Err(e) => {
                *error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// A new response body follows (a resumed connection): discards the incomplete line and event of the
    /// previous one and any parse error; keeps every count, the last seq and the last event id.
    pub fn new_response(&mut self) {
        self.parser = SseParser::new(self.parser.max_event_bytes());
        self.error = None;
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The tracker's own histogram (empty if every feed went through [`Tracker::feed_into`]).
    pub fn lag(&self) -> &LagHistogram {
        &self.lag
    }

    /// The retry delay (ms) the server set, if any.
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse;

    const PREFIX: &str = "Zp3Q0sJ5tXkq8yRzWb1Lmg:q7Vd1aXe:";

    fn tokens(texts: &[&str], first_seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            sse::write_seq_event(&mut out, PREFIX, first_seq + i as u64, Some("token"), t.as_bytes());
        }
        out
    }

    fn event(seq: u64, kind: &str, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        sse::write_event(&mut out, Some(&format!("{PREFIX}{seq}")), Some(kind), data).unwrap();
        out
    }

    #[test]
    fn fnv_reference_values_and_concatenation() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64_update(fnv1a64(b"foo"), b"bar"), fnv1a64(b"foobar"));
    }

    #[test]
    fn stamps() {
        assert_eq!(
            split_stamp(" hello\u{2063}1732540000123456"),
            (" hello", Some(1_732_540_000_123_456))
        );
        assert_eq!(split_stamp("\u{2063}5"), ("", Some(5)));
        assert_eq!(split_stamp(" 42"), (" 42", None));
        assert_eq!(split_stamp("\u{2063}"), ("\u{2063}", None));
        assert_eq!(split_stamp("x\u{2063}12a"), ("x\u{2063}12a", None));
        assert_eq!(
            split_stamp("\u{2063}99999999999999999999"),
            ("\u{2063}99999999999999999999", None)
        );
        assert_eq!(split_stamp("7"), ("7", None));
    }

    #[test]
    fn histogram_buckets_cover_every_value_once() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1);
            }
            prev_hi = Some(hi);
            // Relative width within 1/32.
            assert!((hi - lo) * 32 <= lo.max(1), "bucket {i}: {lo}..={hi}");
        }
        assert_eq!(prev_hi, Some((1 << TOP_BITS) - 1));
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    #[allow(clippy::cast_precision_loss)]
    fn histogram_percentiles_within_two_percent() {
        let mut h = LagHistogram::new();
        assert_eq!(h.percentile(50.0), None);
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for p in [1.0, 50.0, 90.0, 99.0, 99.9] {
            let want = p / 100.0 * 100_000.0;
            let got = h.percentile(p).unwrap();
            assert!((got - want).abs() <= want * 0.02, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.percentile(0.0), Some(1.0));
        assert_eq!(h.percentile(100.0), Some(100_000.0));
        assert_eq!(h.percentile(100.5), None);
        assert_eq!(h.percentile(f64::NAN), None);
        assert_eq!(h.mean(), Some(50_000.5));
        // Values above the range keep an exact max.
        h.record(500_000_000);
        assert_eq!(h.percentile(100.0), Some(500_000_000.0));
    }

    #[test]
    fn histogram_merge() {
        let mut a = LagHistogram::new();
        let mut b = LagHistogram::new();
        let mut both = LagHistogram::new();
        for v in 0..1000 {
            if v % 3 == 0 {
                a.record(v * 7);
            } else {
                b.record(v * 7);
            }
            both.record(v * 7);
        }
        let mut m = LagHistogram::new();
        m.merge(&a);
        m.merge(&LagHistogram::new());
        m.merge(&b);
        assert_eq!(m, both);
    }

    #[test]
    fn in_order_stream_whole_and_byte_by_byte() {
        let texts = [" Hello", ",", " wor\nld", "", " é𝄞"];
        let mut stream = event(0, "stream", r#"{"id":"x"}"#);
        stream.extend(tokens(&texts, 1));
        stream.extend(event(6, "done", r#"{"reason":"stop"}"#));
        let joined: String = texts.concat();
        for bytewise in [false, true] {
            let mut t = Tracker::default();
            let mut new = 0;
            if bytewise {
                for b in &stream {
                    new += t.feed(std::slice::from_ref(b), 0).unwrap();
                }
            } else {
                new = t.feed(&stream, 0).unwrap();
            }
            let p = t.progress();
            assert_eq!(new, 5);
            assert_eq!((p.tokens, p.duplicates, p.lost, p.last_seq), (5, 0, 0, 6));
            assert_eq!(p.last_event_id, format!("{PREFIX}6"));
            assert!(p.done);
            assert_eq!(p.done_data.as_deref(), Some(r#"{"reason":"stop"}"#));
            assert_eq!(p.content_hash, fnv1a64(joined.as_bytes()));
            assert_eq!(p.first_token_at_us, None);
        }
    }

    #[test]
    fn stream_event_sets_the_id_only_before_any_frame() {
        let mut t = Tracker::default();
        t.feed(&event(0, "stream", "{}"), 0).unwrap();
        assert_eq!(t.progress().last_event_id, format!("{PREFIX}0"));
        t.feed(&tokens(&["a", "b"], 1), 0).unwrap();
        t.feed(&event(1, "stream", "{}"), 0).unwrap();
        assert_eq!(t.progress().last_event_id, format!("{PREFIX}2"));
        assert_eq!(t.progress().last_seq, 2);
    }

    #[test]
    fn duplicates_and_gaps() {
        let mut t = Tracker::default();
        assert_eq!(t.feed(&tokens(&["a", "b", "c"], 1), 0).unwrap(), 3);
        assert_eq!(t.feed(&tokens(&["b", "c", "d"], 2), 0).unwrap(), 1);
        assert_eq!(t.feed(&tokens(&["h", "i"], 8), 0).unwrap(), 2);
        t.feed(&event(9, "done", "{}"), 0).unwrap(); // a duplicate final frame
        let p = t.progress();
        assert_eq!((p.tokens, p.duplicates, p.lost, p.last_seq), (6, 3, 3, 9));
        assert!(!p.done);
        assert_eq!(p.content_hash, fnv1a64(b"abcdhi"));
    }

    #[test]
    fn error_event() {
        let mut t = Tracker::default();
        t.feed(&tokens(&["a"], 1), 0).unwrap();
        t.feed(&event(2, "error", r#"{"code":"generation_failed"}"#), 0)
            .unwrap();
        let p = t.progress();
        assert_eq!(p.error.as_deref(), Some(r#"{"code":"generation_failed"}"#));
        assert!(!p.done);
        assert_eq!(p.last_seq, 2);
    }

    #[test]
    fn stamps_record_lag_and_first_token_time() {
        let mut t = Tracker::default();
        let mut shared = LagHistogram::new();
        t.feed(&tokens(&[" a\u{2063}1000", " b\u{2063}1500", " c"], 1), 2000)
            .unwrap();
        t.feed_into(&tokens(&[" d\u{2063}2500"], 4), 2400, &mut shared).unwrap(); // clock skew: lag 0
        t.feed(&tokens(&[" e\u{2063}100"], 5), 0).unwrap(); // no clock: not timed
        let p = t.progress();
        assert_eq!(p.content_hash, fnv1a64(b" a b c d e"));
        assert_eq!(p.first_token_at_us, Some(2000));
        assert_eq!(p.lag_count, 3);
        assert_eq!(t.lag().count(), 2);
        assert_eq!((t.lag().min(), t.lag().max()), (500, 1000));
        assert_eq!((shared.count(), shared.max()), (1, 0));
    }

    #[test]
    fn bad_ids_fail_and_poison_until_new_response() {
        for id in ["nocolon", "a:b:", "a:b:x1", "a:b:0", "a:b:123456789012345678901"] {
            let mut t = Tracker::default();
            let mut stream = Vec::new();
            sse::write_event(&mut stream, Some(id), Some("token"), "x").unwrap();
            let err = t.feed(&stream, 0).unwrap_err();
            assert!(matches!(err, TrackerError::BadId { event: "token", .. }), "{id}");
            assert_eq!(t.feed(&tokens(&["a"], 1), 0), Err(err));
            t.new_response();
            assert_eq!(t.feed(&tokens(&["a"], 1), 0), Ok(1));
        }
    }

    #[test]
    fn resumed_response_continues_the_same_tracker() {
        let texts: Vec<String> = (0..20).map(|i| format!(" t{i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut first = event(0, "stream", "{}");
        first.extend(tokens(&refs[..12], 1));
        let mut t = Tracker::default();
        // The connection drops in the middle of event 12.
        let cut = first.len() - 9;
        assert_eq!(t.feed(&first[..cut], 0).unwrap(), 11);
        assert_eq!(t.progress().last_event_id, format!("{PREFIX}11"));
        t.new_response();
        let mut second = event(11, "stream", "{}");
        second.extend(tokens(&refs[11..], 12));
        second.extend(event(21, "done", "{}"));
        assert_eq!(t.feed(&second, 0).unwrap(), 9);
        let p = t.progress();
        assert_eq!(
            (p.tokens, p.duplicates, p.lost, p.last_seq, p.done),
            (20, 0, 0, 21, true)
        );
        assert_eq!(p.content_hash, fnv1a64(texts.concat().as_bytes()));
    }

    #[test]
    fn oversized_event_fails() {
        let mut t = Tracker::new(32);
        let err = t.feed(&tokens(&[&"x".repeat(40)], 1), 0).unwrap_err();
        assert!(matches!(err, TrackerError::Parse(_)));
    }
}
