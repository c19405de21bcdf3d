"""Who may use the endpoints: the credentials of a request, and the principal they stand for. Sans-I/O.

An :data:`Authenticator` is any callable that takes an :class:`AuthRequest` and returns the *principal* (a
non-empty string naming who asks) or ``None`` to refuse; it may be a coroutine function, for checks that wait
on something (a database, an identity provider). :class:`ApiKeys` is the one ``tokenwire serve --api-key``
uses: a static list of bearer tokens, each its own principal.

The servers ask the authenticator once per HTTP request on the ``/v1`` routes and once per WebTransport
session (its CONNECT); a refusal is 401 with the JSON error body of docs/protocol.md §4.2 (``type``
``Unauthorized``, ``code`` ``unauthorized``) and ``WWW-Authenticate: Bearer``. A stream remembers the
principal that started it, and only that principal may resume or cancel it (docs/protocol.md §8).

Example (a custom check; ``tokenwire.server.ServerOptions(auth=...)`` takes either)::

    import asyncio

    from tokenwire.auth import ApiKeys, AuthRequest, authenticate

    keys = ApiKeys(["s3cr3t-key-1", "s3cr3t-key-2"])
    assert keys(AuthRequest({"authorization": "Bearer s3cr3t-key-1"})) == ApiKeys.principal_of("s3cr3t-key-1")
    assert keys(AuthRequest({"authorization": "Bearer nope"})) is None

    TEAMS = {"team-a-token": "team-a"}


    async def by_team(request: AuthRequest) -> str | None:
        await asyncio.sleep(0)  # e.g. ask an identity provider
        return TEAMS.get(request.token or "")


    ok = AuthRequest({}, {"access_token": "team-a-token"}, transport="webtransport")
    assert asyncio.run(authenticate(by_team, ok)) == "team-a"
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from tokenwire.errors import Unauthorized

__all__ = [
    "ApiKeys",
    "AuthRequest",
    "Authenticator",
    "Unauthorized",
    "authenticate",
    "bearer_token",
    "check",
    "principal_from",
    "read_key_file",
]

#: The query parameter that carries the token on a WebTransport CONNECT (RFC 6750 §2.3 names it so): a browser
#: cannot set headers on the CONNECT.
ACCESS_TOKEN_PARAM = "access_token"  # noqa: S105 - a parameter name, not a secret
#: The longest principal an authenticator may return (it is stored with every stream it starts).
MAX_PRINCIPAL_LEN = 256


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What an authenticator sees of a request.

    ``headers``: the request's headers, lower-case names (on WebTransport: the CONNECT's). ``query``: its query
    parameters. ``transport``: ``"http"`` (SSE, ASGI) or ``"webtransport"`` (the session's CONNECT). ``path``:
    the request path without its query, for checks that depend on the route. Its ``repr`` leaves out headers and
    query (they hold the credentials), so an authenticator may log it.
    """

    headers: Mapping[str, str] = field(repr=False)
    query: Mapping[str, str] = field(default_factory=dict, repr=False)
    transport: Literal["http", "webtransport"] = "http"
    path: str = ""

    @property
    def token(self) -> str | None:
        """The bearer token it carries (:func:`bearer_token`)."""
        return bearer_token(self)


#: A check of a request's credentials: the principal, or ``None`` to refuse (401). Sync or async.
Authenticator: TypeAlias = Callable[[AuthRequest], str | Awaitable[str | None] | None]


def bearer_token(request: AuthRequest) -> str | None:
    """The bearer token of ``request``: ``Authorization: Bearer <token>`` (the scheme in any case), else, on a
    WebTransport CONNECT only, the ``?access_token=`` query parameter; ``None`` when it carries neither (or an
    empty one). The header wins over the query."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.transport == "webtransport":
        return request.query.get(ACCESS_TOKEN_PARAM, "").strip() or None
    return None


def principal_from(result: object, request: AuthRequest) -> str:
    """The principal of an authenticator's ``result`` (awaited already); ``Unauthorized`` for ``None``.

    ``TypeError`` for anything but ``None`` or a string of 1 to :data:`MAX_PRINCIPAL_LEN` characters: the
    authenticator is at fault, not the client (the server answers 500)."""
    if result is None:
        token = bearer_token(request)
        if token is None:
            how = "Authorization: Bearer <key>"
            if request.transport == "webtransport":
                how += f" or ?{ACCESS_TOKEN_PARAM}=<key> on the CONNECT"
            raise Unauthorized(f"credentials required: send {how}")
        raise Unauthorized("the credentials were refused", invalid=True)
    if not isinstance(result, str) or not 0 < len(result) <= MAX_PRINCIPAL_LEN:
        raise TypeError(
            f"an authenticator returns None or a principal of 1 to {MAX_PRINCIPAL_LEN} characters, got {result!r:.80}"
        )
    return result


def check(auth: Authenticator, request: AuthRequest) -> str | Awaitable[str]:
    """Ask ``auth`` about ``request``: the principal at once from a sync authenticator (``Unauthorized`` when it
    refuses), or, from an async one, an awaitable of it, for a caller that must not wait here (a protocol
    callback) to await in a task of its own."""
    result = auth(request)
    if inspect.isawaitable(result):
        return _principal_later(result, request)
    return principal_from(result, request)


async def _principal_later(result: Awaitable[str | None], request: AuthRequest) -> str:
    return principal_from(await result, request)


async def authenticate(auth: Authenticator, request: AuthRequest) -> str:
    """Ask ``auth`` about ``request`` (awaiting it if it is async): the principal, or ``Unauthorized``."""
    verdict = check(auth, request)
    return verdict if isinstance(verdict, str) else await verdict


class ApiKeys:
    """A static list of API keys, sent as bearer tokens; each key is its own principal,
    ``key:`` + the first 12 hex digits of its SHA-256 (:meth:`principal_of`), so the key itself is never
    stored with a stream or written to a log.

    Keys are 1 to 4,096 visible ASCII characters, no spaces (``ValueError`` otherwise). A presented token is
    compared with every key, each in constant time (``hmac.compare_digest`` over SHA-256 digests), so the answer
    takes as long whichever key, or none, it matches.
    """

    __slots__ = ("_digests",)

    MAX_KEY_LEN = 4096

    def __init__(self, keys: Iterable[str]) -> None:
        digests: dict[bytes, str] = {}
        principals: set[str] = set()
        for key in keys:
            _check_key(key)
            digest = hashlib.sha256(key.encode("ascii")).digest()
            if digest in digests:
                continue
            principal = "key:" + digest.hex()[:12]
            if principal in principals:  # two keys 48 bits apart: they would share streams
                raise ValueError("two API keys have the same principal (the first 12 hex digits of their SHA-256)")
            principals.add(principal)
            digests[digest] = principal
        if not digests:
            raise ValueError("no API keys given")
        self._digests = tuple(digests.items())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ApiKeys:
        """The keys of a text file (:func:`read_key_file`)."""
        return cls(read_key_file(path))

    @staticmethod
    def principal_of(key: str) -> str:
        """The principal a key stands for: ``key:`` + the first 12 hex digits of its SHA-256."""
        return "key:" + hashlib.sha256(key.encode("ascii")).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self._digests)

    def __call__(self, request: AuthRequest) -> str | None:
        token = bearer_token(request)
        if token is None:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for digest, principal in self._digests:  # every key, matched or not: no early exit
            if hmac.compare_digest(presented, digest):
                found = principal
        return found

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"  # never the keys


def read_key_file(path: str | os.PathLike[str]) -> list[str]:
    """The API keys of a text file: one a line, blank lines and lines starting with ``#`` skipped, spaces around
    a key ignored. ``OSError`` when it cannot be read; ``ValueError`` (naming the file and line) for a line that
    is not a key, or a file without any."""
    keys: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                _check_key(text)
            except ValueError as exc:
                raise ValueError(f"{os.fspath(path)}, line {number}: {exc}") from None
            keys.append(text)
    if not keys:
        raise ValueError(f"{os.fspath(path)} holds no API key")
    return keys


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= ApiKeys.MAX_KEY_LEN:
        raise ValueError(f"an API key is a string of 1 to {ApiKeys.MAX_KEY_LEN} characters")
    if not all("!" <= c <= "~" for c in key):
        raise ValueError("an API key is visible ASCII characters without spaces")
