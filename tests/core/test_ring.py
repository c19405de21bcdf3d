"""``_core.Ring`` against ``support/ring_model.py``, ring memory bounds, and ``_core.Registry``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.support.ring_model import ModelExpired, ModelFromFuture, ModelNotHistory, ModelTooLarge, RingModel
from tests.support.sse_spec_parser import Event, parse
from tokenwire import _core
from tokenwire.errors import (
    HubFull,
    LocalProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    StreamClosed,
    StreamNotFound,
    TokenwireError,
)

KINDS = (_core.FRAME_TOKEN, _core.FRAME_DONE, _core.FRAME_ERROR, _core.FRAME_HEARTBEAT)
SSE_TYPE = {
    _core.FRAME_TOKEN: "token",
    _core.FRAME_DONE: "done",
    _core.FRAME_ERROR: "error",
    _core.FRAME_HEARTBEAT: "heartbeat",
}

texts = st.text(alphabet=st.sampled_from("ab \n\r\x00é€𝄞"), max_size=10) | st.text(max_size=6)


def decode_binary(data: bytes) -> list[tuple[int, int, str]]:
    dec = _core.FrameDecoder()
    frames = dec.feed(data)
    dec.close()
    return frames


# -- Ring vs model -------------------------------------------------------------------------------------


class RingMachine(RuleBasedStateMachine):
    ring: _core.Ring
    model: RingModel

    @initialize(
        prefix=st.sampled_from(["", "s:e:", "abc:ep1:", " é:"]),
        max_frames=st.integers(0, 12),
        max_bytes=st.integers(0, 48),
    )
    def setup(self, prefix: str, max_frames: int, max_bytes: int) -> None:
        self.ring = _core.Ring(prefix, max_frames=max_frames, max_bytes=max_bytes)
        self.model = RingModel(prefix, max_frames, max_bytes)

    @rule(text=texts, kind=st.sampled_from(KINDS))
    def append(self, text: str, kind: int) -> None:
        try:
            want = self.model.append(text, kind)
        except (ModelTooLarge, ModelNotHistory):
            with pytest.raises(LocalProtocolError):
                self.ring.append(text, kind)
            return
        assert self.ring.append(text, kind) == want

    @rule(text=texts)
    def append_default_kind(self, text: str) -> None:
        try:
            want = self.model.append(text)
        except ModelTooLarge:
            with pytest.raises(LocalProtocolError):
                self.ring.append(text)
            return
        assert self.ring.append(text) == want

    @rule(batch=st.lists(texts, max_size=6), kind=st.sampled_from(KINDS))
    def append_many(self, batch: list[str], kind: int) -> None:
        before = self.model.last_seq
        m = self.model
        bad = [i for i, t in enumerate(batch) if kind == _core.FRAME_HEARTBEAT or len(t.encode()) > m.max_payload]
        if not bad:
            for t in batch:
                m.append(t, kind)
            assert self.ring.append_many(batch, kind) == m.last_seq
            return
        # A heartbeat or a payload too large: refused. The frames before it may or may not have been
        # appended; the model follows whatever prefix the ring kept (never a frame after the refused one).
        with pytest.raises(LocalProtocolError):
            self.ring.append_many(batch, kind)
        kept = self.ring.last_seq - before
        assert kept in (0, bad[0])
        for t in batch[:kept]:
            self.model.append(t, kind)

    def _reads(self, after: int) -> tuple[Callable[[], object], ...]:
        """Every way to read the ring after ``after``: they fail alike."""
        return (
            lambda: self.ring.frames_since(after),
            lambda: self.ring.since(after, _core.WIRE_BINARY),
            lambda: self.ring.since(after, _core.WIRE_SSE),
        )

    @rule(data=st.data())
    def since(self, data: st.DataObject) -> None:
        m = self.model
        after = data.draw(
            st.one_of(
                st.integers(0, m.last_seq + 2),
                st.sampled_from([0, m.oldest_seq - 2, m.oldest_seq - 1, m.last_seq, m.last_seq + 1]).filter(
                    lambda a: a >= 0
                ),
            ),
            label="after",
        )
        try:
            want = m.since(after)
        except ModelExpired as e:
            for call in self._reads(after):
                with pytest.raises(ResumeExpired) as info:
                    call()
                assert info.value.oldest_seq == e.oldest_seq
            return
        except ModelFromFuture as e:
            for call in self._reads(after):
                with pytest.raises(ResumeFromFuture) as info:
                    call()
                assert info.value.last_seq == e.last_seq
                assert isinstance(info.value, ValueError)
            return
        assert self.ring.frames_since(after) == want
        assert decode_binary(self.ring.since(after, _core.WIRE_BINARY)) == want
        events, _ = parse(self.ring.since(after, _core.WIRE_SSE))
        assert events == [
            Event(SSE_TYPE[k], p.replace("\r\n", "\n").replace("\r", "\n"), f"{m.id_prefix}{s}") for k, s, p in want
        ]

    @precondition(lambda self: self.model.last_seq > 0)
    @rule()
    def since_last_is_empty(self) -> None:
        assert self.ring.frames_since(self.model.last_seq) == []
        assert self.ring.since(self.model.last_seq, _core.WIRE_BINARY) == b""
        assert self.ring.since(self.model.last_seq, _core.WIRE_SSE) == b""

    @invariant()
    def same_shape(self) -> None:
        if not hasattr(self, "ring"):
            return
        m = self.model
        assert self.ring.last_seq == m.last_seq
        assert self.ring.oldest_seq == m.oldest_seq
        assert len(self.ring) == len(m)
        assert self.ring.payload_bytes == m.payload_bytes
        assert self.ring.payload_bytes <= m.max_bytes
        assert len(self.ring) <= m.max_frames


TestRingMachine = RingMachine.TestCase
TestRingMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_ring_basics() -> None:
    r = _core.Ring("s:e:", max_frames=3, max_bytes=100)
    assert (r.last_seq, r.oldest_seq, len(r), r.payload_bytes) == (0, 1, 0, 0)
    assert r.frames_since(0) == []
    assert r.since(0) == b""
    with pytest.raises(ResumeFromFuture):
        r.frames_since(1)
    assert r.append_many([]) == 0
    assert r.append("a") == 1
    assert r.append_many(["b", "c", "d"]) == 4
    assert r.frames_since(1) == [(1, 2, "b"), (1, 3, "c"), (1, 4, "d")]
    with pytest.raises(ResumeExpired) as info:
        r.frames_since(0)
    assert info.value.oldest_seq == 2
    assert r.append_many(("e",), _core.FRAME_DONE) == 5
    assert r.frames_since(4) == [(_core.FRAME_DONE, 5, "e")]
    # A single payload over max_bytes is refused and changes nothing.
    with pytest.raises(LocalProtocolError):
        r.append("x" * 101)
    assert r.last_seq == 5


def test_ring_counts_utf8_bytes() -> None:
    r = _core.Ring(max_bytes=4)
    with pytest.raises(LocalProtocolError):
        r.append("é€")  # 5 UTF-8 bytes, 2 characters
    assert r.append("€") == 1
    assert r.payload_bytes == 3
    assert r.append("é") == 2
    assert r.frames_since(1) == [(1, 2, "é")]
    with pytest.raises(ResumeExpired):
        r.frames_since(0)


def test_ring_refusals() -> None:
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(LocalProtocolError):
            _core.Ring(bad)
    r = _core.Ring()
    for kind in (0, _core.FRAME_HEARTBEAT, 5, 255):
        with pytest.raises(LocalProtocolError):
            r.append("x", kind)
        with pytest.raises(LocalProtocolError):
            r.append_many(["x"], kind)
    assert r.last_seq == 0
    with pytest.raises(ValueError):
        r.since(0, 7)
    # max_frames is at least 1.
    r = _core.Ring(max_frames=0)
    r.append("a")
    r.append("b")
    assert r.frames_since(1) == [(1, 2, "b")]
    # No payload over what a default decoder accepts is stored, whatever max_bytes allows.
    r = _core.Ring(max_bytes=16 << 20)
    with pytest.raises(LocalProtocolError):
        r.append("x" * (_core.DEFAULT_MAX_PAYLOAD + 1))
    with pytest.raises(LocalProtocolError):
        r.append("é" * (_core.DEFAULT_MAX_PAYLOAD // 2 + 1))
    assert r.append("x" * _core.DEFAULT_MAX_PAYLOAD) == 1
    assert r.last_seq == 1
    # max_bytes 0 holds only empty payloads.
    r = _core.Ring(max_bytes=0)
    assert r.append("") == 1
    with pytest.raises(LocalProtocolError):
        r.append("a")


@settings(max_examples=5, deadline=None)
@given(unit=st.text(min_size=1, max_size=5), n=st.integers(100_000, 150_000))
def test_large_payloads_since(unit: str, n: int) -> None:
    # Above 256 KiB of payload the ring renders without the GIL; the output must not change.
    big = (unit * (n // len(unit) + 1))[:n]
    r = _core.Ring("big:", max_frames=8, max_bytes=16 << 20)
    texts = [big, "small", big + "!", big]
    r.append_many(texts)
    assert r.payload_bytes >= 256 * 1024
    want = [(1, i, t) for i, t in enumerate(texts, 1)]
    assert r.frames_since(0) == want
    assert decode_binary(r.since(0, _core.WIRE_BINARY)) == want
    assert parse(r.since(1, _core.WIRE_SSE))[0] == [
        Event("token", t.replace("\r\n", "\n").replace("\r", "\n"), f"big:{i}") for _, i, t in want[1:]
    ]


# -- memory bounds -------------------------------------------------------------------------------------

ENTRY_BOUND = 48  # generous per-frame index cost in bytes


def memory_bound(max_frames: int, max_bytes: int) -> int:
    return 4 * max_bytes + ENTRY_BOUND * (max_frames + 1) + 64 * 1024


@settings(max_examples=40, deadline=None)
@given(
    max_frames=st.integers(1, 5000),
    max_bytes=st.integers(0, 200_000),
    fractions=st.lists(
        st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.34, 0.5, 0.51, 0.9, 1.0]) | st.floats(0, 1), min_size=1, max_size=8
    ),
    rounds=st.integers(50, 400),
)
def test_memory_stays_bounded(max_frames: int, max_bytes: int, fractions: list[float], rounds: int) -> None:
    sizes = [int(f * max_bytes) for f in fractions]
    batch = ["m" * s for s in sizes] * 8
    r = _core.Ring("p:", max_frames=max_frames, max_bytes=max_bytes)
    bound = memory_bound(max_frames, max_bytes)
    peak = 0
    for _ in range(rounds):
        r.append_many(batch)
        peak = max(peak, r.memory_bytes)
        assert r.payload_bytes <= max_bytes
        assert len(r) <= max_frames
    assert peak <= bound, (peak, bound)
    assert r.last_seq == rounds * len(batch)


def test_memory_bounded_over_many_small_appends() -> None:
    r = _core.Ring(max_frames=100, max_bytes=10_000)
    chunk = ["y" * 50] * 1000
    for _ in range(200):
        r.append_many(chunk)
    assert r.memory_bytes < 64 * 1024
    assert r.last_seq == 200_000
    assert [s for _, s, _ in r.frames_since(r.last_seq - 3)] == [199_998, 199_999, 200_000]


def test_memory_shrinks_after_large_frames_leave() -> None:
    r = _core.Ring(max_frames=4, max_bytes=8 << 20)
    for _ in range(8):
        r.append("L" * (1 << 20))
    for _ in range(64):
        r.append("s")
    assert r.memory_bytes <= memory_bound(4, 4096), r.memory_bytes


# -- Registry ------------------------------------------------------------------------------------------


def small_registry(**kw: float) -> _core.Registry:
    args: dict[str, float] = {
        "max_frames_per_stream": 100,
        "max_bytes_per_stream": 10_000,
        "max_total_bytes": 50_000,
        "ttl": 10.0,
    }
    args.update(kw)
    return _core.Registry(**args)  # type: ignore[arg-type]


def test_registry_lifecycle_and_ttl() -> None:
    reg = small_registry()
    h = reg.create("a", "a:e:")
    assert reg.lookup("a") == h
    assert reg.lookup("nope") is None
    assert reg.key(h) == "a"
    assert reg.state(h) == _core.STATE_OPEN
    assert len(reg) == 1
    assert reg.memory_bytes > 0
    assert reg.append(h, "x") == 1
    assert reg.append_many(h, ["y", "z\n"]) == 3
    assert reg.append_many(h, []) == 3
    assert reg.end(h, _core.FRAME_DONE, '{"reason":"stop"}', _core.STATE_FINISHED, 100.0) == 4
    assert reg.state(h) == _core.STATE_FINISHED
    assert (reg.last_seq(h), reg.oldest_seq(h)) == (4, 1)
    want = [(1, 1, "x"), (1, 2, "y"), (1, 3, "z\n"), (_core.FRAME_DONE, 4, '{"reason":"stop"}')]
    assert reg.frames_since(h, 0) == want
    assert decode_binary(reg.since(h, 0, _core.WIRE_BINARY)) == want
    assert parse(reg.since(h, 2))[0] == [Event("token", "z\n", "a:e:3"), Event("done", '{"reason":"stop"}', "a:e:4")]
    with pytest.raises(ResumeFromFuture):
        reg.since(h, 5)

    for call in (
        lambda: reg.append(h, "late"),
        lambda: reg.append_many(h, ["late"]),
        lambda: reg.end(h, _core.FRAME_DONE, "{}", _core.STATE_FINISHED, 101.0),
    ):
        with pytest.raises(StreamClosed):
            call()
    assert reg.last_seq(h) == 4

    assert reg.sweep(109.999) == []
    assert reg.frames_since(h, 3) == [want[-1]]
    assert reg.sweep(110.0) == ["a"]
    assert reg.sweep(1000.0) == []
    assert len(reg) == 0
    assert reg.lookup("a") is None
    assert reg.memory_bytes == 0
    for call in (
        lambda: reg.last_seq(h),
        lambda: reg.oldest_seq(h),
        lambda: reg.state(h),
        lambda: reg.key(h),
        lambda: reg.append(h, "x"),
        lambda: reg.since(h, 0),
        lambda: reg.frames_since(h, 0),
        lambda: reg.remove(h),
    ):
        with pytest.raises(StreamNotFound):
            call()
    # The key is free again.
    h2 = reg.create("a", "a:e2:")
    assert h2 != h
    assert reg.last_seq(h2) == 0


def test_registry_end_states_and_refusals() -> None:
    reg = small_registry()
    for i, (kind, state) in enumerate(
        [
            (_core.FRAME_DONE, _core.STATE_FINISHED),
            (_core.FRAME_ERROR, _core.STATE_FAILED),
            (_core.FRAME_ERROR, _core.STATE_CANCELLED),
        ]
    ):
        h = reg.create(f"s{i}", f"s{i}:")
        assert reg.end(h, kind, "{}", state, 1.0) == 1
        assert reg.state(h) == state
    h = reg.create("bad", "bad:")
    with pytest.raises(LocalProtocolError):
        reg.end(h, _core.FRAME_TOKEN, "x", _core.STATE_FINISHED, 1.0)
    with pytest.raises(LocalProtocolError):
        reg.end(h, _core.FRAME_DONE, "x", _core.STATE_OPEN, 1.0)
    with pytest.raises(LocalProtocolError):
        reg.end(h, _core.FRAME_DONE, "x", 9, 1.0)
    assert reg.state(h) == _core.STATE_OPEN
    assert reg.last_seq(h) == 0
    with pytest.raises(LocalProtocolError):
        reg.create("bad", "other:")  # duplicate key
    with pytest.raises(LocalProtocolError):
        reg.create("nl", "a\nb")
    with pytest.raises(LocalProtocolError):
        reg.append(h, "x" * 10_001)
    assert reg.state(h) == _core.STATE_OPEN


def test_registry_remove_and_stale_handles() -> None:
    reg = small_registry()
    a = reg.create("a", "a:")
    reg.append(a, "x")
    assert reg.remove(a) == "a"
    assert reg.memory_bytes == 0
    b = reg.create("b", "b:")
    assert b != a
    with pytest.raises(StreamNotFound):
        reg.append(a, "x")
    with pytest.raises(StreamNotFound):
        reg.last_seq(a)
    assert reg.last_seq(b) == 0
    assert isinstance(StreamNotFound("x"), LookupError)
    # Handles never issued.
    for h in (0xFFFF_FFFF, 12345 << 32, 2**64 - 1):
        with pytest.raises(StreamNotFound):
            reg.last_seq(h)
    # A removed ended stream is not reported again by sweep.
    reg.end(b, _core.FRAME_DONE, "{}", _core.STATE_FINISHED, 0.0)
    reg.remove(b)
    assert reg.sweep(1e9) == []


def test_registry_resume_errors_carry_seqs() -> None:
    reg = small_registry(max_frames_per_stream=3)
    h = reg.create("a", "a:")
    reg.append_many(h, ["1", "2", "3", "4", "5"])
    with pytest.raises(ResumeExpired) as info:
        reg.since(h, 1)
    assert info.value.oldest_seq == 3
    with pytest.raises(ResumeFromFuture) as info2:
        reg.frames_since(h, 6)
    assert info2.value.last_seq == 5
    assert reg.frames_since(h, 2) == [(1, 3, "3"), (1, 4, "4"), (1, 5, "5")]


def test_hub_full_when_open_streams_hold_the_cap() -> None:
    reg = small_registry()
    big = "x" * 1000
    handles = []
    with pytest.raises(HubFull) as info:
        for i in range(1000):
            h = reg.create(f"o{i}", f"o{i}:")
            reg.append_many(h, [big] * 9)
            handles.append(h)
    assert isinstance(info.value, TokenwireError)
    assert info.value.status_hint == 503
    assert 1 <= len(handles) < 1000
    # Open streams keep every frame their own bounds allow, whatever the cap.
    for h in handles:
        assert (reg.oldest_seq(h), reg.last_seq(h)) == (1, 9)
    # Once some stream ends, its memory can be reclaimed and a new stream starts.
    reg.end(handles[0], _core.FRAME_DONE, "{}", _core.STATE_FINISHED, 5.0)
    h = reg.create("new", "new:")
    assert reg.last_seq(h) == 0
    assert "o0" in reg.sweep(5.0)
    with pytest.raises(StreamNotFound):
        reg.last_seq(handles[0])


def test_cap_evicts_ended_streams_oldest_first() -> None:
    reg = small_registry()
    big = "x" * 1000
    handles = []
    for i in range(20):
        h = reg.create(f"s{i}", f"s{i}:")
        reg.append_many(h, [big] * 9)
        reg.end(h, _core.FRAME_DONE, "{}", _core.STATE_FINISHED, float(i))
        handles.append(h)
    assert reg.memory_bytes <= 50_000 + 20_000
    assert reg.last_seq(handles[-1]) == 10
    with pytest.raises(StreamNotFound):
        reg.last_seq(handles[0])
    evicted = reg.sweep(0.0)
    assert "s0" in evicted
    # Evicted oldest-ended first: the survivors are a suffix.
    alive = [i for i, h in enumerate(handles) if reg.lookup(f"s{i}") == h]
    assert alive == list(range(alive[0], 20))
    assert sorted(evicted, key=lambda k: int(k[1:])) == [f"s{i}" for i in range(alive[0])]


def test_hub_full_only_when_open_streams_hold_the_cap_exact_boundary() -> None:
    """Memory exactly at the cap, held partly by an ended stream: create must evict it, not refuse."""

    def build(cap: int) -> _core.Registry:
        reg = small_registry(max_total_bytes=cap)
        a = reg.create("a", "a:")
        reg.append_many(a, ["x" * 1000] * 5)
        reg.end(a, _core.FRAME_DONE, "{}", _core.STATE_FINISHED, 1.0)
        b = reg.create("b", "b:")
        reg.append_many(b, ["y" * 1000] * 5)
        return reg

    used = build(1 << 30).memory_bytes
    reg = build(used)
    assert reg.memory_bytes == used
    assert reg.lookup("a") is not None  # not over the cap, nothing evicted yet
    h = reg.create("c", "c:")  # the ended stream "a" holds memory that can be reclaimed
    assert reg.last_seq(h) == 0
    assert "a" in reg.sweep(1.0)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["create", "append", "end", "remove", "sweep"]), st.integers(0, 7), texts),
        max_size=40,
    )
)
def test_registry_never_mixes_streams(ops: list[tuple[str, int, str]]) -> None:
    """Random operations: every live stream's frames are exactly what was sent to it."""
    reg = small_registry(max_total_bytes=1 << 30, ttl=3.0)
    live: dict[str, tuple[int, list[str], bool]] = {}  # key -> (handle, texts, ended)
    dead: list[int] = []
    now = 0.0
    n = 0
    for op, i, text in ops:
        now += 1.0
        keys = sorted(live)
        if op == "create" or not keys:
            n += 1
            key = f"k{n}"
            live[key] = (reg.create(key, f"{key}:"), [], False)
            continue
        key = keys[i % len(keys)]
        h, sent, ended = live[key]
        if op == "append":
            if ended:
                with pytest.raises(StreamClosed):
                    reg.append(h, text)
            else:
                sent.append(text)
                assert reg.append(h, text) == len(sent)
        elif op == "end" and not ended:
            sent.append("{}")
            assert reg.end(h, _core.FRAME_DONE, "{}", _core.STATE_FINISHED, now) == len(sent)
            live[key] = (h, sent, True)
        elif op == "remove":
            assert reg.remove(h) == key
            del live[key]
            dead.append(h)
        elif op == "sweep":
            for k in reg.sweep(now):
                assert live[k][2]
                dead.append(live.pop(k)[0])
    assert len(reg) == len(live)
    for key, (h, sent, ended) in live.items():
        frames = reg.frames_since(h, 0)
        assert [p for _, _, p in frames] == sent
        assert [s for _, s, _ in frames] == list(range(1, len(sent) + 1))
        assert reg.key(h) == key
        assert reg.state(h) == (_core.STATE_FINISHED if ended else _core.STATE_OPEN)
    for h in dead:
        with pytest.raises(StreamNotFound):
            reg.last_seq(h)
    # Memory accounting balances: with every stream gone, nothing is left.
    for h, _, _ in live.values():
        reg.remove(h)
    assert reg.memory_bytes == 0
    assert len(reg) == 0
