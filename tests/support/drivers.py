"""One interface to every real browser the tests drive: a page that runs JavaScript and hands back JSON.

A browser scenario is page-side JavaScript (an ``async (arg) => {...}`` source) run through
:meth:`PageDriver.run`; it returns plain JSON that the Python test asserts on. So the same scenario runs
unchanged in every browser: Chromium here (Playwright, :mod:`tests.support.browser`), Firefox in
:mod:`tests.support.firefox` (Selenium, synchronous: it runs its calls in a thread so that the servers on
the test's loop keep serving).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from playwright.async_api import Browser, Page

from tests.support.browser import chromium

__all__ = ["BROWSERS", "ChromiumDriver", "PageDriver", "open_driver"]

log = logging.getLogger("tests.browser")

#: Every browser a scenario may run in; a suite parametrized over it gains a browser by its name alone.
BROWSERS = ("chromium", "firefox")


class PageDriver(Protocol):
    """One page of a real browser."""

    #: ``"chromium"`` or ``"firefox"``.
    name: str

    async def goto(self, url: str) -> None:
        """Load ``url`` in the page (a new document: nothing of the previous page's scripts survives)."""
        ...

    async def run(self, script: str, arg: object = None) -> Any:
        """Evaluate ``script``, the source of an ``async (arg) => {...}`` function, in the page with ``arg``
        (JSON); its result, awaited and as JSON."""
        ...

    async def reload(self) -> None:
        """Reload the page, as its user would (``sessionStorage`` survives; the scripts do not)."""
        ...

    async def screenshot(self, path: Path) -> None:
        """A PNG of what the page shows, to ``path``."""
        ...


class ChromiumDriver:
    """A page of Debian's headless Chromium under Playwright, in a browser context of its own. The page's
    console and errors go to the test's log and to :attr:`console`, the evidence a failing test prints."""

    name = "chromium"

    def __init__(self, browser: Browser) -> None:
        self._browser = browser
        self._page: Page | None = None
        self.console: list[str] = []

    async def _open(self) -> Page:
        context = await self._browser.new_context()
        page = await context.new_page()
        page.on("console", lambda m: self._log(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda exc: self._log(f"page error: {exc}"))
        self._page = page
        return page

    def _log(self, line: str) -> None:
        log.info("%s", line)
        self.console.append(line)

    @property
    def page(self) -> Page:
        if self._page is None:
            raise RuntimeError("no page yet: call goto() first")
        return self._page

    async def goto(self, url: str) -> None:
        page = self._page or await self._open()
        await page.goto(url)

    async def run(self, script: str, arg: object = None) -> Any:
        return await self.page.evaluate(script, arg)

    async def reload(self) -> None:
        await self.page.reload()

    async def screenshot(self, path: Path) -> None:
        await self.page.screenshot(path=str(path), full_page=True)

    async def close(self) -> None:
        if self._page is not None:
            await self._page.context.close()
            self._page = None


@contextlib.asynccontextmanager
async def open_driver(name: str) -> AsyncIterator[PageDriver]:
    """A page of browser ``name`` (one browser process for the driver's lifetime); ``"firefox"`` comes from
    :mod:`tests.support.firefox`."""
    if name == "chromium":
        async with chromium() as browser:
            driver = ChromiumDriver(browser)
            try:
                yield driver
            finally:
                await driver.close()
    elif name == "firefox":
        firefox = importlib.import_module("tests.support.firefox")  # selenium only where Firefox runs
        async with firefox.open_firefox() as page:
            yield page
    else:
        raise ValueError(f"no driver for browser {name!r}; known: {', '.join(BROWSERS)}")
