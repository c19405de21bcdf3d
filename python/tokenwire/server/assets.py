"""The browser files the servers serve: the client module (``GET /v1/client.js``) and the demo page (``GET /``).

Their source of truth is the repository's top-level ``js/`` folder (``js/src/client.js``, ``js/demo/index.html``);
``python/tokenwire/web/`` holds symbolic links to them, which the wheel build follows, so an installed
package carries the files themselves and serving them needs no Node. An editable install reads them through
the links.

Each file is read once, on its first request. It is answered with a strong ``ETag`` (a hash of its bytes) and
``Cache-Control: no-cache``: the URLs carry no version, so a browser revalidates every time and gets a 304 with
no body while its copy is current (``If-None-Match``, weak comparison as RFC 9110 §13.1.2 says).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from tokenwire.protocol.http1 import HttpError

__all__ = ["ASSETS", "Asset", "asset", "not_modified"]

#: Route name -> (file under ``tokenwire/web/``, Content-Type).
ASSETS: dict[str, tuple[str, str]] = {
    "client": ("client.js", "text/javascript; charset=utf-8"),
    "demo": ("index.html", "text/html; charset=utf-8"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file's bytes and the headers of every answer that carries them (200, HEAD and 304)."""

    body: bytes
    content_type: str
    etag: str

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The validator and caching headers, besides Content-Type and Content-Length."""
        return [("ETag", self.etag), ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")]


@functools.cache
def asset(route: str) -> Asset:
    """The file of ``route`` (``client`` or ``demo``); 404 when this installation lacks it (a checkout whose
    ``js/`` folder has not got it)."""
    name, content_type = ASSETS[route]
    try:
        body = resources.files("tokenwire").joinpath("web").joinpath(name).read_bytes()
    except OSError:
        raise HttpError(404, f"{name} is not installed with this tokenwire (python/tokenwire/web/{name})") from None
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Asset(body, content_type, f'"{digest}"')


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (weak comparison; ``*`` matches any current file)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
