"""Auth on every front (docs/protocol.md §8): the SSE server, the ASGI app under uvicorn, the WebTransport server
and ``tokenwire serve``, driven by real clients (httpx, tokenwire's WebTransportClient, a hand-driven aioquic
client). A request without accepted credentials gets 401 and its JSON body; a stream is its starter's alone:
another principal's resume, cancel, idempotent repeat or ``Last-Event-ID`` retry is 404, as for no stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

from tests.support.asgi_servers import uvicorn_server
from tests.support.servers import serve_process, sse_server, wt_client, wt_server
from tests.support.sse_spec_parser import SpecParser
from tokenwire import FakeModel, GenerationRequest, Hub, ServerOptions, StreamNotFound, Unauthorized
from tokenwire.asgi import TokenwireASGI
from tokenwire.auth import ApiKeys, AuthRequest
from tokenwire.client.webtransport import WebTransportClient
from tokenwire.protocol.webtransport import WT_PATH, connect_headers
from tokenwire.server import ServerConfig
from tokenwire.server.base import HubHost
from tokenwire.server.endpoints import PRINCIPAL_LABEL

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.asyncio(loop_factories=["asyncio"])]

ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"
WRONG = "not-a-key"
#: The tokens :class:`Teams` knows, and one it does not.
TEAM_A, TEAM_B, NOBODY = "t-alice", "t-bob", "t-nobody"
KEYS = ApiKeys([ALICE, BOB])
CHALLENGE = 'Bearer realm="tokenwire"'


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def front(kind: str, model: FakeModel, auth: Any = KEYS, **config: Any) -> AsyncIterator[tuple[str, HubHost]]:
    """``(base URL, host)`` of the socket server (``sse``) or of the ASGI app under uvicorn, with ``auth``."""
    if kind == "sse":
        async with sse_server(model=model, auth=auth, **config) as server:
            yield f"http://127.0.0.1:{server.port}", server
        return
    app = TokenwireASGI(Hub(), ServerOptions(ServerConfig(**config), model, auth))
    async with uvicorn_server(app) as base:
        yield base, app


async def first_events(client: httpx.AsyncClient, method: str, url: str, n: int, **kw: Any) -> list[Any]:
    """The first ``n`` events of a stream answer (then the connection is dropped)."""
    parser = SpecParser()
    got: list[Any] = []
    async with client.stream(method, url, **kw) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            got += parser.feed(chunk)
            if len(got) >= n:
                break
    return got[:n]


def assert_unauthorized(response: httpx.Response, challenge: str = CHALLENGE) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    error = response.json()["error"]
    assert error["type"] == "Unauthorized" and error["code"] == "unauthorized" and error["status"] == 401
    assert ALICE not in response.text and BOB not in response.text


def assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "StreamNotFound"


@pytest.mark.parametrize("kind", ["sse", "uvicorn"])
async def test_requests_without_accepted_credentials_get_401_and_a_json_body(kind: str) -> None:
    async with front(kind, FakeModel(seed=5)) as (base, host), httpx.AsyncClient(base_url=base, timeout=10) as http:
        start = {"prompt": "hi", "max_tokens": 3}
        assert_unauthorized(await http.post("/v1/streams", json=start))
        assert_unauthorized(
            await http.post("/v1/streams", json=start, headers=bearer(WRONG)),
            'Bearer realm="tokenwire", error="invalid_token"',
        )
        assert_unauthorized(await http.post("/v1/streams", json=start, headers={"authorization": f"Basic {ALICE}"}))
        # A token in the URL is the WebTransport CONNECT's form only.
        assert_unauthorized(await http.post(f"/v1/streams?access_token={ALICE}", json=start))
        chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        assert_unauthorized(await http.post("/v1/chat/completions", json=chat))
        assert_unauthorized(await http.get("/v1/streams/some-id/events"))
        assert_unauthorized(await http.delete("/v1/streams/some-id"))
        assert_unauthorized(await http.get("/v1/webtransport/certificate"))
        assert host.metrics.streams_started_total == 0
        # Open without credentials: liveness, metrics, the browser files, and every preflight.
        for path in ("/healthz", "/metrics", "/v1/client.js", "/"):
            assert (await http.get(path)).status_code == 200, path
        assert (await http.options("/v1/streams")).status_code == 204
        # And with them, a stream.
        response = await http.post("/v1/streams", json={**start, "tokens_per_s": 0}, headers=bearer(ALICE))
        assert response.status_code == 200
        events = SpecParser().feed(response.content)
        assert [e.data for e in events if e.type == "token"] == FakeModel(seed=5).tokens("hi", 3)
        assert host.metrics.streams_started_total == 1


@pytest.mark.parametrize("kind", ["sse", "uvicorn"])
async def test_another_principal_cannot_resume_cancel_or_repeat_a_stream(kind: str) -> None:
    model = FakeModel(seed=5)
    async with front(kind, model) as (base, host), httpx.AsyncClient(base_url=base, timeout=10) as http:
        body = {"prompt": "mine", "max_tokens": 400, "tokens_per_s": 100}
        head = await first_events(
            http, "POST", "/v1/streams", 3, json=body, headers={**bearer(ALICE), "idempotency-key": "alice-1"}
        )
        stream_id = json.loads(head[0].data)["stream_id"]
        last = head[-1].last_event_id
        stream = host.hub.get(stream_id)
        assert stream.labels[PRINCIPAL_LABEL] == ApiKeys.principal_of(ALICE) != ApiKeys.principal_of(BOB)
        unknown = await http.get("/v1/streams/nosuchstream/events", headers=bearer(BOB))
        assert_not_found(unknown)
        as_bob = bearer(BOB)
        # Resume, with and without a resume point; cancel; a POST retried with Alice's Last-Event-ID.
        assert_not_found(await http.get(f"/v1/streams/{stream_id}/events", headers=as_bob))
        assert_not_found(await http.get(f"/v1/streams/{stream_id}/events", headers={**as_bob, "last-event-id": last}))
        assert_not_found(await http.get(f"/v1/streams/{stream_id}/events?last_event_id={last}", headers=as_bob))
        assert_not_found(await http.delete(f"/v1/streams/{stream_id}", headers=as_bob))
        assert_not_found(await http.post("/v1/streams", json=body, headers={**as_bob, "last-event-id": last}))
        # Alice's Idempotency-Key means nothing to Bob: his keys are his own (a start of his, and his own 422).
        as_bob_keyed = {**as_bob, "idempotency-key": "alice-1"}
        bobs = await first_events(http, "POST", "/v1/streams", 1, json=body, headers=as_bob_keyed)
        bob_stream = json.loads(bobs[0].data)["stream_id"]
        assert bob_stream != stream_id
        assert host.hub.get(bob_stream).labels[PRINCIPAL_LABEL] == ApiKeys.principal_of(BOB)
        other = await http.post("/v1/streams", json={**body, "prompt": "other"}, headers=as_bob_keyed)
        assert other.status_code == 422
        assert (await http.delete(f"/v1/streams/{bob_stream}", headers=as_bob)).status_code == 204
        assert stream.is_open and host.metrics.streams_started_total == 2
        # Alice's own resume picks up exactly after her last event, and her cancel ends it.
        rest = await first_events(
            http, "GET", f"/v1/streams/{stream_id}/events", 2, headers={**bearer(ALICE), "last-event-id": last}
        )
        assert rest[0].type == "stream" and rest[0].last_event_id == last
        assert rest[1].last_event_id == f"{stream_id}:{host.hub.epoch}:{int(last.split(':')[2]) + 1}"
        assert (await http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))).status_code == 204
        assert not stream.is_open


@pytest.mark.parametrize("kind", ["sse", "uvicorn"])
async def test_a_chat_completion_is_its_starters_alone(kind: str) -> None:
    async with front(kind, FakeModel(seed=5)) as (base, _), httpx.AsyncClient(base_url=base, timeout=10) as http:
        chat = {"messages": [{"role": "user", "content": "q"}], "stream": True, "max_tokens": 400, "tokens_per_s": 100}
        head = await first_events(http, "POST", "/v1/chat/completions", 3, json=chat, headers=bearer(ALICE))
        last = head[-1].last_event_id
        stream_id = last.split(":")[0]
        url = f"/v1/streams/{stream_id}/events?format=openai"
        assert_not_found(await http.get(url, headers={**bearer(BOB), "last-event-id": last}))
        assert_not_found(
            await http.post("/v1/chat/completions", json=chat, headers={**bearer(BOB), "last-event-id": last})
        )
        again = await first_events(http, "GET", url, 1, headers={**bearer(ALICE), "last-event-id": last})
        assert again[0].last_event_id.startswith(f"{stream_id}:")
        await http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))


class Recording:
    """A FakeModel that remembers each request's principal."""

    def __init__(self) -> None:
        self.model = FakeModel(seed=5)
        self.principals: list[str | None] = []
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> Any:
        self.principals.append(request.principal)
        self.requests.append(request)
        return self.model.generate(request)


class Teams:
    """An async authenticator (as one asking an identity provider would be); ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self, request: AuthRequest) -> str | None:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("identity provider down")
        return {TEAM_A: "team-a", TEAM_B: "team-b"}.get(request.token or "")


async def test_an_async_authenticator_and_the_principal_the_generator_sees(caplog: pytest.LogCaptureFixture) -> None:
    """On the socket server an async authenticator runs without blocking the connection's loop: the request
    is held, then answered; the connection then takes its next request (keep-alive)."""
    teams, model = Teams(), Recording()
    async with (
        sse_server(model=model, auth=teams) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http,
    ):
        start = {"prompt": "p", "max_tokens": 4, "tokens_per_s": 0}
        assert_unauthorized(await http.post("/v1/streams", json=start))
        response = await http.post("/v1/streams", json=start, headers=bearer(TEAM_A))
        stream_id = response.headers["x-tokenwire-stream-id"]
        assert model.principals == ["team-a"]
        assert server.hub.get(stream_id).labels[PRINCIPAL_LABEL] == "team-a"
        assert_not_found(await http.get(f"/v1/streams/{stream_id}/events", headers=bearer(TEAM_B)))
        replay = await http.get(f"/v1/streams/{stream_id}/events", headers=bearer(TEAM_A))
        assert [e.data for e in SpecParser().feed(replay.content) if e.type == "token"] == model.model.tokens("p", 4)
        assert (await http.get("/healthz")).status_code == 200
        assert teams.calls == 4  # once per /v1 request, never for /healthz
        teams.fail = True  # the authenticator's own failure is the server's: 500, logged, not a 401
        failed = await http.post("/v1/streams", json=start, headers=bearer(TEAM_A))
        assert failed.status_code == 500 and "identity provider down" in caplog.text


async def test_keys_from_the_command_line_and_a_file(tmp_path: Path) -> None:
    """``tokenwire serve --api-key K --api-key-file F --cors-origin O``, as a user runs it."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# the team's key\n{BOB}\n")
    async with (
        serve_process("--api-key", ALICE, "--api-key-file", str(keys), "--cors-origin", "http://app.test:5173") as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        start = {"prompt": "cli", "max_tokens": 3, "tokens_per_s": 0}
        assert_unauthorized(await http.post("/v1/streams", json=start))
        for key in (ALICE, BOB):
            assert (await http.post("/v1/streams", json=start, headers=bearer(key))).status_code == 200
        preflight = await http.options(
            "/v1/streams",
            headers={"origin": "http://app.test:5173", "access-control-request-headers": "authorization"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://app.test:5173"
        assert "authorization" in preflight.headers["access-control-allow-headers"]


# -- WebTransport -------------------------------------------------------------------------------------


async def test_a_webtransport_session_needs_the_credentials_on_its_connect() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model, auth=KEYS) as server:
        for client in (wt_client(server), wt_client(server, access_token=WRONG)):
            async with client:
                with pytest.raises(Unauthorized):
                    await client.generate("x", max_tokens=2)
        assert server.metrics.sessions_refused_total == 2 and server.metrics.streams_started_total == 0
        # The header form (Authorization on the CONNECT), and the browser's form (?access_token=).
        in_url = WebTransportClient(
            f"{server.url}?access_token={BOB}", server_certificate_hashes=[server.certificate.sha256]
        )
        principals = []
        for client in (wt_client(server, access_token=ALICE), in_url):
            async with client:
                reader = await client.generate("wt", max_tokens=5, tokens_per_s=0)
                assert await reader.text() == "".join(model.tokens("wt", 5))
                principals.append(server.hub.get(reader.stream_id).labels[PRINCIPAL_LABEL])
        assert principals == [ApiKeys.principal_of(ALICE), ApiKeys.principal_of(BOB)]


async def test_what_an_authenticator_and_a_generator_are_given_prints_no_token() -> None:
    """An authenticator or a generator that logs what it is given (its repr, the path) logs no credentials: the
    path of a WebTransport CONNECT comes without its query (``?access_token=`` is in ``query``), as an HTTP
    request's does, and the reprs leave headers and query out."""
    seen: list[AuthRequest] = []

    def keys(request: AuthRequest) -> str | None:
        seen.append(request)
        return KEYS(request)

    model = Recording()
    async with wt_server(model=model, auth=keys) as server:
        in_url = WebTransportClient(
            f"{server.url}?access_token={BOB}", server_certificate_hashes=[server.certificate.sha256]
        )
        async with in_url, wt_client(server, access_token=ALICE) as with_header:
            for client in (in_url, with_header):
                await (await client.generate("wt", max_tokens=2, tokens_per_s=0)).text()
    assert [r.path for r in seen] == [WT_PATH, WT_PATH] and seen[0].query["access_token"] == BOB
    assert [r.token for r in seen] == [BOB, ALICE]
    assert model.requests[1].headers["authorization"] == f"Bearer {ALICE}"  # a generator may pass it on
    for request in (*seen, *model.requests):
        assert BOB not in repr(request) and ALICE not in repr(request)


async def test_another_principal_cannot_attach_to_or_cancel_a_stream_over_webtransport() -> None:
    """A stream started over SSE by Alice: over WebTransport Bob's session finds nothing (attach, cancel; her
    idempotency key starts a stream of his own) while Alice's resumes it exactly after her position and cancels it."""
    model, hub = FakeModel(seed=5), Hub()
    async with (
        sse_server(hub, model=model, auth=KEYS) as sse,
        wt_server(hub, model=model, auth=KEYS) as wt,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{sse.port}", timeout=10) as http,
        wt_client(wt, access_token=ALICE) as alice,
        wt_client(wt, access_token=BOB) as bob,
    ):
        body = {"prompt": "both", "max_tokens": 400, "tokens_per_s": 100}
        head = await first_events(http, "POST", "/v1/streams", 4, json=body, headers=bearer(ALICE))
        stream_id, last = json.loads(head[0].data)["stream_id"], head[-1].last_event_id
        with pytest.raises(StreamNotFound):
            await bob.attach(stream_id, last_event_id=last)
        with pytest.raises(StreamNotFound):
            await bob.attach(stream_id)
        with pytest.raises(StreamNotFound):
            await bob.cancel(stream_id)
        keyed = await alice.generate("keyed", max_tokens=400, tokens_per_s=100, idempotency_key="alice-wt")
        bobs = await bob.generate("keyed", max_tokens=400, tokens_per_s=100, idempotency_key="alice-wt")
        assert bobs.stream_id != keyed.stream_id  # his keys are his own
        await bob.cancel(bobs.stream_id)
        await bobs.aclose()
        assert hub.get(stream_id).is_open and hub.get(keyed.stream_id).is_open
        reader = await alice.attach(stream_id, last_event_id=last)
        tokens = [token async for token, _ in _first(reader, 3)]
        sent = [e.data for e in head if e.type == "token"]
        assert sent + tokens == model.tokens("both", 400)[: len(sent) + 3]
        await alice.cancel(stream_id)
        await alice.cancel(keyed.stream_id)
        assert not hub.get(stream_id).is_open and not hub.get(keyed.stream_id).is_open
        await reader.aclose()
        await keyed.aclose()


async def _first(reader: Any, n: int) -> AsyncIterator[tuple[str, int]]:
    got = 0
    async for token in reader:
        yield token, got
        got += 1
        if got >= n:
            return


async def test_an_async_authenticator_holds_the_connect_and_its_pipelined_requests() -> None:
    """tokenwire's client sends its start request right behind the CONNECT; while the authenticator thinks, the
    server holds both, then serves the request as the session's principal."""
    teams, model = Teams(), Recording()
    async with wt_server(model=model, auth=teams) as server:
        async with wt_client(server, access_token=TEAM_B) as client:
            reader = await client.generate("held", max_tokens=3, tokens_per_s=0)
            assert await reader.text() == "".join(model.model.tokens("held", 3))
        async with wt_client(server, access_token=NOBODY) as client:
            with pytest.raises(Unauthorized):
                await client.generate("held", max_tokens=3)
        assert model.principals == ["team-b"] and teams.calls == 2
        assert not any(c.authorizing for c in server.connections)


class _Connects(QuicConnectionProtocol):
    """A hand-driven HTTP/3 client: CONNECT requests on one QUIC connection, each answer's headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.answers: dict[int, asyncio.Future[dict[bytes, bytes]]] = {}
        self.authority = ""

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived) and h3_event.stream_id in self.answers:
                future = self.answers[h3_event.stream_id]
                if not future.done():
                    future.set_result(dict(h3_event.headers))

    async def open(
        self, path: str, origin: str | None = None, extra: Iterable[tuple[str, str]] = ()
    ) -> dict[bytes, bytes]:
        sid = self._quic.get_next_available_stream_id()
        self.answers[sid] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(sid, connect_headers(self.authority, path, origin, extra))
        self.transmit()
        async with asyncio.timeout(5):
            return await self.answers[sid]


@contextlib.asynccontextmanager
async def connects(port: int) -> AsyncIterator[_Connects]:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
    config.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", port, configuration=config, create_protocol=_Connects) as client:
        assert isinstance(client, _Connects)
        client.authority = f"127.0.0.1:{port}"
        yield client


async def test_the_connect_origin_and_credentials_with_a_hand_driven_client() -> None:
    app = "https://app.example"
    async with wt_server(auth=KEYS, allow_origins=(app,)) as server, connects(server.port) as h3:
        own = f"http://127.0.0.1:{server.port}"  # a page of this server itself (tokenwire serve: one port number)
        cases = [
            (WT_PATH, "https://evil.example", bearer(ALICE), b"403"),
            (f"{WT_PATH}?access_token={ALICE}", "https://evil.example", {}, b"403"),
            (WT_PATH, app, {}, b"401"),
            (f"{WT_PATH}?access_token=wrong", app, {}, b"401"),
            (f"{WT_PATH}?access_token={ALICE}", app, {}, b"200"),
            (f"{WT_PATH}?access_token={BOB}", own, {}, b"200"),
            (WT_PATH, None, bearer(BOB), b"200"),  # no Origin: not a browser
            (WT_PATH, None, {}, b"401"),
        ]
        for path, origin, headers, status in cases:
            answer = await h3.open(path, origin, headers.items())
            assert answer[b":status"] == status, (path, origin, headers)
            if status == b"401":
                assert answer[b"www-authenticate"].startswith(b'Bearer realm="tokenwire"')
        assert server.metrics.sessions_refused_total == 5 and server.metrics.sessions_total == 3
    async with wt_server() as server, connects(server.port) as h3:
        # CORS off: a page of another origin can read no HTTP answer, and opens no WebTransport session either;
        # a page of the server itself, and a client that is no browser, can.
        assert (await h3.open(WT_PATH, "https://evil.example"))[b":status"] == b"403"
        assert (await h3.open(WT_PATH, f"http://127.0.0.1:{server.port}"))[b":status"] == b"200"
        assert (await h3.open(WT_PATH, None))[b":status"] == b"200"
