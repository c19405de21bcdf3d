"""The browser-client tests' page: one browser per module, per browser name of :data:`BROWSERS`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser

from tests.support.browser import chromium
from tests.support.drivers import BROWSERS, PageDriver, open_driver


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BROWSERS)
async def driver(request: Any) -> AsyncIterator[PageDriver]:
    """One page of one browser for the whole module: a scenario runs unchanged in each browser listed."""
    async with open_driver(request.param) as d:
        yield d


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium_browser() -> AsyncIterator[Browser]:
    """Headless Chromium for the whole module (its tests run on the module's loop)."""
    async with chromium() as b:
        yield b
