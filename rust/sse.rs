//! Server-sent events encoder following the WHATWG HTML "server-sent events" section.
//!
//! Every event is written as `event`, then one `data: ` line per line of the data, then `id`, then a blank
//! line. `id` comes last so that a client which records the id when it reads the line (before the event is
//! complete, as `@microsoft/fetch-event-source` does) has the smallest window in which a cut loses an event:
//! only the `id:` line and the blank line after it (see docs/protocol.md, "Field order"). Data is split on every newline kind (`\r\n`, `\r`, `\n`), so a spec-conforming parser joins the
//! lines back with `\n`: text without CR arrives exactly as sent, and CR/CRLF arrive as LF (SSE cannot
//! carry a CR). The space after `data:` is always written, so data that starts with a space keeps it.
//! `id` and `event` are single-line fields: CR or LF in them (and NUL in `id`, which parsers ignore) is
//! refused, never written.

use crate::error::SseError;

/// Refuses an `id` value that a WHATWG parser would split or ignore.
pub fn check_id(id: &str) -> Result<(), SseError> {
    if id.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(SseError::InvalidField {
            field: "id",
            reason: "must not contain CR or LF",
        });
    }
    if id.bytes().any(|b| b == 0) {
        return Err(SseError::InvalidField {
            field: "id",
            reason: "must not contain NUL",
        });
    }
    Ok(())
}

/// Refuses an `event` value that would end the field early.
pub fn check_event(event: &str) -> Result<(), SseError> {
    if event.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(SseError::InvalidField {
            field: "event",
            reason: "must not contain CR or LF",
        });
    }
    Ok(())
}

/// Calls `f` with each line of `bytes`, splitting on `\r\n`, `\r` and `\n` (an empty text is one empty line).
#[inline]
fn for_each_line(bytes: &[u8], mut f: impl FnMut(&[u8])) {
    let mut start = 0;
    let mut iter = memchr::memchr2_iter(b'\r', b'\n', bytes);
    while let Some(i) = iter.next() {
        if i < start {
            continue; // the LF of a CRLF already consumed
        }
        f(&bytes[start..i]);
        start = i + 1;
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            start += 1;
            // Skip the LF that the iterator will report next.
            let _ = iter.next();
        }
    }
    f(&bytes[start..]);
}

/// Appends the `data:` lines of one event (without the blank line that ends it). `data` is UTF-8 text; bytes,
/// so that text stored as bytes (the ring's arena) is not validated again on every replay.
#[inline]
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    for_each_line(data, |line| {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    });
}

/// Appends one complete event. Fields that SSE cannot carry are refused before anything is written.
pub fn write_event(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>, data: &str) -> Result<(), SseError> {
    if let Some(id) = id {
        check_id(id)?;
    }
    if let Some(event) = event {
        check_event(event)?;
    }
    write_body(out, event, data.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Ok(())
}

/// The start of an event, before its `id:` line: the `event:` line and the `data:` lines.
#[inline]
fn write_body(out: &mut Vec<u8>, event: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    write_data(out, data);
}

/// Appends an event whose id is `id_prefix` followed by `seq` in decimal. The caller has checked
/// `id_prefix` with [`check_id`] and `event` with [`check_event`] once; this is the per-token hot path.
#[inline]
pub fn write_seq_event(out: &mut Vec<u8>, id_prefix: &str, seq: u64, event: Option<&str>, data: &[u8]) {
    write_body(out, event, data);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id_prefix.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends a comment (one `:` line per line of `text`); parsers ignore it, proxies see traffic.
pub fn write_comment(out: &mut Vec<u8>, text: &str) {
    for_each_line(text.as_bytes(), |line| {
        out.push(b':');
        if !line.is_empty() {
            out.push(b' ');
            out.extend_from_slice(line);
        }
        out.push(b'\n');
    });
}

/// Appends a `retry:` field, the reconnection delay in milliseconds, as its own block.
pub fn write_retry(out: &mut Vec<u8>, retry_ms: u64) {
    out.extend_from_slice(b"retry: ");
    out.extend_from_slice(itoa::Buffer::new().format(retry_ms).as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, ev: Option<&str>, data: &str) -> String {
        let mut out = Vec::new();
        write_event(&mut out, id, ev, data).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line() {
        assert_eq!(
            event(Some("s:e:1"), Some("token"), " Hello"),
            "event: token\ndata:  Hello\nid: s:e:1\n\n"
        );
    }

    #[test]
    fn every_newline_kind_splits() {
        assert_eq!(
            event(None, None, "a\nb\r\nc\rd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(event(None, None, "\r\n"), "data: \ndata: \n\n");
        assert_eq!(event(None, None, "\r\r\n\n"), "data: \ndata: \ndata: \ndata: \n\n");
        assert_eq!(event(None, None, "x\r"), "data: x\ndata: \n\n");
    }

    #[test]
    fn empty_data_is_one_empty_line() {
        assert_eq!(event(None, None, ""), "data: \n\n");
    }

    #[test]
    fn bad_fields_are_refused_and_nothing_written() {
        let mut out = Vec::new();
        assert!(write_event(&mut out, Some("a\nb"), None, "x").is_err());
        assert!(write_event(&mut out, Some("a\rb"), None, "x").is_err());
        assert!(write_event(&mut out, Some("a\0b"), None, "x").is_err());
        assert!(write_event(&mut out, None, Some("to\nken"), "x").is_err());
        assert!(out.is_empty());
        // NUL is fine in event types and data.
        assert!(write_event(&mut out, None, Some("a\0"), "\0").is_ok());
    }

    #[test]
    fn seq_event_matches_checked_event() {
        let mut out = Vec::new();
        write_seq_event(&mut out, "abc:ep:", 42, Some("token"), b"x\ny");
        assert_eq!(out, event(Some("abc:ep:42"), Some("token"), "x\ny").into_bytes());
    }

    #[test]
    fn comment_and_retry() {
        let mut out = Vec::new();
        write_comment(&mut out, "");
        write_comment(&mut out, "hb\nx");
        write_retry(&mut out, 1500);
        assert_eq!(out, b":\n: hb\n: x\nretry: 1500\n\n");
    }
}
