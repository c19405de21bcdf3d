"""SSE output of ``_core`` parsed by the independent WHATWG parser in ``tests/support``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.sse_spec_parser import Event, SpecParser, parse
from tokenwire import _core
from tokenwire.errors import LocalProtocolError

_NEWLINE = re.compile(r"\r\n|\r|\n")


def normalise(text: str) -> str:
    """What SSE can carry of ``text``: every CRLF and CR arrives as LF (documented in rust/sse.rs)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def lines(text: str) -> list[str]:
    return _NEWLINE.split(text)


# -- strategies ----------------------------------------------------------------------------------------

# Characters that stress a parser: every newline kind, NUL, colon, space, BOM, Unicode line separators
# (which SSE must NOT treat as line ends), NEL, and multi-byte UTF-8 of every length.
_TRICKY = "\r\n\x00: \ufeff\u2028\u2029\x85\x0b\x0c\té€𝄞"
tricky_text = st.text(alphabet=st.one_of(st.sampled_from(_TRICKY), st.characters(codec="utf-8")), max_size=40)
any_text = st.one_of(st.text(), tricky_text)
# Single-line fields: ids refuse CR, LF and NUL; event types refuse CR and LF.
id_text = st.text(
    alphabet=st.one_of(st.sampled_from(" :\ufeff\u2028é𝄞"), st.characters(codec="utf-8", exclude_characters="\r\n\x00"))
)
event_text = st.text(
    alphabet=st.one_of(st.sampled_from(" :\x00\ufeff\u2028é"), st.characters(codec="utf-8", exclude_characters="\r\n"))
)


@dataclass(frozen=True)
class Item:
    """One call to a ``_core`` SSE writer."""

    op: str
    args: tuple
    kwargs: tuple


def _event_item(data: str, id: str | None, event: str | None) -> Item:
    return Item("event", (data,), (("id", id), ("event", event)))


items = st.one_of(
    st.builds(_event_item, any_text, st.none() | id_text, st.none() | event_text),
    st.builds(
        lambda toks, prefix, first, ev: Item(
            "batch", (toks,), (("id_prefix", prefix), ("first_seq", first), ("event", ev))
        ),
        st.lists(any_text, max_size=6),
        id_text,
        st.integers(0, 2**62 - 8),  # seqs are varints on the binary wire: at most 2**62 - 1
        st.none() | event_text,
    ),
    st.builds(lambda t: Item("comment", (t,), ()), any_text),
    st.builds(lambda ms: Item("retry", (ms,), ()), st.integers(0, 2**64 - 1)),
)


def render(item: Item) -> bytes:
    fn = {"event": _core.sse_event, "batch": _core.sse_batch, "comment": _core.sse_comment, "retry": _core.sse_retry}
    return fn[item.op](*item.args, **dict(item.kwargs))


@dataclass
class Expected:
    events: list[Event]
    comments: list[str]
    retry: int | None


def expected_of(seq: list[Item], *, exact: bool = False) -> Expected:
    """What a conforming parser must produce for ``seq``; ``exact`` keeps CRs (caller checked there are none)."""
    fix = (lambda s: s) if exact else normalise
    events: list[Event] = []
    comments: list[str] = []
    retry: int | None = None
    last_id = ""
    for item in seq:
        kw = dict(item.kwargs)
        if item.op == "event":
            if kw["id"] is not None:
                last_id = kw["id"]
            events.append(Event(kw["event"] or "message", fix(item.args[0]), last_id))
        elif item.op == "batch":
            for i, tok in enumerate(item.args[0]):
                last_id = f"{kw['id_prefix']}{kw['first_seq'] + i}"
                events.append(Event(kw["event"] or "message", fix(tok), last_id))
        elif item.op == "comment":
            comments += [" " + line if line else "" for line in lines(item.args[0])]
        else:
            retry = item.args[0]
    return Expected(events, comments, retry)


def feed_split(stream: bytes, cuts: list[int]) -> tuple[list[Event], SpecParser]:
    parser = SpecParser()
    events: list[Event] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        events += parser.feed(stream[prev:cut])
        prev = cut
    events += parser.close()
    return events, parser


def feed_bytewise(stream: bytes) -> tuple[list[Event], SpecParser]:
    parser = SpecParser()
    events: list[Event] = []
    for i in range(len(stream)):
        events += parser.feed(stream[i : i + 1])
    events += parser.close()
    return events, parser


def check(got: tuple[list[Event], SpecParser], want: Expected) -> None:
    events, parser = got
    assert events == want.events
    assert parser.comments == want.comments
    assert parser.retry == want.retry


def check_all_splits(seq: list[Item], data: st.DataObject, max_cuts: int) -> None:
    """The rendered ``seq`` parses to what it should: whole, in drawn chunks, and byte by byte."""
    stream = b"".join(render(i) for i in seq)
    want = expected_of(seq)
    check(parse(stream), want)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=max_cuts), label="cuts")
    check(feed_split(stream, cuts), want)
    check(feed_bytewise(stream), want)


# -- the spec parser itself (so that a pass below means something) -------------------------------------


def test_spec_parser_on_whatwg_examples() -> None:
    # Examples from the WHATWG HTML "Server-sent events" section (9.2.5/9.2.6).
    events, _ = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert events == [Event("message", "YHOO\n+2\n10", "")]
    events, p = parse(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n")
    assert events == [
        Event("message", "first event", "1"),
        Event("message", "second event", ""),
        Event("message", " third event", ""),
    ]
    assert p.comments == [" test stream"]
    events, _ = parse(b"data\n\ndata\ndata\n\ndata:")
    assert events == [Event("message", "", ""), Event("message", "\n", "")]
    events, _ = parse(b"data:test\n\ndata: test\n\n")
    assert events == [Event("message", "test", ""), Event("message", "test", "")]


def test_spec_parser_line_ends_bom_and_splits() -> None:
    stream = "\ufeffdata: a\r\ndata: \u2028b\rid: x\x00\nid: 7\n\revent: e\ndata: é𝄞\r\n\r\nretry: 1x\nretry: 12\n\n".encode()
    want = [Event("message", "a\n\u2028b", "7"), Event("e", "é𝄞", "7")]
    events, p = parse(stream)
    assert events == want and p.retry == 12
    for cut in range(len(stream) + 1):
        assert feed_split(stream, [cut])[0] == want
    assert feed_bytewise(stream)[0] == want
    # Only one BOM is stripped; a second one is part of the field name.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n")[0] == []
    # An unfinished event at the end of the stream is discarded.
    assert parse(b"data: x\n")[0] == []
    # CR at a chunk end then LF: one line end, not a blank line in between.
    p = SpecParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\ndata: b\r") == []
    assert p.feed(b"\r") == [Event("message", "a\nb", "")]


# -- _core writers through the spec parser -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(items, max_size=8), data=st.data())
def test_stream_round_trips_whole_and_chunked(seq: list[Item], data: st.DataObject) -> None:
    check_all_splits(seq, data, max_cuts=20)


@settings(max_examples=200, deadline=None)
@given(seq=st.lists(items, max_size=8))
def test_text_without_cr_arrives_exactly(seq: list[Item]) -> None:
    def no_cr(i: Item) -> bool:
        if i.op == "event":
            return "\r" not in i.args[0]
        if i.op == "batch":
            return all("\r" not in t for t in i.args[0])
        return True

    seq = [i for i in seq if no_cr(i)]
    stream = b"".join(render(i) for i in seq)
    check(parse(stream), expected_of(seq, exact=True))


@settings(max_examples=300, deadline=None)
@given(data=any_text, id=st.none() | id_text, event=st.none() | event_text)
def test_single_event(data: str, id: str | None, event: str | None) -> None:
    out = _core.sse_event(data, id=id, event=event)
    assert isinstance(out, bytes)
    assert out.endswith(b"\n\n")
    events, p = parse(out)
    assert events == [Event(event or "message", normalise(data), id or "")]
    assert p.comments == []
    # Every data line is written with the space after the colon, so leading spaces survive.
    assert out.count(b"data: ") >= len(lines(data))


@pytest.mark.parametrize(
    "data",
    [
        "",
        " ",
        "  lead",
        "\n",
        "\r",
        "\r\n",
        "\n\r",
        "\r\r\n\n",
        "a\rb\nc\r\nd",
        "x\r",
        "\x00",
        "\ufeff",
        "\ufeffx",
        "\u2028",
        "\x85",
        ":",
        ": x",
        "data: y",
        "id: 3",
        "\n\n\n",
    ],
)
def test_edge_data(data: str) -> None:
    stream = _core.sse_event(data, id="i", event="t") + _core.sse_event(data)
    want = [Event("t", normalise(data), "i"), Event("message", normalise(data), "i")]
    assert parse(stream)[0] == want
    assert feed_bytewise(stream)[0] == want


huge_text = st.builds(
    lambda unit, n: (unit * (n // len(unit) + 1))[:n],
    st.text(alphabet=st.one_of(st.sampled_from(_TRICKY), st.characters(codec="utf-8")), min_size=1, max_size=8),
    st.integers(100_000, 120_000),
)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(token=huge_text, data=st.data())
def test_huge_tokens(token: str, data: st.DataObject) -> None:
    seq = [
        _event_item(token, "big", "token"),
        Item("batch", ([token, "small", token],), (("id_prefix", "p:"), ("first_seq", 1), ("event", "token"))),
    ]
    check_all_splits(seq, data, max_cuts=50)


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_comment_yields_no_event(text: str) -> None:
    out = _core.sse_comment(text)
    events, p = parse(out)
    assert events == []
    assert p.comments == [" " + line if line else "" for line in lines(text)]
    assert p.retry is None
    assert _core.sse_comment() == b":\n"
    # A comment between the fields of... nothing: it must not end or start an event either.
    events, _ = parse(_core.sse_event("a", id="1") + out + _core.sse_event("b"))
    assert events == [Event("message", "a", "1"), Event("message", "b", "1")]


@given(ms=st.integers(0, 2**64 - 1))
def test_retry_sets_reconnection_time(ms: int) -> None:
    events, p = parse(_core.sse_retry(ms))
    assert events == []
    assert p.retry == ms
    events, p = parse(_core.sse_retry(ms) + _core.sse_event("x") + _core.sse_retry(7))
    assert events == [Event("message", "x", "")]
    assert p.retry == 7


# -- refused fields ------------------------------------------------------------------------------------

bad_id = st.builds(lambda a, c, b: a + c + b, id_text, st.sampled_from(["\r", "\n", "\r\n", "\x00"]), st.text())
bad_event = st.builds(lambda a, c, b: a + c + b, event_text, st.sampled_from(["\r", "\n", "\r\n"]), st.text())


@settings(max_examples=200, deadline=None)
@given(data=any_text, id=bad_id, event=st.none() | event_text)
def test_bad_id_is_refused(data: str, id: str, event: str | None) -> None:
    with pytest.raises(LocalProtocolError) as info:
        _core.sse_event(data, id=id, event=event)
    assert isinstance(info.value, ValueError)
    with pytest.raises(LocalProtocolError):
        _core.sse_batch([data], id_prefix=id, first_seq=1)
    with pytest.raises(LocalProtocolError):
        _core.sse_batch([], id_prefix=id, first_seq=1)


@settings(max_examples=200, deadline=None)
@given(data=any_text, id=st.none() | id_text, event=bad_event)
def test_bad_event_is_refused(data: str, id: str | None, event: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        _core.sse_event(data, id=id, event=event)
    assert isinstance(info.value, ValueError)
    with pytest.raises(LocalProtocolError):
        _core.sse_batch([data], id_prefix="p", first_seq=1, event=event)


@settings(max_examples=200, deadline=None)
@given(id=id_text, event=event_text)
def test_good_fields_are_accepted(id: str, event: str) -> None:
    _core.sse_event("x", id=id, event=event)
    _core.sse_batch(["x"], id_prefix=id, first_seq=0, event=event)


def test_nul_is_fine_in_event_and_data() -> None:
    events, _ = parse(_core.sse_event("\x00", event="a\x00"))
    assert events == [Event("a\x00", "\x00", "")]


def test_batch_defaults() -> None:
    out = _core.sse_batch(["a", "b"], id_prefix="s:e:", first_seq=41)
    assert out == _core.sse_event("a", id="s:e:41", event="token") + _core.sse_event("b", id="s:e:42", event="token")
    assert _core.sse_batch([], id_prefix="x", first_seq=1) == b""
    # Any iterable of str works, not just lists.
    assert _core.sse_batch(iter(("a", "b")), id_prefix="s:e:", first_seq=41) == out
    assert _core.sse_batch(("a", "b"), id_prefix="s:e:", first_seq=41, event=None) == (
        _core.sse_event("a", id="s:e:41") + _core.sse_event("b", id="s:e:42")
    )


# -- ring output ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(prefix=id_text, texts=st.lists(any_text, max_size=20), data=st.data())
def test_ring_sse_output(prefix: str, texts: list[str], data: st.DataObject) -> None:
    ring = _core.Ring(prefix)
    for t in texts:
        ring.append(t)
    after = data.draw(st.integers(0, len(texts)), label="after")
    stream = ring.since(after, _core.WIRE_SSE)
    want = [Event("token", normalise(t), f"{prefix}{seq}") for seq, t in enumerate(texts, 1) if seq > after]
    assert parse(stream)[0] == want
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    assert feed_split(stream, cuts)[0] == want
    assert ring.since(after) == stream  # WIRE_SSE is the default


def test_ring_sse_event_types_per_kind() -> None:
    ring = _core.Ring("r:")
    ring.append("t")
    ring.append('{"code":"x","message":"y"}', _core.FRAME_ERROR)
    ring.append('{"reason":"stop"}', _core.FRAME_DONE)
    assert parse(ring.since(0, _core.WIRE_SSE))[0] == [
        Event("token", "t", "r:1"),
        Event("error", '{"code":"x","message":"y"}', "r:2"),
        Event("done", '{"reason":"stop"}', "r:3"),
    ]


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb"])
def test_lone_surrogates_raise_value_error(bad: str) -> None:
    # A str that is not encodable UTF-8 fails at the boundary as UnicodeEncodeError (a ValueError).
    for call in (
        lambda: _core.sse_event(bad),
        lambda: _core.sse_event("x", id=bad),
        lambda: _core.sse_event("x", event=bad),
        lambda: _core.sse_comment(bad),
        lambda: _core.sse_batch([bad], id_prefix="p", first_seq=1),
    ):
        with pytest.raises(ValueError):
            call()


def test_batch_seq_does_not_wrap() -> None:
    # Seqs stop at 2**62 - 1 (the varint bound) on both wires: past it the call is refused, never wrapped.
    last = _core.sse_batch(["a"], id_prefix="p", first_seq=2**62 - 1)
    assert [e.last_event_id for e in parse(last)[0]] == [f"p{2**62 - 1}"]
    for first in (2**62 - 1, 2**64 - 1):
        with pytest.raises(LocalProtocolError):
            _core.sse_batch(["a", "b"], id_prefix="p", first_seq=first)


# -- field order: id last ------------------------------------------------------------------------------


def _eager_id(prefix: bytes) -> str:
    """The id a client that records ``id:`` when it reads the line (``@microsoft/fetch-event-source``) holds
    after receiving ``prefix``: the last complete ``id:`` line."""
    complete = prefix[: prefix.rfind(b"\n") + 1].decode("utf-8", "replace")
    ids = [line[4:] for line in complete.split("\n") if line.startswith("id: ")]
    return ids[-1] if ids else ""


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(tricky_text, min_size=1, max_size=8), event=st.sampled_from([None, "token"]))
def test_id_is_the_last_field_so_a_cut_loses_an_event_at_one_offset_only(texts: list[str], event: str | None) -> None:
    """Cut the stream at every byte offset: the id an eager client recorded differs from the id of the last
    event a WHATWG parser dispatched only between an event's ``id:`` line and its blank line -- one offset
    per event (with ``id:`` first it was the whole rest of the event)."""
    stream = _core.sse_batch(texts, id_prefix="s:e:", first_seq=1, event=event)
    for seq, block in enumerate(stream.split(b"\n\n")[:-1], 1):
        assert block.rsplit(b"\n", 1)[-1] == f"id: s:e:{seq}".encode()  # the last line of every event
    losing = []
    for cut in range(len(stream) + 1):
        dispatched = SpecParser().feed(stream[:cut])
        if _eager_id(stream[:cut]) != (dispatched[-1].last_event_id if dispatched else ""):
            losing.append(cut)
    ends = [i + 1 for i in range(len(stream) - 1) if stream[i : i + 2] == b"\n\n"]
    assert losing == ends  # just after each event's id line, before its blank line
