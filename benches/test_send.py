"""``TokenStream.send`` one token at a time from Python, including the hub's bookkeeping.

Each round sends 1,000 tokens in a plain loop; per-call time = round time / 1,000 (loop overhead included).
"""

from __future__ import annotations

import asyncio

import pytest

from tokenwire import Hub

N = 1000
TOKENS = [" tok"] * N


def send_loop(send, tokens=TOKENS) -> int:  # type: ignore[no-untyped-def]
    seq = 0
    for t in tokens:
        seq = send(t)
    return seq


@pytest.mark.benchmark(group="send-1000-tokens-one-call-each")
@pytest.mark.parametrize("subscribers", [0, 1])
def test_send(benchmark, subscribers: int) -> None:  # type: ignore[no-untyped-def]
    async def setup() -> tuple[Hub, object]:
        hub = Hub()
        stream = hub.create_stream()
        subs = [hub.subscribe(stream.id) for _ in range(subscribers)]
        return hub, (stream, subs)

    loop = asyncio.new_event_loop()
    try:
        hub, (stream, subs) = loop.run_until_complete(setup())  # type: ignore[misc]
        first = send_loop(stream.send)
        assert first == N and stream.last_seq == N
        for sub in subs:
            assert len(sub.read_ready()) == N
        benchmark(send_loop, stream.send)
        assert stream.last_seq > N
        loop.run_until_complete(hub.aclose())
    finally:
        loop.close()


@pytest.mark.benchmark(group="send-1000-tokens-one-call-each")
def test_send_baseline_list_append(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The floor: a Python list.append per token (no storage, no seq, no notification)."""
    out: list[str] = []

    def append(t: str) -> int:
        out.append(t)
        return len(out)

    benchmark(send_loop, append)
    assert out
