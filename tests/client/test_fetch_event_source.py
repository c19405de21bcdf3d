"""``@microsoft/fetch-event-source`` (npm), which retries a POST with ``Last-Event-ID``, through a proxy that
cuts every connection: one generation only, every token once, in order (docs/protocol.md §2.2 "Field order",
§7.2). Skipped with the reason when npm or its registry is not available."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support.asgi_servers import uvicorn_server
from tests.support.cut_proxy import cut_proxy
from tests.support.fetch_event_source import install, run_client
from tests.support.servers import sse_server
from tokenwire import FakeModel, Hub, ServerOptions
from tokenwire.asgi import TokenwireASGI
from tokenwire.server.base import HubHost

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def npm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fetch-event-source")
    reason = install(directory)
    if reason is not None:
        pytest.skip(reason)
    return directory


@contextlib.asynccontextmanager
async def front(kind: str, model: FakeModel) -> AsyncIterator[tuple[int, HubHost]]:
    if kind == "sse":
        async with sse_server(model=model) as server:
            yield server.port, server
        return
    app = TokenwireASGI(Hub(), ServerOptions(generator=model))
    async with uvicorn_server(app) as base:
        yield int(base.rsplit(":", 1)[1]), app


def cuts_from(first: int) -> Callable[[int], int | None]:
    """Connection k ends after ``first`` + a varying number of response-body bytes (cuts fall at every place
    of an event); 40 cuts, then none."""
    return lambda k: None if k >= 40 else first + (k * 89) % 400


@pytest.mark.parametrize("kind", ["sse", "uvicorn"])
@pytest.mark.parametrize(
    ("first_cut", "key"),
    [
        # Some cuts come before the client has the stream's first id: only the Idempotency-Key ties its
        # retry (no Last-Event-ID yet) to the stream already started.
        (20, "fes-1"),
        # Every cut after the intro event: the client's Last-Event-ID alone resumes.
        (400, None),
    ],
)
async def test_post_retried_by_fetch_event_source_runs_the_model_once(
    npm_dir: Path, kind: str, first_cut: int, key: str | None
) -> None:
    model = FakeModel(seed=5, tokens_per_s=2000)
    expected = model.tokens("npm client", 200)
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    async with (
        front(kind, model) as (port, host),
        cut_proxy(port, cuts_from(first_cut), body_only=True) as proxy,
        asyncio.timeout(60),
    ):
        result = await run_client(
            npm_dir,
            f"http://127.0.0.1:{proxy.port}/v1/streams",
            method="POST",
            headers=headers,
            body={"prompt": "npm client", "max_tokens": 200},
        )
    assert "error" not in result, result.get("error")
    assert result["finished"] and result["opens"] > 10 and len(proxy.cuts) > 10
    # One generation, however often the client retried its POST.
    assert model.calls == 1 and host.metrics.streams_started_total == 1
    got = [(int(m["id"].rsplit(":", 1)[1]), m["data"]) for m in result["messages"] if m["event"] == "token"]
    # Every token at most once, in order; a token is lost only where a cut fell between its id: line and the
    # blank line after it (this client records the id before the event is complete): at most one per cut.
    seqs = [seq for seq, _ in got]
    assert seqs == sorted(set(seqs)), "tokens out of order or repeated"
    assert len(expected) - len(got) <= len(proxy.cuts)
    # The text as sent (this client joins data lines only after a non-empty one: an all-newline token is lost).
    assert all(text == expected[seq - 1] for seq, text in got if expected[seq - 1].strip("\n"))
    assert result["messages"][-1]["event"] == "done"
