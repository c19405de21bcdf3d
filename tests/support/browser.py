"""Headless Chromium for tests: Debian's ``chromium`` package driven by Playwright for Python.

Never a downloaded browser: Playwright launches ``/usr/bin/chromium`` (``make system-deps`` installs it),
so ``playwright install`` is never run. WebTransport exists only in a secure context, and neither
``about:blank`` nor a ``data:`` URL is one, so a page must come from a potentially trustworthy origin such
as ``http://127.0.0.1:PORT``: :func:`page_server` serves a blank page there, or a test navigates to a
server of its own (same origin, so ``EventSource`` needs no CORS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium", "new_page", "page_server"]

log = logging.getLogger("tests.browser")

CHROMIUM = "/usr/bin/chromium"

#: On top of Playwright's default switches (headless, and already --disable-background-networking,
#: --disable-component-update, --no-first-run). --no-sandbox: Chromium's sandbox refuses to start as root.
#: The rest keep Chromium off the network, which this machine closes: without them it tries Google's hosts
#: at every start. WebTransport needs no flag: a certificate pinned by ``serverCertificateHashes`` is
#: enough (no --origin-to-force-quic-on, no --ignore-certificate-errors-spki-list), and even --disable-quic
#: leaves WebTransport working (it only turns off QUIC for HTTP).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

BLANK_PAGE = b'<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head></html>'


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's headless Chromium under Playwright; fails (not skips) when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (Debian's chromium package)", pytrace=False)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def new_page(browser: Browser, url: str) -> AsyncIterator[Page]:
    """A page in a fresh context, at ``url``; its console and errors go to the test's log."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        page.on("console", _log_console)
        page.on("pageerror", lambda exc: log.error("page error: %s", exc))
        await page.goto(url)
        yield page
    finally:
        await context.close()


def _log_console(message: ConsoleMessage) -> None:
    log.info("console.%s: %s", message.type, message.text)


@contextlib.asynccontextmanager
async def page_server(body: bytes = BLANK_PAGE) -> AsyncIterator[str]:
    """Serves ``body`` as HTML at every path of ``http://127.0.0.1:PORT`` (a secure context); yields that
    origin. HTTP/1.1, one response per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
