//! The shared wire vectors (`tests/vectors/wire.json`, also read by the JS client's tests and the Python protocol
//! tests) against the core: varints, binary frames, the SSE encoder and the SSE parser.
//!
//! Every byte string is fed whole, byte by byte, cut once at every position, and as the vector's own chunks
//! where it gives some; each way must give the same frames or events, delivered by the call that supplies the
//! byte that completes them, and each error must be raised by the call that supplies the byte where the
//! vector says it is detected.

// A test crate: its helpers panic on a malformed vector, as the tests themselves do (clippy.toml allows that in
// `#[test]` functions only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use _core::error::FrameError;
use _core::frame::{self, FrameKind};
use _core::sse;
use _core::sse_parse::{Event, SseParser};
use _core::varint;
use serde_json::Value;

const WIRE: &str = include_str!("../../tests/vectors/wire.json");

fn vectors() -> Value {
    serde_json::from_str(WIRE).expect("tests/vectors/wire.json is JSON")
}

fn cases<'a>(v: &'a Value, section: &str, list: &str) -> &'a [Value] {
    let cases = v[section][list]
        .as_array()
        .unwrap_or_else(|| panic!("{section}.{list} is a list"));
    assert!(!cases.is_empty(), "{section}.{list} is empty");
    cases
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex: {s}")))
        .collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// A decimal string (the vectors' form of integers that may pass 2^53).
fn big(v: &Value) -> u64 {
    text(v)
        .parse()
        .unwrap_or_else(|_| panic!("expected a decimal u64 string, got {v}"))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("expected a number, got {v}"))
}

fn name(case: &Value) -> &str {
    text(&case["name"])
}

/// The case's bytes; its `text`, where given, must be the same bytes.
fn bytes_of(case: &Value) -> Vec<u8> {
    let raw = unhex(text(&case["hex"]));
    if let Some(t) = case.get("text") {
        assert_eq!(text(t).as_bytes(), raw, "{}: text and hex differ", name(case));
    }
    raw
}

/// Every way the tests feed a byte string: whole, byte by byte, in two pieces cut at every position, and as
/// the case's own `chunks` (empty ones included).
fn splits(raw: &[u8], case: &Value) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out = vec![
        ("whole".to_owned(), vec![raw.to_vec()]),
        ("byte by byte".to_owned(), raw.iter().map(|b| vec![*b]).collect()),
    ];
    for cut in 0..=raw.len() {
        out.push((format!("cut at {cut}"), vec![raw[..cut].to_vec(), raw[cut..].to_vec()]));
    }
    if let Some(chunks) = case.get("chunks") {
        let chunks: Vec<Vec<u8>> = chunks.as_array().unwrap().iter().map(|c| unhex(text(c))).collect();
        assert_eq!(chunks.concat(), raw, "{}: chunks do not make up hex", name(case));
        out.push(("the case's chunks".to_owned(), chunks));
    }
    out
}

// -- varints ---------------------------------------------------------------------------------------------------

#[test]
fn varint_decode() {
    let v = vectors();
    for case in cases(&v, "varint", "decode") {
        let raw = bytes_of(case);
        let at = usize::try_from(num(&case["at"])).unwrap();
        let got = varint::decode(&raw[at..]);
        if case.get("incomplete").is_some() {
            assert_eq!(got, None, "{}", name(case));
            continue;
        }
        let next = usize::try_from(num(&case["next"])).unwrap();
        assert_eq!(got, Some((big(&case["value"]), next - at)), "{}", name(case));
        // Any shorter prefix of the varint is incomplete.
        for end in at..next {
            assert_eq!(
                varint::decode(&raw[at..end]),
                None,
                "{}: prefix of {end} bytes",
                name(case)
            );
        }
    }
}

#[test]
fn varint_encode() {
    let v = vectors();
    for case in cases(&v, "varint", "encode") {
        let value = big(&case["value"]);
        let want = unhex(text(&case["hex"]));
        let mut out = Vec::new();
        varint::encode(value, &mut out).unwrap();
        assert_eq!(out, want, "encode({value})");
        assert_eq!(varint::encoded_len(value), want.len(), "encoded_len({value})");
        assert_eq!(varint::decode(&want), Some((value, want.len())));
    }
    for value in cases(&v, "varint", "encode_refused") {
        let value = big(value);
        let mut out = Vec::new();
        assert_eq!(varint::encode(value, &mut out), Err(FrameError::VarintOverflow(value)));
        assert!(out.is_empty());
    }
}

// -- frames ----------------------------------------------------------------------------------------------------

fn kind_of(v: &Value, kinds: &Value) -> FrameKind {
    FrameKind::from_u8(u8::try_from(num(&kinds[text(v)])).unwrap()).unwrap()
}

fn expected_frames(case: &Value, kinds: &Value) -> Vec<(frame::Frame, usize)> {
    case["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let frame = frame::Frame {
                kind: kind_of(&f["kind"], kinds),
                seq: big(&f["seq"]),
                payload: text(&f["payload"]).to_owned(),
            };
            (frame, usize::try_from(num(&f["end"])).unwrap())
        })
        .collect()
}

/// Whether `e` is the error the vector names, with the same fields.
fn frame_error_matches(e: &FrameError, want: &Value) -> bool {
    match (text(&want["code"]), e) {
        ("unknown_kind", FrameError::UnknownKind(k)) => u64::from(*k) == num(&want["kind"]),
        ("zero_seq", FrameError::ZeroSeq { kind }) => u64::from(*kind) == num(&want["kind"]),
        ("oversized", FrameError::Oversized { len, max }) => *len == big(&want["len"]) && *max == num(&want["max"]),
        ("invalid_utf8", FrameError::InvalidUtf8 { seq }) => *seq == big(&want["seq"]),
        ("truncated", FrameError::Truncated { buffered }) => {
            want.get("buffered").is_none_or(|b| *buffered as u64 == num(b))
        }
        _ => false,
    }
}

/// Feeds `chunks` (which start `offset` bytes into the stream the vector's offsets count) and checks the
/// frames, where each is delivered, the error, where it is detected, and that the decoder stays poisoned.
fn run_frames(
    chunks: &[Vec<u8>],
    offset: usize,
    max_payload: usize,
    want: &[(frame::Frame, usize)],
    error: Option<&Value>,
    label: &str,
) {
    let mut d = frame::Decoder::new(max_payload);
    let mut out = Vec::new();
    let mut fed = offset;
    for chunk in chunks {
        let before = fed;
        fed += chunk.len();
        let result = d.feed(chunk, &mut out);
        let delivered = want.iter().filter(|(_, end)| *end <= fed).count();
        let wanted: Vec<_> = want[..delivered].iter().map(|(f, _)| f.clone()).collect();
        assert_eq!(out, wanted, "{label}: frames after {fed} bytes");
        let detected_here = error.and_then(|e| e.get("after")).map(num).map(|a| a as usize);
        match result {
            Ok(()) => assert!(
                detected_here.is_none_or(|a| a > fed),
                "{label}: no error after {fed} bytes, expected one after {detected_here:?}"
            ),
            Err(e) => {
                let want_e = error.unwrap_or_else(|| panic!("{label}: unexpected error {e} after {fed} bytes"));
                let after = detected_here.unwrap_or_else(|| panic!("{label}: {e} raised by a feed, not at close"));
                assert!(
                    before < after && after <= fed,
                    "{label}: {e} raised by the call for bytes {before}..{fed}, expected at byte {after}"
                );
                assert!(frame_error_matches(&e, want_e), "{label}: got {e:?}, expected {want_e}");
                assert_eq!(out.len(), want.len(), "{label}: frames before the error");
                // Poisoned: every later call fails the same way.
                let mut more = Vec::new();
                assert_eq!(d.feed(b"", &mut more), Err(e.clone()), "{label}: poisoned");
                assert_eq!(d.feed(&[4, 0, 0], &mut more), Err(e.clone()), "{label}: poisoned");
                assert!(more.is_empty());
                assert_eq!(d.finish(), Err(e), "{label}: poisoned at close");
                return;
            }
        }
    }
    assert_eq!(out.len(), want.len(), "{label}: every frame delivered");
    match error {
        None => {
            d.finish().unwrap_or_else(|e| panic!("{label}: close failed: {e}"));
            assert_eq!(d.buffered(), 0);
        }
        Some(want_e) => {
            assert_eq!(want_e["at"], "close", "{label}: the error {want_e} was never raised");
            let e = d.finish().expect_err(label);
            assert!(
                frame_error_matches(&e, want_e),
                "{label}: got {e:?} at close, expected {want_e}"
            );
            assert_eq!(d.finish(), Err(e), "{label}: poisoned at close");
        }
    }
}

#[test]
fn frame_decode() {
    let v = vectors();
    let kinds = &v["frames"]["kinds"];
    let default_max = usize::try_from(num(&v["frames"]["default_max_payload"])).unwrap();
    assert_eq!(default_max, frame::DEFAULT_MAX_PAYLOAD);
    for case in cases(&v, "frames", "decode") {
        let raw = bytes_of(case);
        let max = case
            .get("max_payload")
            .map_or(default_max, |m| usize::try_from(num(m)).unwrap());
        let want = expected_frames(case, kinds);
        for (how, chunks) in splits(&raw, case) {
            run_frames(
                &chunks,
                0,
                max,
                &want,
                case.get("error"),
                &format!("{}: {how}", name(case)),
            );
        }
        if case.get("encodes_to_hex").is_some() {
            let mut out = Vec::new();
            for (f, end) in &want {
                frame::encode(&mut out, f.kind, f.seq, f.payload.as_bytes()).unwrap();
                assert_eq!(out.len(), *end, "{}: frame end", name(case));
            }
            assert_eq!(out, raw, "{}: encoded", name(case));
        }
    }
}

#[test]
fn frame_encode_refused() {
    let v = vectors();
    let kinds = &v["frames"]["kinds"];
    for case in cases(&v, "frames", "encode_refused") {
        let mut out = Vec::new();
        let kind = kind_of(&case["kind"], kinds);
        let r = frame::encode(&mut out, kind, big(&case["seq"]), text(&case["payload"]).as_bytes());
        assert!(r.is_err(), "{}: encoded", name(case));
        assert!(out.is_empty(), "{}: wrote bytes", name(case));
    }
}

// -- WebTransport messages: the header is a varint-framed JSON body; replies are followed by frames -----------

/// Checks `kind | len | JSON body` at the front of `raw` against the vector; returns the message's length.
fn check_message(raw: &[u8], kind: &Value, body: &Value, kinds: &Value, label: &str) -> usize {
    assert_eq!(u64::from(raw[0]), num(&kinds[text(kind)]), "{label}: kind byte");
    let (len, used) = varint::decode(&raw[1..]).unwrap_or_else(|| panic!("{label}: no length"));
    let mut minimal = Vec::new();
    varint::encode(len, &mut minimal).unwrap();
    assert_eq!(minimal, raw[1..=used], "{label}: length not minimal");
    let end = 1 + used + usize::try_from(len).unwrap();
    let parsed: Value = serde_json::from_slice(&raw[1 + used..end]).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(&parsed, body, "{label}: body");
    end
}

#[test]
fn messages() {
    let v = vectors();
    let kinds = &v["messages"]["kinds"];
    for case in cases(&v, "messages", "requests") {
        let raw = bytes_of(case);
        let end = check_message(&raw, &case["kind"], &case["body"], kinds, name(case));
        assert_eq!(end, raw.len(), "{}: bytes after the request", name(case));
    }
    let frame_kinds = &v["frames"]["kinds"];
    let max = frame::DEFAULT_MAX_PAYLOAD;
    let mut checked = 0;
    for case in cases(&v, "messages", "replies") {
        let Some(reply) = case["reply"].as_object() else {
            continue; // refused before any reply: the message reader's business, not the core's
        };
        let raw = bytes_of(case);
        let end = check_message(&raw, &reply["kind"], &reply["body"], kinds, name(case));
        assert_eq!(end as u64, num(&reply["end"]), "{}: reply end", name(case));
        // The frames after the reply, fed to the core's decoder in every split.
        let want = expected_frames(case, frame_kinds);
        let rest = &raw[end..];
        for (how, chunks) in splits(rest, &Value::Null) {
            run_frames(
                &chunks,
                end,
                max,
                &want,
                case.get("error"),
                &format!("{}: {how}", name(case)),
            );
        }
        checked += 1;
    }
    assert!(checked > 0);
}

// -- SSE -------------------------------------------------------------------------------------------------------

fn expected_events(case: &Value) -> Vec<(Event, Option<usize>)> {
    case["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let event = Event {
                last_event_id: text(&e["id"]).to_owned(),
                event_type: text(&e["event"]).to_owned(),
                data: text(&e["data"]).to_owned(),
            };
            (
                event,
                e.get("dispatched_after").map(|n| usize::try_from(num(n)).unwrap()),
            )
        })
        .collect()
}

fn run_sse(chunks: &[Vec<u8>], case: &Value, label: &str) {
    let want = expected_events(case);
    let mut p = SseParser::default();
    let mut out = Vec::new();
    let mut fed = 0;
    for chunk in chunks {
        let before = fed;
        let n = out.len();
        fed += chunk.len();
        p.feed(chunk, &mut out).unwrap_or_else(|e| panic!("{label}: {e}"));
        for (i, ev) in out.iter().enumerate().skip(n) {
            let (want_ev, at) = want.get(i).unwrap_or_else(|| panic!("{label}: extra event {ev:?}"));
            assert_eq!(ev, want_ev, "{label}: event {i}");
            if let Some(at) = at {
                assert!(
                    before < *at && *at <= fed,
                    "{label}: event {i} dispatched by the call for bytes {before}..{fed}, expected at byte {at}"
                );
            }
        }
    }
    p.close().unwrap();
    assert_eq!(
        out,
        want.into_iter().map(|(e, _)| e).collect::<Vec<_>>(),
        "{label}: events"
    );
    assert_eq!(p.retry(), case["retry"].as_u64(), "{label}: retry");
    if let Some(id) = case.get("last_event_id") {
        assert_eq!(p.last_event_id(), text(id), "{label}: last event id");
    }
}

#[test]
fn sse_parse() {
    let v = vectors();
    for case in cases(&v, "sse", "parse") {
        let raw = bytes_of(case);
        for (how, chunks) in splits(&raw, case) {
            run_sse(&chunks, case, &format!("{}: {how}", name(case)));
        }
    }
}

#[test]
fn sse_encode() {
    let v = vectors();
    for case in cases(&v, "sse", "encode") {
        let raw = bytes_of(case);
        let mut out = Vec::new();
        match text(&case["op"]) {
            "event" => sse::write_event(
                &mut out,
                case["id"].as_str(),
                case["event"].as_str(),
                text(&case["data"]),
            )
            .unwrap(),
            "seq_events" => {
                let prefix = text(&case["id_prefix"]);
                sse::check_id(prefix).unwrap();
                let event = case["event"].as_str();
                if let Some(event) = event {
                    sse::check_event(event).unwrap();
                }
                for (i, data) in case["data"].as_array().unwrap().iter().enumerate() {
                    let seq = num(&case["first_seq"]) + i as u64;
                    sse::write_seq_event(&mut out, prefix, seq, event, text(data).as_bytes());
                }
            }
            "comment" => sse::write_comment(&mut out, text(&case["comment"])),
            "retry" => sse::write_retry(&mut out, num(&case["retry_ms"])),
            op => panic!("{}: unknown op {op}", name(case)),
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&raw),
            "{}",
            name(case)
        );
        // What a parser makes of the encoder's bytes, in every split.
        for (how, chunks) in splits(&raw, case) {
            run_sse(&chunks, case, &format!("{}: parsed, {how}", name(case)));
        }
    }
    for case in cases(&v, "sse", "encode_refused") {
        let mut out = Vec::new();
        let r = sse::write_event(
            &mut out,
            case["id"].as_str(),
            case["event"].as_str(),
            text(&case["data"]),
        );
        assert!(r.is_err(), "{}: encoded", name(case));
        assert!(out.is_empty(), "{}: wrote bytes", name(case));
    }
}
