"""The load test's HTML report opened in headless Chromium, offline: the file alone draws the table and every plot.

The page is the one a real ``tokenwire loadtest --compare sse,webtransport --impair ... --report`` run wrote (the
session's ``real_compare`` fixture: ``tokenwire serve`` in a subprocess, 12 streams over each protocol through the
impairing relays). It is opened from a ``file://`` URL with every other request aborted (and recorded: there must be none).
The test checks the table and each plot's ``<svg>`` are visible with a real size, the console stays clean, and the
screenshot is not blank; each plot's own screenshot must show its protocols' colours, so a plot that renders as
an empty frame fails. The full-page screenshot is kept at ``/tmp/tokenwire-report-page.png`` to look at.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy
import pytest
from PIL import Image, ImageStat
from playwright.async_api import Browser, ConsoleMessage, Request, Route

from tests.support.compare_report import PAGE_IDS, PLOT_IDS, RealRun

pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(120)]

SCREENSHOT = Path(tempfile.gettempdir()) / "tokenwire-report-page.png"
#: The protocols' line and bar colours in the plots (tokenwire.loadtest.html._PROTOCOL_COLOURS).
COLOURS = {"sse": (0x3B, 0x6F, 0xB6), "webtransport": (0x1B, 0x9E, 0x77)}


def _has_colour(png: bytes, rgb: tuple[int, int, int], tolerance: int = 40, at_least: int = 30) -> bool:
    """At least ``at_least`` pixels within ``tolerance`` (per channel) of ``rgb``: antialiasing and alpha blur the
    exact colour."""
    pixels = numpy.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=numpy.int16)
    near = (numpy.abs(pixels - numpy.array(rgb, dtype=numpy.int16)) <= tolerance).all(axis=2)
    return int(near.sum()) >= at_least


def _variance(png: bytes) -> float:
    return float(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).var[0])


async def test_the_report_opens_offline_with_the_table_and_every_plot(
    chromium_browser: Browser, real_compare: RealRun
) -> None:
    report = real_compare.report()
    path = real_compare.html_path

    context = await chromium_browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    outside: list[str] = []
    problems: list[str] = []

    async def block(route: Route, request: Request) -> None:
        if request.url.startswith("file://"):
            await route.continue_()
        else:
            outside.append(request.url)
            await route.abort()

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console.{message.type}: {message.text}")

    try:
        await context.route("**/*", block)
        page = await context.new_page()
        page.on("console", on_console)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        await page.goto(path.as_uri())
        await page.wait_for_load_state("load")

        for element_id in PAGE_IDS:
            box = await page.locator(f"#{element_id}").bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 100, (element_id, box)
            assert await page.locator(f"#{element_id}").is_visible()
        rows = await page.locator("#summary tbody tr").count()
        assert rows == len(report["summary"])
        header = await page.locator("#summary thead tr").first.inner_text()
        assert all(p in header for p in report["protocols"])

        for plot in PLOT_IDS:
            svg = page.locator(f"#{plot} svg")
            assert await svg.count() == 1
            box = await svg.bounding_box()
            assert box is not None and box["width"] > 600 and box["height"] > 200, (plot, box)
            shot = await svg.screenshot()
            assert _variance(shot) > 100, f"{plot} looks blank"
            for protocol in report["protocols"]:
                assert _has_colour(shot, COLOURS[protocol]), f"{plot} draws nothing in {protocol}'s colour"
        # The event strip's labels and the timeline's legend are drawn as text the browser lays out.
        assert await page.locator("#plot-lag-time svg text", has_text="forced_cut").count() >= 2
        assert await page.locator("#plot-timeline svg text", has_text="failed stream").count() == 1

        # The Runs table: each protocol's column shows the relay it went through (SSE: TCP, WebTransport: UDP).
        for counter in ("handshakes", "stalls", "datagrams_up", "dropped_down"):
            assert await page.locator("#config table.nested th", has_text=counter).count() == 1, counter
        for via in ("TCP relay", "UDP relay"):
            assert await page.locator("#config table.nested td", has_text=via).count() == 1, via

        full = await page.screenshot(full_page=True, path=SCREENSHOT)
        width, height = Image.open(io.BytesIO(full)).size
        assert width >= 1280 and height > 3000
        assert _variance(full) > 200, "the page screenshot is blank"
    finally:
        await context.close()
    assert outside == [], "the report asked the network for something"
    assert problems == []
