"""``_core.SseDecoder`` (rust/sse_parse.rs) against the independent WHATWG parser in ``tests/support``."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_sse import Item, items, render
from tests.support.sse_spec_parser import SpecParser
from tokenwire import _core
from tokenwire.errors import LocalProtocolError, RemoteProtocolError

Triple = tuple[str, str, str]


def spec_events(chunks: list[bytes]) -> tuple[list[Triple], SpecParser]:
    parser = SpecParser()
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return [(e.last_event_id, e.type, e.data) for e in events], parser


def decoder_events(chunks: list[bytes], **kwargs: int) -> tuple[list[Triple], _core.SseDecoder]:
    decoder = _core.SseDecoder(**kwargs)
    events: list[Triple] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    decoder.close()
    return events, decoder


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def assert_same(chunks: list[bytes]) -> list[Triple]:
    want, spec = spec_events(chunks)
    got, decoder = decoder_events(chunks)
    assert got == want
    assert decoder.retry == spec.retry
    assert decoder.last_event_id == spec.last_event_id
    return got


# -- property tests ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(items, max_size=8), data=st.data())
def test_core_writers_decode_like_the_spec_parser(seq: list[Item], data: st.DataObject) -> None:
    stream = b"".join(render(i) for i in seq)
    assert_same([stream])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    assert_same(split(stream, cuts))
    assert_same(bytewise(stream))


# Bytes that matter to an SSE parser (line ends, field names, colon, space, NUL, BOM pieces) and broken or
# split UTF-8 (lone continuation bytes, truncated sequences, surrogates, overlongs), mixed with any byte.
_TRICKY_BYTES = [
    b"\r",
    b"\n",
    b"\r\n",
    b":",
    b" ",
    b"\x00",
    b"data",
    b"data:",
    b"data: ",
    b"id:",
    b"id: ",
    b"event:",
    b"retry:",
    b"retry: 12",
    b"\xef\xbb\xbf",
    b"\xef\xbb",
    b"\xe2\x81\xa3",
    b"\xf0\x9d\x84\x9e",
    b"\xf0\x9d",
    b"\x80",
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xc3",
    b"1",
]
wire_bytes = st.lists(st.one_of(st.sampled_from(_TRICKY_BYTES), st.binary(max_size=6)), max_size=40).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(stream=wire_bytes, data=st.data())
def test_arbitrary_bytes_decode_like_the_spec_parser(stream: bytes, data: st.DataObject) -> None:
    assert_same([stream])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    assert_same(split(stream, cuts))
    assert_same(bytewise(stream))


@settings(max_examples=300, deadline=None)
@given(stream=wire_bytes, max_event_bytes=st.integers(0, 24), data=st.data())
def test_arbitrary_bytes_raise_only_remote_protocol_error(
    stream: bytes, max_event_bytes: int, data: st.DataObject
) -> None:
    want, _ = spec_events([stream])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    decoder = _core.SseDecoder(max_event_bytes)
    got: list[Triple] = []
    try:
        for chunk in split(stream, cuts):
            got += decoder.feed(chunk)
        decoder.close()
    except RemoteProtocolError:
        # Whatever came out before the error is a correct prefix, and the decoder stays failed.
        assert got == want[: len(got)]
        with pytest.raises(RemoteProtocolError):
            decoder.feed(b"data: x\n\n")
        with pytest.raises(RemoteProtocolError):
            decoder.close()
    else:
        assert got == want


# -- examples ------------------------------------------------------------------------------------------


def test_whatwg_examples() -> None:
    assert assert_same([b"data: YHOO\ndata: +2\ndata: 10\n\n"]) == [("", "message", "YHOO\n+2\n10")]
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    assert assert_same([stream]) == [
        ("1", "message", "first event"),
        ("", "message", "second event"),
        ("", "message", " third event"),
    ]
    assert assert_same([b"data\n\ndata\ndata\n\ndata:"]) == [("", "message", ""), ("", "message", "\n")]


def test_tokenwire_events() -> None:
    stream = (
        _core.sse_retry(2000)
        + _core.sse_event('{"stream":"s"}', id="s:e:0", event="stream")
        + _core.sse_batch(["Hel", "lo\r\nwor", " ld"], id_prefix="s:e:", first_seq=1)
        + _core.sse_comment()
        + _core.sse_event('{"reason":"stop"}', id="s:e:4", event="done")
    )
    want = [
        ("s:e:0", "stream", '{"stream":"s"}'),
        ("s:e:1", "token", "Hel"),
        ("s:e:2", "token", "lo\nwor"),
        ("s:e:3", "token", " ld"),
        ("s:e:4", "done", '{"reason":"stop"}'),
    ]
    assert assert_same([stream]) == want
    assert assert_same(bytewise(stream)) == want
    decoder = _core.SseDecoder()
    decoder.feed(stream)
    assert (decoder.retry, decoder.last_event_id, decoder.buffered) == (2000, "s:e:4", 0)


def test_split_crlf_bom_and_utf8() -> None:
    decoder = _core.SseDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    assert decoder.feed(b"\xbfdata: \xf0\x9d") == []
    assert decoder.feed(b"\x84\x9e\r") == []
    assert decoder.buffered > 0
    assert decoder.feed(b"\n") == []  # the LF of a split CRLF: no blank line
    assert decoder.feed(b"\r") == [("", "message", "𝄞")]


def test_oversized_line_raises_after_delivering_earlier_events() -> None:
    decoder = _core.SseDecoder(max_event_bytes=16)
    assert decoder.feed(b"data: ok\n\ndata: 0123456789abcdef\n\n") == [("", "message", "ok")]
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 16 bytes") as info:
        decoder.feed(b"")
    assert info.value.status_hint == 400
    with pytest.raises(RemoteProtocolError):
        decoder.close()


def test_oversized_data_and_buffered_line() -> None:
    decoder = _core.SseDecoder(max_event_bytes=12)
    decoder.feed(b"data: 123456\n")
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"data: 123456\n")
    decoder = _core.SseDecoder(max_event_bytes=8)
    decoder.feed(b"data: 12")
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"3")


def test_default_limit_fits_a_maximal_frame() -> None:
    payload = "x" * _core.DEFAULT_MAX_PAYLOAD
    stream = _core.sse_event(payload, id="s:e:1", event="token")
    assert _core.SseDecoder().feed(stream) == [("s:e:1", "token", payload)]
    assert _core.DEFAULT_MAX_EVENT_BYTES > _core.DEFAULT_MAX_PAYLOAD
    with pytest.raises(RemoteProtocolError):
        _core.SseDecoder().feed(_core.sse_event("x" * (_core.DEFAULT_MAX_EVENT_BYTES + 1)))


def test_close_discards_incomplete_event_and_refuses_feed() -> None:
    decoder = _core.SseDecoder()
    assert decoder.feed(b"data: x\n") == []
    decoder.close()
    decoder.close()
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"\n")


def test_retry_and_id_rules() -> None:
    decoder = _core.SseDecoder()
    assert decoder.retry is None
    decoder.feed(b"retry: 10\nretry: x\nretry: -1\nid: a\x00b\n")
    assert decoder.retry == 10
    assert decoder.last_event_id == ""
    decoder.feed(b"id: 7\n\ndata: x\n\n")
    assert decoder.last_event_id == "7"
