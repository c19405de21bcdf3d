"""The demo page (``GET /`` of the server, js/demo/index.html) in real browsers, used as a person would: type a
prompt, send, watch the answer stream in with the transport badge and the KPIs, drop the connection, abort.

The page is driven through its documented element ids only (setting fields and clicking buttons from page
JavaScript, so the same steps run in every driver); the assertions read the DOM. Screenshots are for people:
each is written under the test's tmp path and its path logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support.client_rig import Rig, rig, until
from tests.support.drivers import PageDriver
from tokenwire.hub import StreamState

pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(30)]

log = logging.getLogger("tests.browser")

# What the page shows, by its documented ids.
READ_DOM = """
() => {
  const $ = (id) => document.getElementById(id);
  const text = (id) => $(id).textContent;
  return {
    ready: typeof globalThis.tokenwireDemo === "object",
    badge: {text: text("transport-badge"), transport: $("transport-badge").dataset.transport},
    state: $("status").dataset.state,
    status: text("status"),
    answer: text("answer"),
    prompt: $("prompt").value,
    streamId: text("stream-id"),
    lastEventId: text("last-event-id"),
    kpis: Object.fromEntries(["ttft", "rate", "tokens", "reconnects", "recovery", "transport"].map((k) => [k, text(`kpi-${k}`)])),
    events: [...$("events").children].map((li) => li.textContent),
    buttons: Object.fromEntries(["send", "drop", "abort"].map((id) => [id, !$(id).disabled])),
  };
}
"""

# Fills the form and clicks Send, as a person would.
SEND = """
({prompt, maxTokens, pace, transport}) => {
  const $ = (id) => document.getElementById(id);
  $("prompt").value = prompt;
  $("max-tokens").value = String(maxTokens);
  $("pace").value = String(pace);
  $("transport").value = transport;
  $("send").click();
  return null;
}
"""

READY = """
async () => {
  for (let i = 0; i < 1000 && typeof globalThis.tokenwireDemo !== "object"; i++) await new Promise((r) => setTimeout(r, 10));
  return typeof globalThis.tokenwireDemo === "object";
}
"""

CLICK = "(id) => { document.getElementById(id).click(); return null; }"

# Resolves true once the answer streaming shows `tokens` tokens (the KPI of the stream in flight: a finished
# one's stays on screen until the next one streams), or the status reaches one of `states`; false on timeout.
WAIT = """
async ({tokens = null, states = null, ms = 10000}) => {
  const $ = (id) => document.getElementById(id);
  const end = performance.now() + ms;
  for (;;) {
    const got = Number($("kpi-tokens").textContent);
    const state = $("status").dataset.state;
    if (tokens !== null && state === "streaming" && got >= tokens) return true;
    if (states !== null && states.includes(state)) return true;
    if (performance.now() > end) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
"""


async def dom(driver: PageDriver) -> dict[str, Any]:
    result: dict[str, Any] = await driver.run(READ_DOM)
    return result


async def shoot(driver: PageDriver, path: Path) -> None:
    """A screenshot for people, named after the browser too: ``{browser}-{name}.png`` beside ``path``."""
    path = path.with_name(f"{driver.name}-{path.name}")
    await driver.screenshot(path)
    log.info("demo page screenshot: %s", path)


async def open_demo(r: Rig, driver: PageDriver) -> dict[str, Any]:
    """The demo page of ``r``'s server, once its module has run."""
    await driver.goto(f"{r.origin}/")
    assert await driver.run(READY)
    return await dom(driver)


async def test_demo_page_streams_drops_and_recovers_then_aborts(driver: PageDriver, tmp_path: Path) -> None:
    prompt, n, held = "Tell me how exact resume works, demo.", 60, 25
    second, held2 = "Now something to abort.", 15
    async with rig() as r:
        gate = r.model.hold(prompt, held)
        gate2 = r.model.hold(second, held2)
        idle = await open_demo(r, driver)

        await driver.run(SEND, {"prompt": prompt, "maxTokens": n, "pace": 200, "transport": "auto"})
        assert await driver.run(WAIT, {"tokens": held})
        streaming = await dom(driver)
        await shoot(driver, tmp_path / "demo-1-streaming.png")

        await driver.run(CLICK, "drop")
        assert r.wt is not None
        wt, sse = r.wt.metrics, r.sse.metrics
        await until(lambda: wt.resumes_total + sse.resumes_total > 0, "the page's client to resume")
        gate.set()
        assert await driver.run(WAIT, {"states": ["done", "error"]})
        done = await dom(driver)
        await shoot(driver, tmp_path / "demo-2-dropped-and-done.png")
        replayed, _ = await r.replay(done["streamId"])

        await driver.run(SEND, {"prompt": second, "maxTokens": 40, "pace": 200, "transport": "auto"})
        assert await driver.run(WAIT, {"tokens": held2})
        await driver.run(CLICK, "abort")
        assert await driver.run(WAIT, {"states": ["aborted", "error"]})
        aborted = await dom(driver)
        await shoot(driver, tmp_path / "demo-3-aborted.png")
        stream = r.hub.get(aborted["streamId"])
        await until(lambda: not stream.is_open, "the aborted stream to end on the server")

    assert (
        idle["ready"] and idle["state"] == "idle" and idle["buttons"] == {"send": True, "drop": False, "abort": False}
    )
    assert idle["badge"]["transport"] == ""

    # Mid-answer: WebTransport, the text so far, live KPIs, drop and abort enabled.
    assert streaming["state"] == "streaming" and streaming["buttons"] == {"send": False, "drop": True, "abort": True}
    assert streaming["badge"] == {"text": "webtransport", "transport": "webtransport"}
    assert streaming["kpis"]["transport"] == "webtransport"
    assert streaming["kpis"]["tokens"] == str(held)
    assert streaming["answer"] == "".join(r.model.tokens(prompt, n)[:held])
    assert streaming["kpis"]["ttft"].endswith(" ms") and streaming["kpis"]["reconnects"] == "0"
    assert streaming["lastEventId"] == f"{streaming['streamId']}:{r.hub.epoch}:{held}"

    # After the drop: the client continued over SSE at the exact seq; the whole answer, once.
    assert done["state"] == "done", done
    assert done["answer"] == r.model.text(prompt, n) == "".join(replayed)
    assert done["kpis"]["tokens"] == str(n)
    assert done["badge"]["transport"] == "sse" and done["kpis"]["transport"] == "sse"
    assert int(done["kpis"]["reconnects"]) >= 1 and done["kpis"]["recovery"].endswith(" ms")
    assert any("transport: sse" in e for e in done["events"]) and any("end: length" in e for e in done["events"])
    assert wt.resumes_total + sse.resumes_total == 1
    assert len(r.model.generations[prompt]) == 1

    # Abort: the page says so, and the server's generation stopped where it was held.
    assert aborted["state"] == "aborted", aborted
    assert aborted["answer"] == "".join(r.model.tokens(second, 40)[:held2])
    assert stream.state is StreamState.CANCELLED
    (generation,) = r.model.generations[second]
    assert generation.cancelled and generation.produced == held2
    assert not gate2.is_set()


async def test_demo_page_resumes_the_answer_in_flight_after_a_reload(driver: PageDriver, tmp_path: Path) -> None:
    prompt, n, held = "Reload me halfway.", 50, 20
    async with rig() as r:
        gate = r.model.hold(prompt, held)
        await open_demo(r, driver)
        await driver.run(SEND, {"prompt": prompt, "maxTokens": n, "pace": 200, "transport": "auto"})
        assert await driver.run(WAIT, {"tokens": held})
        before = await dom(driver)
        await driver.reload()
        assert await driver.run(READY)
        gate.set()
        assert await driver.run(WAIT, {"states": ["done", "error"]})
        after = await dom(driver)
        await shoot(driver, tmp_path / "demo-4-reloaded-and-done.png")
        replayed, _ = await r.replay(after["streamId"])

    assert after["state"] == "done", after
    assert after["streamId"] == before["streamId"]
    assert after["prompt"] == prompt  # the form as it was sent, not the page's default
    assert after["answer"] == r.model.text(prompt, n) == "".join(replayed)  # the whole answer, once
    assert any("resumed after a reload" in e for e in after["events"])
    assert len(r.model.generations[prompt]) == 1
