"""The browser's side of the servers: the client module and the demo page (``GET /v1/client.js``, ``GET /``),
HEAD and conditional requests, CORS (opt-in), on ``tokenwire serve``'s server and on TokenwireASGI under uvicorn
and hypercorn, with httpx, curl and raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html.parser
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.asgi_servers import SERVERS
from tests.support.servers import serve_process, sse_server, wt_server
from tokenwire.asgi import TokenwireASGI
from tokenwire.cli import main
from tokenwire.protocol.http1 import HttpLimits
from tokenwire.server import ServerConfig
from tokenwire.server.certs import Certificate, load_certificate, make_dev_certificate
from tokenwire.server.config import normalize_origin

pytestmark = pytest.mark.usefixtures("no_leaks")

ROOT = Path(__file__).parent.parent.parent
CLIENT_JS = ROOT / "js" / "src" / "client.js"
DEMO_HTML = ROOT / "js" / "demo" / "index.html"
APP = "https://app.example"
EXPOSED = "X-Tokenwire-Stream-Id, X-Tokenwire-Epoch, Location"

Front = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@contextlib.asynccontextmanager
async def _tokenwire_serve(**config: Any) -> AsyncIterator[str]:
    async with sse_server(**config) as server:
        yield f"http://127.0.0.1:{server.port}"


def _asgi(name: str) -> Front:
    @contextlib.asynccontextmanager
    async def front(**config: Any) -> AsyncIterator[str]:
        async with SERVERS[name](TokenwireASGI(None, ServerConfig(**config))) as base:
            yield base

    return front


FRONTS: dict[str, Front] = {
    "tokenwire-serve": _tokenwire_serve,
    "uvicorn": _asgi("uvicorn"),
    "hypercorn": _asgi("hypercorn"),
}


@pytest.fixture(params=sorted(FRONTS))
def front(request: pytest.FixtureRequest) -> Front:
    return FRONTS[request.param]


# -- the client module and the demo page -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "source", "content_type"),
    [
        ("/v1/client.js", CLIENT_JS, "text/javascript; charset=utf-8"),
        ("/", DEMO_HTML, "text/html; charset=utf-8"),
    ],
    ids=["client", "demo"],
)
async def test_browser_files_are_served_from_the_package_with_validators(
    front: Front, path: str, source: Path, content_type: str
) -> None:
    expected = await asyncio.to_thread(source.read_bytes)
    async with front() as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.get(path)
        assert r.status_code == 200
        assert r.content == expected  # the js/ source of truth, through the package's link
        assert r.headers["content-type"] == content_type
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-content-type-options"] == "nosniff"
        etag = r.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)

        for validator in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = await http.get(path, headers={"if-none-match": validator})
            assert again.status_code == 304, validator
            assert again.content == b"" and again.headers["etag"] == etag
            assert "content-length" not in again.headers and "content-type" not in again.headers
        assert (await http.get(path, headers={"if-none-match": '"stale"'})).content == expected

        head = await http.head(path)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(expected)
        assert head.headers["etag"] == etag

        wrong = await http.post(path, content=b"{}")
        assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "HttpError"


async def test_a_head_answer_has_no_body_on_a_kept_alive_connection() -> None:
    """HEAD and a GET pipelined on one connection: the HEAD's answer stops after its head (its Content-Length is
    the file's), so the next answer starts right after it."""
    async with sse_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"HEAD /v1/client.js HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    first, second, third = raw.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(CLIENT_JS.read_bytes())}\r\n".encode() in first
    assert second.startswith(b"200 ") and second.endswith(b"\r\n\r\n")
    assert third.startswith(b"200 ") and third.split(b"\r\n\r\n", 1)[1].startswith(b'{"status": "ok"')


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids[str(found["id"])] = tag
        if tag == "script":
            self.scripts.append(found)


def test_the_demo_page_has_every_id_it_documents_and_loads_the_served_client() -> None:
    page = DEMO_HTML.read_text()
    documented = set(re.findall(r"#([a-z][a-z0-9-]*)", page.split("-->", 1)[0]))
    parser = _Ids()
    parser.feed(page)
    assert documented and documented <= set(parser.ids), documented - set(parser.ids)
    assert {parser.ids[i] for i in ("send", "drop", "abort")} == {"button"}
    assert parser.ids["transport"] == "select"
    assert re.findall(r'<option value="(\w+)"', page) == ["auto", "webtransport", "sse"]
    assert parser.scripts == [{"type": "module"}]  # one module script, inline: the page is self-contained
    assert 'from "./v1/client.js"' in page  # the served client, relative: it follows a mount prefix
    assert "<link" not in page and "src=" not in page  # nothing else to fetch


async def test_a_mounted_app_serves_the_demo_and_client_under_its_prefix() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    tw = TokenwireASGI()
    app = Starlette(routes=[Mount("/tw", app=tw)], lifespan=tw.lifespan)
    async with SERVERS["uvicorn"](app) as base, httpx.AsyncClient(base_url=base) as http:
        page = await http.get("/tw/")
        module = await http.get(str(httpx.URL(f"{base}/tw/").join("./v1/client.js")))
    assert page.content == DEMO_HTML.read_bytes()
    assert module.status_code == 200 and module.content == CLIENT_JS.read_bytes()


# -- CORS ------------------------------------------------------------------------------------------------


async def test_cors_is_off_by_default(front: Front) -> None:
    async with front() as base, httpx.AsyncClient(base_url=base) as http:
        pre = await http.options("/v1/streams", headers={"origin": APP, "access-control-request-method": "POST"})
        got = await http.get("/healthz", headers={"origin": APP})
    assert pre.status_code == 204 and pre.headers["allow"] == "POST, OPTIONS"
    assert not [h for h in (*pre.headers, *got.headers) if h.startswith("access-control-") or h == "vary"]


async def test_cors_preflight_and_requests_from_an_allowed_origin(front: Front) -> None:
    async with front(allow_origins=(APP, "http://localhost:3000")) as base, httpx.AsyncClient(base_url=base) as http:
        pre = await http.options(
            "/v1/streams",
            headers={
                "origin": APP,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, idempotency-key, last-event-id",
            },
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == APP
        assert pre.headers["access-control-allow-methods"] == "GET, POST, DELETE"
        assert pre.headers["access-control-allow-headers"] == (
            "content-type, last-event-id, idempotency-key, authorization"
        )
        assert pre.headers["access-control-max-age"] == "600"
        assert pre.headers["vary"] == "Origin"
        assert pre.headers.get_list("access-control-allow-origin") == [APP]  # once

        # The actual request: the stream's answer, readable headers included.
        body = {"prompt": "cors", "max_tokens": 3}
        async with http.stream("POST", "/v1/streams", json=body, headers={"origin": APP}) as r:
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == APP
            assert r.headers["access-control-expose-headers"] == EXPOSED
            stream_id = r.headers["x-tokenwire-stream-id"]
            text = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert b"event: done" in text

        # Error answers carry the grant too: the page reads the typed error.
        gone = await http.get("/v1/streams/nope/events", headers={"origin": APP})
        assert gone.status_code == 404 and gone.headers["access-control-allow-origin"] == APP
        cancelled = await http.delete(f"/v1/streams/{stream_id}", headers={"origin": "http://localhost:3000"})
        assert cancelled.headers["access-control-allow-origin"] == "http://localhost:3000"

        # Another origin gets no grant (the browser keeps the answer from its page), and caches are told.
        other = await http.options(
            "/v1/streams", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
        )
        plain = await http.get("/healthz", headers={"origin": "https://evil.example"})
        for answer in (other, plain):
            assert "access-control-allow-origin" not in answer.headers
            assert "access-control-allow-methods" not in answer.headers
            assert answer.headers["vary"] == "Origin"
        no_origin = await http.get("/healthz")
        assert "access-control-allow-origin" not in no_origin.headers


async def test_cors_any_origin(front: Front) -> None:
    async with front(allow_origins=("*",)) as base, httpx.AsyncClient(base_url=base) as http:
        pre = await http.options(
            "/v1/streams/abc/events", headers={"origin": "null", "access-control-request-method": "GET"}
        )
        got = await http.get("/v1/client.js", headers={"origin": "https://anyone.example"})
        # The same page loaded without Origin (same-origin, or through a cache): the same grant, so no answer
        # depends on Origin and none needs Vary: a cache may hand any of them to a page on any origin.
        plain = await http.get("/v1/client.js")
        error = await http.get("/v1/streams/nope/events")
    assert pre.headers["access-control-allow-origin"] == "*" and pre.headers["allow"] == "GET, OPTIONS"
    for answer in (got, plain, error):
        assert answer.headers["access-control-allow-origin"] == "*"
        assert answer.headers["access-control-expose-headers"] == EXPOSED
    assert not [a for a in (pre, got, plain, error) if "vary" in a.headers]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (make system-deps)")
async def test_a_request_refused_before_its_body_carries_the_grant(front: Front, tmp_path: Path) -> None:
    """413 for a body over the limit (``tokenwire serve`` answers it from the Content-Length, before the body):
    the page must read it as a typed error, so it carries the grant like every other answer. curl sends the
    body only after ``100 Continue``, so it reads the answer whichever comes first."""
    limit = 1 << 16
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"prompt": "x" * 4 * limit, "max_tokens": 2}))
    async with front(allow_origins=(APP,), http=HttpLimits(max_body_bytes=limit)) as base:
        done = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-s", "-D", "-", "-H", f"Origin: {APP}", "-H", "Content-Type: application/json",
             "-H", "Expect: 100-continue", "--data-binary", f"@{body}", f"{base}/v1/streams"],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
    head, _, answer = done.stdout.decode().rpartition("\r\n\r\n")
    status = head.rsplit("HTTP/1.1 ", 1)[-1]
    assert status.startswith("413"), head
    assert f"access-control-allow-origin: {APP}\r\n" in head.lower() + "\r\n"
    assert json.loads(answer)["error"]["status"] == 413


async def test_tokenwire_serve_grants_the_431_of_a_request_whose_origin_arrived() -> None:
    """The headers over the limit come after ``Origin``: the 431 names that origin's grant."""
    many = [("origin", APP)] + [(f"x-filler-{i}", "1") for i in range(80)]
    async with sse_server(allow_origins=(APP,)) as server, httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{server.port}/healthz", headers=many)
    assert r.status_code == 431
    assert r.headers["access-control-allow-origin"] == APP and r.headers["vary"] == "Origin"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (make system-deps)")
async def test_tokenwire_serve_allow_origin_with_curl() -> None:
    """``tokenwire serve --allow-origin``: curl's preflight and request, as a browser sends them."""
    async with serve_process("--allow-origin", APP, "--allow-origin", "http://LOCALHOST:80/") as url:

        def curl(*args: str) -> str:
            done = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", *args], capture_output=True, check=True)  # noqa: S603, S607
            return done.stdout.decode().lower()

        pre = await asyncio.to_thread(
            curl, "-X", "OPTIONS", f"{url}/v1/streams", "-H", f"Origin: {APP}",
            "-H", "Access-Control-Request-Method: POST", "-H", "Access-Control-Request-Headers: content-type",
        )  # fmt: skip
        assert pre.startswith("http/1.1 204")
        assert f"access-control-allow-origin: {APP}\r\n" in pre
        assert "access-control-allow-methods: get, post, delete\r\n" in pre
        post = await asyncio.to_thread(
            curl, f"{url}/v1/streams", "-H", "Origin: http://localhost", "-H", "Content-Type: application/json",
            "--data", '{"prompt": "x", "max_tokens": 2}',
        )  # fmt: skip
        assert post.startswith("http/1.1 200")
        assert "access-control-allow-origin: http://localhost\r\n" in post  # normalized: no default port
        assert f"access-control-expose-headers: {EXPOSED.lower()}\r\n" in post


def test_allowed_origins_are_checked_and_normalized(capsys: pytest.CaptureFixture[str]) -> None:
    assert ServerConfig(allow_origins=("HTTPS://App.Example:443/", "*")).allow_origins == (APP, "*")
    assert normalize_origin("http://[::1]:8000") == "http://[::1]:8000"
    for bad in ("app.example", "https://app.example/path", "ftp://x", "https://x:port", "https://u@x"):
        with pytest.raises(ValueError, match="scheme://host"):
            ServerConfig(allow_origins=(bad,))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--allow-origin", "https://app.example/path"])
    assert exit_info.value.code == 2
    assert "an allowed origin is scheme://host[:port] or *" in capsys.readouterr().err


# -- the certificate JSON: pin only a self-signed certificate -----------------------------------------------


def _ca_issued_certificate() -> Certificate:
    """A leaf for 127.0.0.1 signed by a CA made here (what ``--cert``/``--key`` usually load)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Certificate(leaf.public_bytes(serialization.Encoding.PEM), key_pem, None, None)


async def test_the_certificate_json_says_whether_to_pin_it(tmp_path: Path) -> None:
    dev = make_dev_certificate(directory=tmp_path)
    assert dev.self_signed
    assert dev.cert_path is not None and dev.key_path is not None
    # As `tokenwire serve --workers` hands its development certificate to each worker (--cert, --key).
    assert load_certificate(dev.cert_path, dev.key_path).self_signed
    issued = _ca_issued_certificate()
    assert not issued.self_signed
    async with sse_server() as sse, httpx.AsyncClient() as http:
        for certificate, pin in ((None, True), (issued, False)):
            async with wt_server(sse.hub, certificate=certificate) as wt:
                sse.webtransport = wt
                info = (await http.get(f"http://127.0.0.1:{sse.port}/v1/webtransport/certificate")).json()
                sse.webtransport = None
            assert info == {
                "url": wt.url,
                "sha256": wt.certificate.sha256_hex,
                "algorithm": "sha-256",
                "self_signed": pin,
            }
