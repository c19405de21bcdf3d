"""SSE encoding of a 1,000-token batch of one stream: tokenwire vs what Python SSE libraries do."""

from __future__ import annotations

import random
import re

import pytest
from sse_starlette.sse import ServerSentEvent

from tests.support.sse_spec_parser import SpecParser
from tokenwire import _core
from tokenwire.fake_model import FakeModel

ID_PREFIX = "Iq2pi76UhUgHqpO3RZi5qA:Irjf4eVk:"
FIRST_SEQ = 1001
# Short word-piece tokens as an LLM emits them (a few contain newlines).
TOKENS = FakeModel(seed=7).tokens("benchmark", 1000)

_LINE_SEP = re.compile(r"\r\n|\r|\n")


def python_encode(tokens: list[str], id_prefix: str, first_seq: int) -> bytes:
    """A careful pure-Python encoder: string building with line splitting, as Python SSE libraries do."""
    parts: list[str] = []
    for i, tok in enumerate(tokens):
        parts.append("event: token\n")
        parts.extend(f"data: {line}\n" for line in _LINE_SEP.split(tok))
        parts.append(f"id: {id_prefix}{first_seq + i}\n\n")
    return "".join(parts).encode()


def sse_starlette_encode(tokens: list[str], id_prefix: str, first_seq: int) -> bytes:
    """sse-starlette's ``ServerSentEvent.encode()`` per token, joined."""
    return b"".join(
        ServerSentEvent(data=tok, id=f"{id_prefix}{first_seq + i}", event="token").encode()
        for i, tok in enumerate(tokens)
    )


def tokenwire_encode(tokens: list[str], id_prefix: str, first_seq: int) -> bytes:
    return _core.sse_batch(tokens, id_prefix=id_prefix, first_seq=first_seq)


ENCODERS = {"tokenwire": tokenwire_encode, "python": python_encode, "sse-starlette": sse_starlette_encode}


def _events(data: bytes) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in SpecParser().feed(data)]


def test_encoders_agree() -> None:
    reference = _events(tokenwire_encode(TOKENS, ID_PREFIX, FIRST_SEQ))
    assert len(reference) == 1000
    assert python_encode(TOKENS, ID_PREFIX, FIRST_SEQ) == tokenwire_encode(
        TOKENS, ID_PREFIX, FIRST_SEQ
    )  # byte for byte
    assert any("\n" in t for t in TOKENS)
    for name, encode in ENCODERS.items():
        assert _events(encode(TOKENS, ID_PREFIX, FIRST_SEQ)) == reference, name


@pytest.mark.benchmark(group="sse-encode-1000-tokens")
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_sse_encode_batch(benchmark, encoder: str) -> None:  # type: ignore[no-untyped-def]
    encode = ENCODERS[encoder]
    tokens = list(TOKENS)
    random.Random(1).shuffle(tokens)
    out = benchmark(encode, tokens, ID_PREFIX, FIRST_SEQ)
    assert out.count(b"event: token") == 1000
