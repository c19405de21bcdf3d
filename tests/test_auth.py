"""``tokenwire.auth``: bearer tokens, API keys, authenticators, and the 401 answer's body and headers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire.auth import ApiKeys, Authenticator, AuthRequest, authenticate, bearer_token, principal_from
from tokenwire.errors import HubFull, StreamNotFound, Unauthorized, error_body, error_headers, status_of

KEYS = ["alpha-key-0123456789", "beta~key/+=", "g" * 64]
visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)


def req(
    authorization: str | None = None,
    query: dict[str, str] | None = None,
    transport: Literal["http", "webtransport"] = "http",
) -> AuthRequest:
    headers = {} if authorization is None else {"authorization": authorization}
    return AuthRequest(headers, query or {}, transport)


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("  Bearer abc", "abc"),
        ("Basic YWxhZGRpbjpvcGVu", None),
        ("Bearer", None),
        ("Bearer    ", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_the_bearer_token_of_the_authorization_header(authorization: str | None, token: str | None) -> None:
    assert bearer_token(req(authorization)) == token
    assert req(authorization).token == token


def test_the_query_token_counts_on_a_webtransport_connect_only() -> None:
    query = {"access_token": "q-token"}
    assert bearer_token(req(query=query)) is None  # plain HTTP: a token in a URL is not taken
    assert bearer_token(req(query=query, transport="webtransport")) == "q-token"
    assert bearer_token(req(query={"access_token": " "}, transport="webtransport")) is None
    # The header wins over the query.
    assert bearer_token(req("Bearer h-token", query, transport="webtransport")) == "h-token"


def test_api_keys_accept_each_key_as_its_own_principal_and_refuse_the_rest() -> None:
    keys = ApiKeys(KEYS)
    principals = [keys(req(f"Bearer {k}")) for k in KEYS]
    assert principals == [ApiKeys.principal_of(k) for k in KEYS]
    assert len(set(principals)) == len(KEYS)
    for key, principal in zip(KEYS, principals, strict=True):
        assert principal is not None
        assert principal == "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        assert key not in principal
    assert keys(req("Bearer " + KEYS[0] + "x")) is None
    assert keys(req("Bearer " + KEYS[0][:-1])) is None
    assert keys(req()) is None
    assert keys(req(query={"access_token": KEYS[1]}, transport="webtransport")) == principals[1]
    assert keys(req(query={"access_token": KEYS[1]})) is None  # the query form is WebTransport's
    assert "alpha" not in repr(keys) and "3 keys" in repr(keys)
    assert len(ApiKeys([*KEYS, KEYS[0]])) == 3  # a repeated key is one key


def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first key, the last, and none all take one comparison per key."""
    keys = ApiKeys(KEYS)
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for token in (KEYS[0], KEYS[-1], "nobody"):
        calls.clear()
        keys(req(f"Bearer {token}"))
        assert len(calls) == len(KEYS)


@given(st.lists(visible, min_size=1, max_size=5, unique=True), visible)
def test_a_token_is_accepted_exactly_when_it_is_a_key(keys: list[str], token: str) -> None:
    principal = ApiKeys(keys)(req(f"Bearer {token}"))
    assert (principal is not None) == (token in keys)
    if principal is not None:
        assert principal == ApiKeys.principal_of(token)


@pytest.mark.parametrize("bad", ["", "has space", "tab\tkey", "é-key", "x" * 4097])
def test_a_key_that_cannot_be_a_bearer_token_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="API key"):
        ApiKeys([bad])


def test_no_keys_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no API keys"):
        ApiKeys([])


def test_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# team keys\n\n  alpha-key-0123456789  \n#beta~key/+= (revoked)\ng" + "g" * 63 + "\n")
    keys = ApiKeys.from_file(path)
    assert len(keys) == 2
    assert keys(req("Bearer alpha-key-0123456789")) == ApiKeys.principal_of("alpha-key-0123456789")
    assert keys(req("Bearer beta~key/+=")) is None  # commented out
    assert keys(req("Bearer " + "g" * 64)) is not None


def test_a_bad_key_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("good-key\nkey # an inline comment is not one\n")
    with pytest.raises(ValueError, match=r"keys\.txt, line 2: .*without spaces"):
        ApiKeys.from_file(path)
    path.write_text("# only comments\n\n")
    with pytest.raises(ValueError, match="holds no API key"):
        ApiKeys.from_file(path)
    with pytest.raises(OSError):
        ApiKeys.from_file(tmp_path / "missing.txt")


def test_authenticate_sync_and_async_authenticators() -> None:
    def sync(request: AuthRequest) -> str | None:
        return {"a": "alice"}.get(request.token or "")

    async def later(request: AuthRequest) -> str | None:
        await asyncio.sleep(0)
        return {"b": "bob"}.get(request.token or "")

    async def run(auth: Authenticator, request: AuthRequest) -> str:
        return await authenticate(auth, request)

    assert asyncio.run(run(sync, req("Bearer a"))) == "alice"
    assert asyncio.run(run(later, req("Bearer b"))) == "bob"
    with pytest.raises(Unauthorized) as missing:
        asyncio.run(run(later, req()))
    assert not missing.value.invalid and "Authorization: Bearer" in str(missing.value)
    assert missing.value.challenge == 'Bearer realm="tokenwire"'
    with pytest.raises(Unauthorized) as refused:
        asyncio.run(run(sync, req("Bearer wrong-token")))
    assert refused.value.invalid and "wrong-token" not in str(refused.value)
    assert refused.value.challenge == 'Bearer realm="tokenwire", error="invalid_token"'


def test_the_missing_credentials_message_names_the_query_form_on_webtransport() -> None:
    with pytest.raises(Unauthorized, match=r"\?access_token=<key> on the CONNECT"):
        principal_from(None, req(transport="webtransport"))
    with pytest.raises(Unauthorized) as http:
        principal_from(None, req())
    assert "access_token" not in str(http.value)


@pytest.mark.parametrize("bad", ["", "x" * 257, 42, b"alice", True])
def test_an_authenticator_returning_something_else_is_its_own_fault(bad: object) -> None:
    with pytest.raises(TypeError, match="authenticator returns None or a principal"):
        principal_from(bad, req("Bearer t"))


def test_the_401_answer_body_and_challenge() -> None:
    exc = Unauthorized("the credentials were refused", invalid=True)
    status = status_of(exc)
    assert status == 401
    assert error_body(exc, status) == {
        "error": {
            "type": "Unauthorized",
            "message": "the credentials were refused",
            "status": 401,
            "code": "unauthorized",
        }
    }
    assert error_headers(exc, status) == [("WWW-Authenticate", 'Bearer realm="tokenwire", error="invalid_token"')]


def test_error_headers_of_other_answers() -> None:
    assert error_headers(HubFull("full"), 503) == [("Retry-After", "1")]
    assert error_headers(StreamNotFound("gone"), 404) == []
    body = error_body(StreamNotFound("gone"), 404)["error"]
    assert isinstance(body, dict) and "code" not in body
