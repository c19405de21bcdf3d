"""The browser examples of README.md and docs/client.md run as written, in each browser of the suite.

Each ``html`` block is written into a page of the server's own origin (``document.write``, so its module
script runs as the block has it, ``import ... from "/v1/client.js"`` included); the test waits for the answer in
``#out`` and checks it against the model's text, that the model ran once, and that a reload of the same tab
(the examples keep the answer with ``persist``) shows it again without a second generation.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.client_rig import rig
from tests.support.drivers import PageDriver

pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(60)]

ROOT = Path(__file__).parent.parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "client.md")

WRITE_PAGE = """async (html) => {
  document.open();
  document.write(html);
  document.close();
  return true;
}"""

OUT = "async () => document.getElementById('out')?.textContent ?? null"


def html_examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```html\n(.*?)```", doc.read_text(), flags=re.DOTALL)):
            found.append((f"{doc.name}#{i}", block))
    return found


EXAMPLES = html_examples()


async def test_the_docs_have_browser_examples() -> None:
    assert [name for name, _ in EXAMPLES] == ["README.md#0", "client.md#0"]


@pytest.mark.parametrize(("name", "html"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
async def test_browser_example_runs_as_written(driver: PageDriver, name: str, html: str) -> None:
    prompt = re.search(r'prompt: "([^"]*)"', html)
    max_tokens = re.search(r"max_tokens: (\d+)", html)
    assert prompt and max_tokens, f"{name}: no prompt or max_tokens to check the answer against"
    async with rig() as r:
        expected = r.model.text(prompt[1], int(max_tokens[1]))
        page = f"{r.origin}/healthz"
        await driver.goto(page)
        await driver.run("async () => sessionStorage.clear()")
        await driver.run(WRITE_PAGE, html)
        seen: list[str | None] = []

        async def answered() -> bool:
            seen.append(await driver.run(OUT))
            return seen[-1] == expected

        await poll(answered, f"{name}: the whole answer in #out (last seen: {seen[-1:]!r})")
        assert r.model.calls == 1
        # A reload of the tab: the example restores the kept answer (ended: nothing more to read).
        await driver.goto(page)
        await driver.run(WRITE_PAGE, html)
        await poll(answered, f"{name}: the answer again after a reload")
        assert r.model.calls == 1


async def poll(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 15.0) -> None:
    """Wait for an async ``condition``, checked every 50 ms (the rig's ``until`` takes a synchronous one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)
