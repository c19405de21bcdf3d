"""The browser client (js/src/client.js, served at ``/v1/client.js``) in real browsers, against tokenwire's own
servers: WebTransport first, SSE where the page has no WebTransport or it fails, exact resume, typed errors.

Every scenario is page-side JavaScript (client_scenarios.js) run through a :class:`PageDriver`, so it runs
unchanged in each browser of :data:`tests.support.drivers.BROWSERS`. Each checks the text the application's
``for await`` loop received against a clean replay of the stream from seq 0 (httpx, no ``Last-Event-ID``) and
that the model ran once for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.client_rig import Rig, closed_udp_port, install, rig, silent_udp_port, twt, until
from tests.support.drivers import PageDriver
from tokenwire.hub import StreamState
from tokenwire.server.certs import make_dev_certificate
from tokenwire.storage import MemoryStorage

# One browser for the module, on one loop: these tests prove the client in a browser, not the loop.
pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(30)]

RATE = 400.0  # tokens per second of a generation: mid-answer lasts long enough to act in


def ask(prompt: str, n: int, rate: float = RATE) -> dict[str, Any]:
    """A generate() body: ``n`` tokens of ``prompt`` at ``rate`` tokens per second."""
    return {"prompt": prompt, "max_tokens": n, "tokens_per_s": rate}


async def finished(driver: PageDriver, name: str) -> dict[str, Any]:
    run: dict[str, Any] = await twt(driver, "finished", name)
    assert not run["timedOut"], run
    return run


def ran_once(r: Rig, prompt: str) -> None:
    """The model ran once for ``prompt``: no resume or fallback started a second generation."""
    assert len(r.model.generations[prompt]) == 1, r.model.generations[prompt]


async def start_held(
    r: Rig, driver: PageDriver, name: str, prompt: str, n: int, held: int, client: dict[str, Any], **start: Any
) -> tuple[asyncio.Event, dict[str, Any]]:
    """A page with a client (``client``: its options) whose run ``name`` has received the first ``held``
    tokens of ``prompt``, where the generation is held: the gate that lets it go on, and the run's start."""
    gate = r.model.hold(prompt, held)
    await r.open_page(driver)
    await twt(driver, "newClient", "c", client)
    started: dict[str, Any] = await twt(driver, "start", name, {"request": ask(prompt, n), **start})
    assert started.get("error") is None, started
    assert await twt(driver, "waitTokens", name, held)
    return gate, started


async def check_against_replay(r: Rig, stream_id: str, received: list[str], restored: str = "") -> None:
    """The stream as the server holds it, replayed from seq 0, is ``restored`` (text a page got back from
    storage) followed by the tokens the application's loops ``received``, token for token."""
    replayed, final = await r.replay(stream_id)
    assert "".join(replayed) == restored + "".join(received)
    assert replayed[len(replayed) - len(received) :] == received
    assert final["reason"] == "length"


# -- (a), (b): one transport or the other -------------------------------------------------------------


@pytest.mark.parametrize(
    ("webtransport", "transport", "expected"),
    [(True, "auto", "webtransport"), (False, "auto", "sse"), (True, "sse", "sse")],
    ids=["auto-webtransport", "auto-no-webtransport-in-page", "sse-chosen"],
)
async def test_a_whole_answer_arrives_over_the_expected_transport(
    driver: PageDriver, webtransport: bool, transport: str, expected: str
) -> None:
    prompt, n = f"a whole answer, {transport} {webtransport}", 120
    async with rig() as r:
        page = await r.open_page(driver, webtransport=webtransport)
        await twt(driver, "newClient", "c", {"transport": transport})
        started = await twt(driver, "start", "a", {"request": ask(prompt, n, 2000)})
        run = await finished(driver, "a")
        await check_against_replay(r, run["id"], run["tokens"])

    assert page["hasWebTransport"] is webtransport
    assert started.get("error") is None, started
    assert run["error"] is None and not run["broke"]
    assert run["transport"] == expected and set(run["transports"]) == {expected}
    assert run["text"] == r.model.text(prompt, n) and len(run["tokens"]) == n
    assert run["id"] == started["id"] and run["epoch"] == r.hub.epoch
    assert run["lastEventId"] == f"{run['id']}:{r.hub.epoch}:{run['seq']}" and run["seq"] in (n, n + 1)
    assert run["final"]["reason"] == "length"
    kpis = run["kpis"]
    assert kpis["transport"] == expected and kpis["tokens"] == n and kpis["reconnects"] == 0
    assert kpis["ttftMs"] >= 0 and kpis["tokensPerS"] > 0
    assert run["kpiEvents"] > 0
    ran_once(r, prompt)
    assert r.wt is not None
    started_over = {"webtransport": r.wt.metrics.streams_started_total, "sse": r.sse.metrics.streams_started_total}
    assert started_over == {"webtransport": int(expected == "webtransport"), "sse": int(expected == "sse")}
    # Only a client that uses WebTransport asks where it is: not one told to use SSE, nor a page without it.
    asked = [s for s in r.router.seen if s.path == "/v1/webtransport/certificate"]
    assert len(asked) == int(expected == "webtransport")
    assert r.wt.metrics.sessions_total == int(expected == "webtransport")


# -- (c): a WebTransport failure mid-answer continues over SSE at the exact seq -----------------------


async def test_webtransport_killed_mid_answer_continues_over_sse_then_comes_back(driver: PageDriver) -> None:
    prompt, n, held = "the path dies mid-answer", 80, 30
    later = "a later question"
    async with rig() as r:
        gate, started = await start_held(r, driver, "c1", prompt, n, held, {})
        assert r.kill_webtransport() == 1  # the one session of the page
        stream_id = started["id"]
        await until(lambda: len(r.router.attaches(stream_id)) > 0, "the client's SSE resume")
        gate.set()
        run = await finished(driver, "c1")
        attaches = r.router.attaches(stream_id)
        await check_against_replay(r, run["id"], run["tokens"])
        # A later request may use WebTransport again: the failure was mid-answer, not at connect.
        await twt(driver, "start", "c2", {"request": ask(later, 20, 2000)})
        again = await finished(driver, "c2")
        await check_against_replay(r, again["id"], again["tokens"])

    assert run["error"] is None, run
    assert run["text"] == r.model.text(prompt, n) and len(run["tokens"]) == n
    assert run["transports"] == ["webtransport"] * held + ["sse"] * (n - held)
    assert run["transport"] == "sse" and run["kpis"]["reconnects"] >= 1
    (attach,) = attaches  # one SSE resume, at the exact seq the loop had reached
    assert attach.last_event_id == f"{stream_id}:{r.hub.epoch}:{held}"
    assert r.sse.metrics.resumes_total == 1 and r.sse.metrics.replayed_frames_total == 0
    assert [e["detail"] for e in run["events"] if e["type"] == "transport"][-1:] in (["sse"], [{"transport": "sse"}])
    ran_once(r, prompt)
    assert again["error"] is None and again["transport"] == "webtransport"
    assert again["text"] == r.model.text(later, 20)
    ran_once(r, later)
    assert r.wt is not None
    assert r.wt.metrics.streams_started_total == 2 and r.sse.metrics.streams_started_total == 0
    assert r.wt.metrics.sessions_total == 2  # a new session after the first one died


@pytest.mark.parametrize("transport", ["webtransport", "sse"])
async def test_drop_cuts_the_connection_and_the_client_recovers_by_itself(driver: PageDriver, transport: str) -> None:
    prompt, n, held = f"drop me over {transport}", 80, 30
    async with rig() as r:
        gate, _ = await start_held(r, driver, "d", prompt, n, held, {"transport": transport})
        await twt(driver, "drop", "d")
        assert r.wt is not None
        wt, sse = r.wt.metrics, r.sse.metrics
        await until(lambda: wt.resumes_total + sse.resumes_total > 0, "the client's resume")
        gate.set()
        run = await finished(driver, "d")
        await check_against_replay(r, run["id"], run["tokens"])

    assert run["error"] is None, run
    assert run["text"] == r.model.text(prompt, n) and len(run["tokens"]) == n
    assert run["kpis"]["reconnects"] >= 1
    assert wt.resumes_total + sse.resumes_total == 1
    assert wt.replayed_frames_total + sse.replayed_frames_total == 0  # resumed at the held seq: nothing to replay
    assert any(e["type"] == "reconnect" for e in run["events"])
    ran_once(r, prompt)


# -- (d): abort vs detach --------------------------------------------------------------------------------


class ReaderStillAttached(AssertionError):
    """The server still counts a reader of the stream after the page's loop left it."""


#: Firefox ESR 153 sends no STOP_SENDING when a page cancels a WebTransport stream's readable (the client's
#: ``reader.cancel()`` on leaving the loop): the server never learns that the reader went and keeps the request
#: stream attached, sending frames nobody reads, until the stream ends or the session closes. Chromium sends
#: STOP_SENDING at once. The generation is not affected (it goes on either way).
FIREFOX_KEEPS_WEBTRANSPORT_READER = pytest.mark.xfail(
    raises=ReaderStillAttached,
    strict=True,
    reason="Firefox ESR sends no STOP_SENDING when a WebTransport receive stream is cancelled",
)


@pytest.mark.parametrize("transport", ["webtransport", "sse"])
async def test_break_detaches_and_the_generation_goes_on(
    driver: PageDriver, transport: str, request: pytest.FixtureRequest
) -> None:
    if driver.name == "firefox" and transport == "webtransport":
        request.applymarker(FIREFOX_KEEPS_WEBTRANSPORT_READER)
    prompt, n, held, kept = f"leave the loop over {transport}", 60, 30, 10
    async with rig() as r:
        gate = r.model.hold(prompt, held)
        await r.open_page(driver)
        await twt(driver, "newClient", "c", {"transport": transport})
        started = await twt(driver, "start", "b", {"request": ask(prompt, n), "breakAfter": kept})
        first = await finished(driver, "b")
        stream = r.hub.get(started["id"])
        try:  # the server sees the reader go (the generation is held: the stream is open all along)
            await until(lambda: stream.subscribers == 0, "the server to see the reader go", seconds=2)
            detached = True
        except AssertionError:
            detached = False
        open_after_break = stream.is_open
        gate.set()
        await until(lambda: not stream.is_open, "the generation to finish")
        rest = await twt(driver, "resume", "b2", {"lastEventId": first["lastEventId"]})
        second = await finished(driver, "b2")
        await check_against_replay(r, second["id"], first["tokens"] + second["tokens"])

    assert first["broke"] and first["error"] is None and len(first["tokens"]) == kept
    assert open_after_break  # leaving the loop cancelled nothing
    assert stream.state is StreamState.FINISHED and stream.end_reason == "length"
    (generation,) = r.model.generations[prompt]
    assert generation.produced == n and not generation.cancelled
    assert rest.get("error") is None and second["error"] is None
    assert first["lastEventId"] == f"{started['id']}:{r.hub.epoch}:{kept}"
    assert "".join(first["tokens"] + second["tokens"]) == r.model.text(prompt, n)
    assert not any(s.method == "DELETE" for s in r.router.seen)
    assert r.hub.counters["streams_cancelled"] == 0
    if not detached:
        raise ReaderStillAttached(f"{driver.name} over {transport}: {stream.subscribers} reader(s) after the break")


@pytest.mark.parametrize("transport", ["webtransport", "sse"])
async def test_abort_stops_the_generation_on_the_server(driver: PageDriver, transport: str) -> None:
    prompt, n, held = f"abort over {transport}", 60, 20
    async with rig() as r:
        gate, started = await start_held(r, driver, "x", prompt, n, held, {"transport": transport})
        aborted = await twt(driver, "abort", "x")
        stream = r.hub.get(started["id"])
        await until(lambda: not stream.is_open, "the stream to end")
        gate.set()  # a generation still running would produce again now
        await asyncio.sleep(0.1)
        seen = list(r.router.seen)
        replayed, final = await r.replay(started["id"])

    assert not aborted["timedOut"] and aborted["abortError"] is None and aborted["error"] is None, aborted
    assert aborted["tokens"] == replayed and len(replayed) == held
    assert final["reason"] == "cancelled"
    assert stream.state is StreamState.CANCELLED
    (generation,) = r.model.generations[prompt]
    assert generation.cancelled and generation.produced == held
    assert r.hub.counters["streams_cancelled"] == 1
    deletes = [s for s in seen if s.method == "DELETE"]
    if transport == "sse":
        assert [s.path for s in deletes] == [f"/v1/streams/{started['id']}"]
    else:
        assert deletes == []  # a cancel request on the session instead
    assert [s for s in seen if s.path.endswith("/events")] == []  # no retry after an abort


# -- (e): reload and resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["auto", "sse"])
async def test_reload_then_restore_gives_the_whole_text_once(driver: PageDriver, transport: str) -> None:
    prompt, n, held = f"survive a reload over {transport}", 80, 30
    async with rig() as r:
        gate, started = await start_held(r, driver, "p", prompt, n, held, {"transport": transport}, persist="answer")
        before = await twt(driver, "state", "p")
        kept = await twt(driver, "storageKeys")
        await driver.reload()
        await install(driver)
        await twt(driver, "newClient", "c", {"transport": transport})
        nothing = await twt(driver, "restore", "none", {"key": "not kept"})
        gate.set()
        restored = await twt(driver, "restore", "p2", {"key": "answer"})
        assert restored is not None, kept
        run = await finished(driver, "p2")
        await check_against_replay(r, run["id"], run["tokens"], run["textAtStart"])

    assert nothing is None
    assert kept["session"], kept  # the resume point lives in sessionStorage
    assert run["error"] is None, run
    assert run["id"] == started["id"]
    # The text so far came back from storage (as of its last save, at most what the page had shown), and the
    # loop gets exactly the rest.
    assert "".join(before["tokens"]).startswith(run["textAtStart"])
    assert run["textAtStart"] + "".join(run["tokens"]) == run["text"] == r.model.text(prompt, n)
    ran_once(r, prompt)


# -- (f): 404 / 409 / 410 as typed errors --------------------------------------------------------------


TYPED_ERRORS = ("TokenwireError", "StreamNotFound", "EpochMismatch", "ResumeExpired", "ResumeFromFuture")


@pytest.mark.parametrize("transport", ["webtransport", "sse"])
async def test_resume_errors_are_typed(driver: PageDriver, transport: str) -> None:
    # A ring of 8 frames: a stream of 40 tokens keeps only its last 8 frames, the first ones have expired.
    async with rig(storage=MemoryStorage(max_frames_per_stream=8)) as r:
        stream = r.hub.create_stream()
        stream.send_many([f" t{i}" for i in range(40)])
        stream.finish("stop")
        epoch = r.hub.epoch
        await r.open_page(driver)
        await twt(driver, "newClient", "c", {"transport": transport})
        cases = {
            "missing": f"nosuchstream:{epoch}:0",
            "epoch": f"{stream.id}:Another1:3",
            "expired": f"{stream.id}:{epoch}:1",
        }
        for name, last_event_id in cases.items():
            await twt(driver, "resume", name, {"lastEventId": last_event_id})
        runs = {name: await finished(driver, name) for name in cases}
        taken = await twt(
            driver, "start", "taken", {"request": {"prompt": "same id", "max_tokens": 5, "stream_id": stream.id}}
        )

    errors = {name: run["error"] for name, run in runs.items()}
    assert all(run["tokens"] == [] for run in runs.values()), runs
    assert errors["missing"]["classes"] == ["TokenwireError", "StreamNotFound"], errors
    assert errors["missing"]["status"] == 404 and errors["missing"]["type"] == "StreamNotFound"
    assert errors["epoch"]["classes"] == ["TokenwireError", "EpochMismatch"], errors
    assert errors["epoch"]["status"] == 409 and errors["epoch"]["epoch"] == epoch
    assert errors["expired"]["classes"] == ["TokenwireError", "ResumeExpired"], errors
    assert errors["expired"]["status"] == 410 and errors["expired"]["oldestSeq"] == stream.oldest_seq > 2
    # A 409 of another type is a TokenwireError of that type, not an EpochMismatch.
    assert taken["error"]["classes"] == ["TokenwireError"] and taken["error"]["status"] == 409
    assert taken["error"]["type"] == "DuplicateStreamId"
    # No retry after a 4xx: a client that got the typed error stops there. Any reconnect before it followed a
    # transport failure, never a TokenwireError.
    reconnects = [e["detail"] for run in runs.values() for e in run["events"] if e["type"] == "reconnect"]
    assert not any(d["error"]["name"] in TYPED_ERRORS for d in reconnects), reconnects
    assert all(run["events"][-1]["type"] == "end" for run in runs.values())
    assert r.wt is not None
    if transport == "sse":  # and so each resume reached the server once
        assert reconnects == []
        assert len(r.router.attaches("nosuchstream")) == 1 and len(r.router.attaches(stream.id)) == 2
    else:  # the error reply of a whole request comes without STOP_SENDING, which Firefox let overtake it
        assert reconnects == [] and r.wt.metrics.bad_requests_total == 4
    assert r.model.calls == 0


# -- (g): auto with WebTransport unreachable ------------------------------------------------------------


@pytest.mark.parametrize("network", ["silent", "closed"])
async def test_auto_falls_back_to_sse_within_the_connect_timeout(driver: PageDriver, network: str) -> None:
    prompt, n, timeout_ms = f"no UDP here ({network})", 30, 1000
    sha256 = make_dev_certificate().sha256_hex
    with silent_udp_port() as (silent, arrived):
        port = silent if network == "silent" else closed_udp_port()
        info = {"url": f"https://127.0.0.1:{port}/v1/webtransport", "sha256": sha256, "algorithm": "sha-256"}
        async with rig(webtransport=False, certificate_info=info | {"self_signed": True}) as r:
            await r.open_page(driver)
            await twt(driver, "newClient", "c", {"connectTimeoutMs": timeout_ms})
            await twt(driver, "start", "g", {"request": ask(prompt, n, 2000)})
            run = await finished(driver, "g")
            await check_against_replay(r, run["id"], run["tokens"])
            tried = arrived()
            # Remembered for the origin: a new client of this page does not try WebTransport again.
            await twt(driver, "newClient", "c2", {"connectTimeoutMs": timeout_ms})
            await twt(driver, "start", "g2", {"request": ask(prompt + " again", n, 2000)})
            second = await finished(driver, "g2")
            tried_again = arrived() - tried

    assert run["error"] is None and run["transport"] == "sse" and run["text"] == r.model.text(prompt, n)
    assert run["firstTokenMs"] < timeout_ms + 2000, run  # the connect timeout, then SSE at once
    if network == "silent":
        assert tried > 0  # QUIC packets came: WebTransport was tried, and given up on
        assert tried_again == 0
    assert second["error"] is None and second["transport"] == "sse"
    ran_once(r, prompt)


@pytest.mark.parametrize("transport", ["auto", "sse"])
async def test_a_kept_stream_whose_frames_expired_is_forgotten(driver: PageDriver, transport: str) -> None:
    # A ring of 8 frames: once the answer has run on, the frames after the kept resume point are gone (410).
    prompt, n, held = f"kept, then expired ({transport})", 40, 3
    async with rig(storage=MemoryStorage(max_frames_per_stream=8)) as r:
        gate, started = await start_held(r, driver, "k", prompt, n, held, {"transport": transport}, persist="answer")
        await driver.reload()
        await install(driver)
        await twt(driver, "newClient", "c", {"transport": transport})
        gate.set()
        stream = r.hub.get(started["id"])
        await until(lambda: not stream.is_open, "the generation to finish")
        restored = await twt(driver, "restore", "k2", {"key": "answer"})
        assert restored is not None
        run = await finished(driver, "k2")
        # The kept point can never be resumed: a later restore (another reload) finds nothing, so the page's
        # `client.restore(key) ?? client.generate(...)` starts a new answer instead of failing again.
        again = await twt(driver, "restore", "k3", {"key": "answer"})
        kept = await twt(driver, "storageKeys")

    assert run["error"]["classes"] == ["TokenwireError", "ResumeExpired"], run
    assert run["tokens"] == [] and run["textAtStart"] == restored["text"]
    assert again is None
    assert "tokenwire:answer" not in kept["session"], kept
    ran_once(r, prompt)
