"""``benches/browser_client.py``: once end to end at a tiny point in headless Chromium (every scenario over both
transports, every sample checked), and its correctness check failing a wrong answer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from benches.browser_client import SIDE_BY_SIDE, Bench, serve
from tests.support.sessions import run_module
from tests.support.sse_spec_parser import parse

SMOKE = [
    "--repeats", "1", "--samples", "1", "--blackhole-samples", "1", "--tokens", "400", "--ttft-tokens", "5",
    "--cut-tokens", "150", "--cut-at", "20", "--rate", "1000", "--connect-timeout-ms", "300", "--retry-ms", "100",
]  # fmt: skip


@pytest.mark.timeout(90)
def test_one_tiny_run_of_every_scenario_passes_its_checks(tmp_path: Path) -> None:
    out = tmp_path / "browser.json"
    proc, output, errors = run_module(["benches.browser_client", *SMOKE, "--out", str(out)], timeout=80)
    assert proc.returncode == 0, output + errors
    result = json.loads(out.read_text())
    assert result["failures"] == []
    (samples,) = (r for r in result["repeats"])
    for metric in SIDE_BY_SIDE:  # every side-by-side metric, one good sample over each transport
        assert {t: len(v) for t, v in samples[metric].items()} == {"webtransport": 1, "sse": 1}, metric
        assert all(v is not None and v >= 0 for v in samples[metric].values() for v in v), (metric, samples[metric])
    for metric in ("drop_wait_ms", "kill_wait_ms"):  # a fallback to SSE connects at once; an SSE reconnect waits
        assert samples[metric]["webtransport"] == [0] and samples[metric]["sse"][0] > 0
    assert set(samples["blackhole_first_ttft_ms"]) == {"auto"} and set(samples["blackhole_sse_ttft_ms"]) == {"sse"}
    assert "correctness: PASS (0 failures)" in output and "| recovery after stream.drop()" in output


async def test_the_check_fails_a_wrong_text_and_a_second_model_run() -> None:
    async with serve(retry_ms=1000) as servers, httpx.AsyncClient(base_url=servers.origin(servers.main)) as http:
        b = Bench(driver=None, servers=servers, args=argparse.Namespace())  # type: ignore[arg-type]
        run = await _run_over_http(http, "a prompt", 30)
        assert await b.check("right", "a prompt", 30, run, transport="sse")
        assert b.failures == []

        assert not await b.check("transport", "a prompt", 30, run, transport="webtransport")
        wrong = {**run, "text": run["text"][:-1] + "?"}  # one character off
        assert not await b.check("wrong", "a prompt", 30, wrong)
        short = {**run, "tokens": 29}
        assert not await b.check("short", "a prompt", 30, short)
        await _run_over_http(http, "a prompt", 30)  # the same prompt started again: the model ran twice
        assert not await b.check("twice", "a prompt", 30, run)
        assert [f.split(":")[0] for f in b.failures] == ["transport", "wrong", "short", "twice"]
        assert "text differs" in b.failures[1] and "ran 2 times" in b.failures[3]


async def _run_over_http(http: httpx.AsyncClient, prompt: str, tokens: int) -> dict[str, Any]:
    """What the page reports for a stream read in full, from one read over HTTP."""
    response = await http.post("/v1/streams", json={"prompt": prompt, "max_tokens": tokens, "tokens_per_s": 0})
    events, _ = parse(response.content)
    text = "".join(e.data for e in events if e.type == "token")
    return {
        "error": None, "id": json.loads(events[0].data)["stream_id"], "text": text, "tokens": tokens,
        "final": json.loads(events[-1].data), "transport": "sse", "kpis": {},
    }  # fmt: skip
