"""``_core.StreamTracker``, ``LagHistogram`` and ``fnv1a64`` (rust/tracker.rs): exactly-once accounting."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwire import _core
from tokenwire.errors import RemoteProtocolError
from tokenwire.fake_model import FakeModel

STREAM_ID = "Zp3Q0sJ5tXkq8yRzWb1Lmg"
PREFIX = f"{STREAM_ID}:q7Vd1aXe:"
STAMP = "\u2063"
T0 = 1_732_540_000_000_000  # µs since the epoch


def fnv1a64_py(data: bytes) -> int:
    """Reference FNV-1a 64."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def normalise(text: str) -> str:
    """What SSE delivers of ``text``: CR and CRLF arrive as LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def stream_event(seq: int) -> bytes:
    return _core.sse_event(json.dumps({"stream": STREAM_ID, "resume": seq}), id=f"{PREFIX}{seq}", event="stream")


def tokens(texts: list[str], first_seq: int) -> bytes:
    return _core.sse_batch(texts, id_prefix=PREFIX, first_seq=first_seq)


def final(seq: int, kind: str = "done", data: str = '{"reason":"stop"}') -> bytes:
    return _core.sse_event(data, id=f"{PREFIX}{seq}", event=kind)


def whole_stream(texts: list[str]) -> bytes:
    return _core.sse_retry(2000) + stream_event(0) + tokens(texts, 1) + _core.sse_comment() + final(len(texts) + 1)


def counts(t: _core.StreamTracker) -> tuple[int, int, int, int]:
    return t.tokens, t.duplicates, t.lost, t.last_seq


TEXTS = FakeModel(seed=3).tokens("tracker", 200)


# -- fnv1a64 -------------------------------------------------------------------------------------------


def test_fnv1a64_reference_values() -> None:
    assert _core.fnv1a64("") == 0xCBF29CE484222325
    assert _core.fnv1a64("a") == 0xAF63DC4C8601EC8C
    assert _core.fnv1a64("foobar") == 0x85944171F73967E8


@given(parts=st.lists(st.text(st.characters(codec="utf-8", exclude_characters=STAMP)), max_size=10))
def test_fnv1a64_hashes_utf8_of_the_concatenation(parts: list[str]) -> None:
    joined = "".join(parts)
    assert _core.fnv1a64(joined) == fnv1a64_py(joined.encode())
    # Fed as separate tokens, the tracker's running hash is the hash of the joined text.
    t = _core.StreamTracker()
    t.feed(tokens(parts, 1))
    assert t.tokens == len(parts)
    assert t.content_hash == _core.fnv1a64(normalise(joined))


# -- exactly-once accounting ---------------------------------------------------------------------------


def test_in_order_stream_whole_and_byte_by_byte() -> None:
    stream = whole_stream(TEXTS)
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        t = _core.StreamTracker()
        assert t.last_event_id == ""
        assert sum(t.feed(c) for c in chunks) == len(TEXTS)
        assert counts(t) == (len(TEXTS), 0, 0, len(TEXTS) + 1)
        assert t.last_event_id == f"{PREFIX}{len(TEXTS) + 1}"
        assert t.done and t.done_data == '{"reason":"stop"}' and t.error is None
        assert t.content_hash == _core.fnv1a64(normalise("".join(TEXTS)))
        assert t.retry == 2000
        assert t.first_token_at_us is None and t.lag_count == 0


def test_stream_event_gives_an_id_before_the_first_token_and_resets_nothing() -> None:
    t = _core.StreamTracker()
    assert t.feed(stream_event(0)) == 0
    assert t.last_event_id == f"{PREFIX}0"
    t.feed(tokens(["a", "b"], 1))
    h = t.content_hash
    t.feed(stream_event(2))
    t.feed(stream_event(0))
    assert counts(t) == (2, 0, 0, 2)
    assert t.last_event_id == f"{PREFIX}2"
    assert t.content_hash == h


def test_duplicates_are_counted_not_delivered() -> None:
    t = _core.StreamTracker()
    assert t.feed(tokens(["a", "b", "c"], 1)) == 3
    assert t.feed(tokens(["b", "c", "d"], 2)) == 1
    assert t.feed(tokens(["a"], 1)) == 0
    assert counts(t) == (4, 3, 0, 4)
    assert t.content_hash == _core.fnv1a64("abcd")
    t.feed(final(5))
    t.feed(final(5))  # a final frame twice
    assert counts(t) == (4, 4, 0, 5)


def test_gaps_count_lost_frames() -> None:
    t = _core.StreamTracker()
    t.feed(tokens(["a"], 1))
    assert t.feed(tokens(["e", "f"], 5)) == 2
    assert counts(t) == (3, 0, 3, 6)
    t.feed(final(9))
    assert counts(t) == (3, 0, 5, 9)
    assert t.done
    assert t.content_hash == _core.fnv1a64("aef")


def test_error_end() -> None:
    t = _core.StreamTracker()
    t.feed(tokens(["a"], 1) + final(2, "error", '{"code":"generation_failed","message":"ValueError: boom"}'))
    assert not t.done and t.done_data is None
    assert t.error == '{"code":"generation_failed","message":"ValueError: boom"}'
    assert t.last_seq == 2


def test_other_events_are_ignored() -> None:
    t = _core.StreamTracker()
    t.feed(_core.sse_event("hello") + _core.sse_event("x", id="whatever", event="note") + tokens(["a"], 1))
    assert counts(t) == (1, 0, 0, 1)


@pytest.mark.parametrize("bad_id", ["nocolon", f"{PREFIX}", f"{PREFIX}x", f"{PREFIX}0", f"{PREFIX}{'9' * 21}"])
def test_malformed_ids_raise_until_new_response(bad_id: str) -> None:
    t = _core.StreamTracker()
    t.feed(tokens(["a"], 1))
    with pytest.raises(RemoteProtocolError, match="event with id"):
        t.feed(_core.sse_event("b", id=bad_id, event="token") + tokens(["c"], 2))
    with pytest.raises(RemoteProtocolError):
        t.feed(tokens(["c"], 2))
    t.new_response()
    assert t.feed(tokens(["c"], 2)) == 1
    assert counts(t) == (2, 0, 0, 2)


def test_oversized_event_raises() -> None:
    t = _core.StreamTracker(max_event_bytes=64)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        t.feed(tokens(["x" * 100], 1))


def batches_model(batches: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    last = tokens_ = dups = lost = 0
    for first, n in batches:
        for seq in range(first, first + n):
            if seq <= last:
                dups += 1
            else:
                lost += seq - last - 1
                last = seq
                tokens_ += 1
    return tokens_, dups, lost, last


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 6)), max_size=12), data=st.data())
def test_counts_match_a_model_under_any_split(batches: list[tuple[int, int]], data: st.DataObject) -> None:
    stream = b"".join(tokens([f" t{first + i}" for i in range(n)], first) for first, n in batches)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=15), label="cuts")))
    t = _core.StreamTracker()
    new = 0
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        new += t.feed(stream[a:b])
    assert counts(t) == batches_model(batches)
    assert new == t.tokens


# -- reconnects ----------------------------------------------------------------------------------------


def test_resumed_response_continues_the_same_tracker() -> None:
    ring = _core.Ring(PREFIX)
    ring.append_many(TEXTS[:120])
    first = stream_event(0) + ring.since(0)
    t = _core.StreamTracker()
    cut = len(first) - 7  # the connection drops inside the last event
    assert t.feed(first[:cut]) == 119
    assert t.last_event_id == f"{PREFIX}119"
    # Generation went on; the client resumes with its Last-Event-ID.
    ring.append_many(TEXTS[120:])
    ring.append('{"reason":"stop"}', _core.FRAME_DONE)
    resume_seq = int(t.last_event_id.rsplit(":", 1)[1])
    second = _core.sse_retry(2000) + stream_event(resume_seq) + ring.since(resume_seq)
    t.new_response()
    assert sum(t.feed(second[i : i + 1]) for i in range(len(second))) == len(TEXTS) - 119
    assert counts(t) == (len(TEXTS), 0, 0, len(TEXTS) + 1)
    assert t.done
    assert t.content_hash == _core.fnv1a64(normalise("".join(TEXTS)))


def test_overlapping_resume_counts_duplicates() -> None:
    t = _core.StreamTracker()
    t.feed(tokens(["a", "b", "c"], 1))
    t.new_response()
    t.feed(stream_event(1) + tokens(["b", "c", "d"], 2))
    assert counts(t) == (4, 2, 0, 4)
    assert t.content_hash == _core.fnv1a64("abcd")


# -- stamps and lag ------------------------------------------------------------------------------------


def stamped(text: str, at_us: int) -> str:
    return f"{text}{STAMP}{at_us}"


def test_stamps_are_removed_and_timed() -> None:
    texts = [" hello", " wor\nld", "!"]
    stamps = [T0, T0 + 1_000, T0 + 2_000]
    t = _core.StreamTracker()
    assert t.feed(tokens([stamped(x, s) for x, s in zip(texts, stamps, strict=True)], 1), now_us=T0 + 5_000) == 3
    assert t.content_hash == _core.fnv1a64("".join(texts))
    assert t.first_token_at_us == T0 + 5_000
    assert t.lag_count == 3
    p0, p50, p100 = t.lag_percentiles([0, 50, 100])
    assert (p0, p100) == (0.003, 0.005)
    assert p50 == pytest.approx(0.004, rel=0.02)
    assert t.lag.count == 3
    assert t.lag.max == 0.005
    assert t.lag.mean == pytest.approx(0.004)


def test_unstamped_tokens_and_untimed_feeds() -> None:
    t = _core.StreamTracker()
    t.feed(tokens([" plain", f"x{STAMP}", f"y{STAMP}12a"], 1), now_us=T0)
    t.feed(tokens([stamped("z", T0)], 4))  # now_us=0: not timed
    assert t.lag_count == 0
    assert math.isnan(t.lag_percentiles([50])[0])
    assert t.first_token_at_us == T0
    assert t.content_hash == _core.fnv1a64(f" plainx{STAMP}y{STAMP}12az")


def test_negative_lag_counts_as_zero() -> None:
    t = _core.StreamTracker()
    t.feed(tokens([stamped("a", T0 + 10)], 1), now_us=T0)
    assert t.lag_percentiles([50, 100]) == [0.0, 0.0]


def test_duplicates_are_not_timed() -> None:
    t = _core.StreamTracker()
    t.feed(tokens([stamped("a", T0)], 1), now_us=T0 + 100)
    t.feed(tokens([stamped("a", T0)], 1), now_us=T0 + 900)
    assert t.lag_count == 1
    assert t.lag.max == 0.0001


def test_lag_percentiles_within_two_percent() -> None:
    lags_us = [37 * i + 5 for i in range(1, 20_001)]  # 42 µs .. 0.74 s
    texts = [stamped(" t", T0 - lag) for lag in lags_us]
    t = _core.StreamTracker()
    t.feed(tokens(texts, 1), now_us=T0)
    ps = [50, 90, 99, 99.9]
    got = t.lag_percentiles(ps)
    ordered = sorted(lags_us)
    for p, g in zip(ps, got, strict=True):
        want = ordered[math.ceil(p / 100 * len(ordered)) - 1] / 1e6
        assert g == pytest.approx(want, rel=0.02), p
    with pytest.raises(ValueError):
        t.lag_percentiles([101])
    with pytest.raises(ValueError):
        t.lag_percentiles([-1])


def test_shared_histogram_and_merge() -> None:
    shared = _core.LagHistogram()
    a = _core.StreamTracker(lag=shared)
    b = _core.StreamTracker(lag=shared)
    a.feed(tokens([stamped("a", T0)], 1), now_us=T0 + 1_000)
    b.feed(tokens([stamped("b", T0)], 1), now_us=T0 + 3_000)
    assert a.lag is shared and b.lag is shared
    assert (a.lag_count, b.lag_count, shared.count) == (1, 1, 2)
    assert shared.percentiles([0, 100]) == [0.001, 0.003]

    own = _core.StreamTracker()
    own.feed(tokens([stamped("c", T0)], 1), now_us=T0 + 2_000)
    total = _core.LagHistogram()
    assert math.isnan(total.max) and math.isnan(total.mean)
    assert math.isnan(total.percentiles([50])[0])
    total.merge(shared)
    total.merge(own.lag)
    total.merge(_core.LagHistogram())
    assert total.count == 3
    assert total.percentiles([0, 50, 100]) == [0.001, pytest.approx(0.002, rel=0.02), 0.003]
    total.merge(total)  # merging into itself doubles every count
    assert total.count == 6
    h = _core.LagHistogram()
    h.record(10)
    h.record(2 * 3600 * 10**6)  # beyond the bucketed range: max stays exact
    assert h.max == 7200.0
    assert h.percentiles([100]) == [7200.0]


def test_lag_histogram_can_be_swapped_between_feeds() -> None:
    """The load tester buckets lag over time: later feeds record into the histogram assigned last."""
    first, second = _core.LagHistogram(), _core.LagHistogram()
    t = _core.StreamTracker(lag=first)
    t.feed(tokens([stamped("a", T0)], 1), now_us=T0 + 1_000)
    t.lag = second
    assert t.lag is second
    t.feed(tokens([stamped("b", T0), stamped("c", T0)], 2), now_us=T0 + 4_000)
    assert (first.count, second.count, t.lag_count) == (1, 2, 3)
    assert first.max == 0.001 and second.max == 0.004
    with pytest.raises(TypeError):
        t.lag = None  # type: ignore[assignment]
