"""Headless Firefox for tests: Debian's ``firefox-esr`` driven by Selenium through geckodriver.

Never a downloaded browser or driver: ``make system-deps`` installs ``firefox-esr`` (apt) and builds
geckodriver from crates.io into ``.cache/geckodriver`` (the npm and PyPI "geckodriver" packages download
binaries, which this machine cannot), and :func:`open_firefox` names both paths, so Selenium Manager is
never asked to fetch one.

Selenium is synchronous: every WebDriver call runs in :func:`asyncio.to_thread`, so servers running on
the test's own event loop keep serving while the browser waits on them. The session also speaks WebDriver
BiDi (``webSocketUrl``), which carries the page's console messages and uncaught errors to the test's log
as they happen; the commands themselves stay WebDriver classic, which geckodriver implements in full.

Firefox, unlike Chromium, shows JSON documents in its JSON viewer, and the viewer's page has a
``default-src 'none'`` CSP under which every ``fetch`` fails: it is turned off, so a test can start from a
JSON endpoint of the server's origin (such as ``/healthz``) as the Chromium tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, TimeoutException, WebDriverException
from selenium.webdriver.firefox.options import Options
from selenium.webdriver.firefox.service import Service

__all__ = ["FIREFOX", "FirefoxDriver", "PageScriptError", "geckodriver_path", "open_firefox"]

log = logging.getLogger("tests.browser")

FIREFOX = "/usr/bin/firefox-esr"
_ROOT = Path(__file__).resolve().parents[2]
#: Where ``make system-deps`` installs geckodriver (``cargo install geckodriver --root .cache/geckodriver``).
GECKODRIVER = _ROOT / ".cache" / "geckodriver" / "bin" / "geckodriver"

#: Preferences on top of those geckodriver sets for automation (remote.prefs.recommended).
PREFERENCES: dict[str, bool | int | str] = {
    # A JSON page in the viewer has a `default-src 'none'` CSP: every fetch from it fails (BROWSERS.md).
    "devtools.jsonview.enabled": False,
    # No proxy, whatever the environment says: the servers are on 127.0.0.1.
    "network.proxy.type": 0,
    # Off the network, which this machine closes: no captive-portal or connectivity probes, no safe
    # browsing lists, no telemetry, no remote settings.
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "services.settings.server": "data:,",
}

#: The viewport, as Playwright's default, so screenshots of both browsers compare.
VIEWPORT = (1280, 720)

#: How long :meth:`FirefoxDriver.run` lets a page function take before it fails with a timeout.
SCRIPT_TIMEOUT_S = 20.0

# What every `run` evaluates in the page's own realm: the source of an (async) function, called with the
# argument (JSON text, parsed there); `done` gets its result as JSON text (undefined: null), or what it threw.
# JSON text rather than the WebDriver serialisation, so the result is plain JSON, as the contract's `run` says.
_RUNNER = """(source, argJson, done) => {
  const fail = (e) => done(JSON.stringify({error: {
    name: (e && e.name) || typeof e, message: e && e.message !== undefined ? String(e.message) : String(e),
    stack: (e && e.stack) || ""}}));
  try {
    const fn = (0, eval)(`(${source})`);
    Promise.resolve()
      .then(() => (typeof fn === "function" ? fn(JSON.parse(argJson)) : fn))
      .then((value) => done(JSON.stringify({value: value === undefined ? null : value})))
      .catch(fail);
  } catch (e) {
    fail(e);
  }
}"""

# WebDriver's script runs in a sandbox of Marionette's, whose own global (`globalThis`) is thrown away after
# each call: a scenario's `globalThis.twt = ...` would be lost, `delete globalThis.WebTransport` would leave
# the page's, and the module a dynamic import loads would not be the page's. So the runner is compiled by
# the page's own `eval` (`window` is the page's window there) and runs as the page's code, as Playwright's
# `evaluate` does. (A page whose CSP forbids eval would need WebDriver BiDi's script.callFunction instead.)
_RUN = "const [runner, source, argJson, done] = arguments; window.eval(`(${runner})`)(source, argJson, done);"


class PageScriptError(Exception):
    """A page function threw (or its result was not JSON): ``name``, ``message`` and ``stack`` are the
    page's."""

    def __init__(self, name: str, message: str, stack: str) -> None:
        super().__init__(f"{name}: {message}" + (f"\n{stack}" if stack else ""))
        self.name = name
        self.message = message
        self.stack = stack


class FirefoxDriver:
    """One headless Firefox window; the contract's ``PageDriver`` (tests/support/drivers.py). The page's
    console and uncaught errors go to the test's log and to :attr:`console`, the evidence a failing test
    prints."""

    name = "firefox"

    def __init__(self, driver: webdriver.Firefox, script_timeout: float = SCRIPT_TIMEOUT_S) -> None:
        self.driver = driver
        self.script_timeout = script_timeout
        self.console: list[str] = []

    def _log(self, line: str, level: int = logging.INFO) -> None:
        log.log(level, "%s", line)
        self.console.append(line)  # list.append is atomic: BiDi events come on the websocket's thread

    async def goto(self, url: str) -> None:
        """Loads ``url`` and waits for its ``load`` event."""
        await asyncio.to_thread(self.driver.get, url)

    async def run(self, script: str, arg: object = None) -> Any:
        """Evaluates ``script``, the source of a function ``(arg) => ...`` (async or not), in the page, calls
        it with ``arg`` (JSON) and returns what it returns or resolves to, as JSON (``undefined``: None).
        Raises :class:`PageScriptError` with the page's error, or TimeoutError past the script timeout."""
        try:
            reply = await asyncio.to_thread(
                self.driver.execute_async_script, _RUN, _RUNNER, script, json.dumps(arg, allow_nan=False)
            )
        except TimeoutException as exc:
            raise TimeoutError(f"page function still running after {self.script_timeout} s: {script[:200]}") from exc
        except JavascriptException as exc:  # thrown before the function could run (the wrapper itself)
            raise PageScriptError("JavascriptException", exc.msg or "", "") from exc
        result = json.loads(reply)
        if "error" in result:
            error = result["error"]
            raise PageScriptError(error["name"], error["message"], error["stack"])
        return result["value"]

    async def reload(self) -> None:
        """Reloads the page (what a user's F5 does) and waits for its ``load`` event."""
        await asyncio.to_thread(self.driver.refresh)

    async def screenshot(self, path: Path) -> None:
        """A PNG of the whole page (beyond the viewport where it is taller), as Chromium's driver takes it."""
        png = await asyncio.to_thread(self.driver.get_full_page_screenshot_as_png)
        await asyncio.to_thread(path.write_bytes, png)

    @property
    def versions(self) -> dict[str, str]:
        """The browser's and geckodriver's versions, as the session reports them."""
        caps = self.driver.capabilities
        return {"firefox": caps["browserVersion"], "geckodriver": caps.get("moz:geckodriverVersion", "?")}


def geckodriver_path() -> str | None:
    """geckodriver from ``make system-deps`` (``.cache/geckodriver``), else one on ``PATH``, else None."""
    if os.access(GECKODRIVER, os.X_OK):
        return str(GECKODRIVER)
    return shutil.which("geckodriver")


@contextlib.asynccontextmanager
async def open_firefox(script_timeout: float = SCRIPT_TIMEOUT_S) -> AsyncIterator[FirefoxDriver]:
    """Debian's headless ``firefox-esr`` under geckodriver, one window at ``about:blank``, its console in the
    test's log (logger ``tests.browser``). Fails (not skips) when firefox-esr or geckodriver is missing."""
    if not os.access(FIREFOX, os.X_OK):
        pytest.fail(f"{FIREFOX} is missing: run `make system-deps` (Debian's firefox-esr package)", pytrace=False)
    gecko = geckodriver_path()
    if gecko is None:
        pytest.fail(
            f"geckodriver is missing (looked in {GECKODRIVER} and on PATH): run `make system-deps`, which builds it "
            "from crates.io (`cargo install geckodriver`)",
            pytrace=False,
        )
    options = Options()
    options.binary_location = FIREFOX
    options.add_argument("-headless")
    options.enable_bidi = True  # webSocketUrl: console messages as BiDi log events
    for name, value in PREFERENCES.items():
        options.set_preference(name, value)
    with tempfile.TemporaryDirectory(prefix="tokenwire-firefox-") as tmp:
        gecko_log = Path(tmp) / "geckodriver.log"
        service = Service(executable_path=gecko, log_output=str(gecko_log))
        try:
            driver = await asyncio.to_thread(webdriver.Firefox, options=options, service=service)
        except WebDriverException as exc:
            tail = gecko_log.read_text(errors="replace")[-4000:] if gecko_log.exists() else "(none)"
            pytest.fail(f"Firefox did not start: {exc.msg}\ngeckodriver's log:\n{tail}", pytrace=False)
        try:
            driver.set_script_timeout(script_timeout)
            await asyncio.to_thread(_set_viewport, driver)
            page = FirefoxDriver(driver, script_timeout)
            await asyncio.to_thread(_route_console, page)
            log.info("firefox %s, geckodriver %s", *page.versions.values())
            yield page
        finally:
            await asyncio.to_thread(_quit, driver)


def _quit(driver: webdriver.Firefox) -> None:
    """Quit; the BiDi log subscriptions go first (with them, quitting took about 11 s instead of 1 s)."""
    with contextlib.suppress(WebDriverException):
        driver.script.clear_console_handlers()
        driver.script.clear_error_handlers()
    driver.quit()


def _set_viewport(driver: webdriver.Firefox) -> None:
    """The window sized so its viewport (what a screenshot shows) is :data:`VIEWPORT`: headless Firefox keeps the
    toolbars' height inside the window's size."""
    width, height = VIEWPORT
    extra_w, extra_h = driver.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
    driver.set_window_size(width + extra_w, height + extra_h)


def _route_console(page: FirefoxDriver) -> None:
    """The page's console messages and uncaught errors to :meth:`FirefoxDriver._log`, over BiDi
    (log.entryAdded)."""
    script = page.driver.script
    script.add_console_handler(lambda m: page._log(f"console.{m.level}: {m.text}"))
    script.add_error_handler(
        lambda e: page._log(f"page error: {e.message} at {e.source}:{e.line_number}", logging.ERROR)
    )
