"""SSE decoding of a 1,000-token batch of one stream: the load-test fast path vs a full decoder vs Python.

- ``tracker``: ``_core.StreamTracker.feed`` (parse in Rust, exactly-once counts and content hash, nothing
  per event crosses into Python), the whole buffer in one call.
- ``tracker-4k-chunks``: the same, fed in 4 KiB chunks as a socket delivers them.
- ``decoder``: ``_core.SseDecoder.feed``, one ``(last_event_id, event_type, data)`` tuple per event.
- ``spec-parser``: the pure-Python WHATWG parser of the tests (``tests/support/sse_spec_parser.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.sse_spec_parser import SpecParser
from tokenwire import _core
from tokenwire.fake_model import FakeModel

ID_PREFIX = "Iq2pi76UhUgHqpO3RZi5qA:Irjf4eVk:"
FIRST_SEQ = 1  # the tracker counts seqs before the first one as lost
TOKENS = FakeModel(seed=7).tokens("benchmark", 1000)
BUFFER = _core.sse_batch(TOKENS, id_prefix=ID_PREFIX, first_seq=FIRST_SEQ)
CHUNKS = [BUFFER[i : i + 4096] for i in range(0, len(BUFFER), 4096)]
EXPECTED_HASH = _core.fnv1a64("".join(TOKENS).replace("\r\n", "\n").replace("\r", "\n"))


def tracker() -> _core.StreamTracker:
    t = _core.StreamTracker()
    t.feed(BUFFER)
    return t


def tracker_chunked() -> _core.StreamTracker:
    t = _core.StreamTracker()
    for chunk in CHUNKS:
        t.feed(chunk)
    return t


def decoder() -> list[tuple[str, str, str]]:
    return _core.SseDecoder().feed(BUFFER)


def spec_parser() -> list[tuple[str, str, str]]:
    return [(e.last_event_id, e.type, e.data) for e in SpecParser().feed(BUFFER)]


DECODERS: dict[str, Callable[[], object]] = {
    "tracker": tracker,
    "tracker-4k-chunks": tracker_chunked,
    "decoder": decoder,
    "spec-parser": spec_parser,
}


def check(name: str, out: object) -> None:
    if isinstance(out, _core.StreamTracker):
        assert (out.tokens, out.duplicates, out.lost) == (1000, 0, 0), name
        assert out.last_seq == FIRST_SEQ + 999, name
        assert out.last_event_id == f"{ID_PREFIX}{FIRST_SEQ + 999}", name
        assert out.content_hash == EXPECTED_HASH, name
    else:
        assert out == spec_parser(), name


def test_decoders_agree() -> None:
    events = spec_parser()
    assert len(events) == 1000
    assert events[-1][0] == f"{ID_PREFIX}{FIRST_SEQ + 999}"
    assert len(CHUNKS) > 1
    for name, decode in DECODERS.items():
        check(name, decode())


@pytest.mark.benchmark(group="sse-decode-1000-tokens")
@pytest.mark.parametrize("decoder_name", list(DECODERS))
def test_sse_decode_batch(benchmark, decoder_name: str) -> None:  # type: ignore[no-untyped-def]
    decode = DECODERS[decoder_name]
    check(decoder_name, decode())
    benchmark(decode)
