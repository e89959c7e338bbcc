"""Headless Chromium for the tests that need a real browser: Debian's `chromium`
(./scripts/test installs it), driven by Playwright for Python through
executable_path (Playwright's own browser download is never used).

    from tests.browser import browser  # noqa: F401   (then a `browser` parameter)

`watch_frames(page)` checks every WebSocket frame the page receives against the
schema, as the suite's Python clients do.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.frames import SENT_FRAMES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            await chromium.close()


def watch_frames(page: Any) -> None:
    def on_socket(ws: Any) -> None:
        def received(payload: str | bytes) -> None:
            SENT_FRAMES.check(json.loads(payload), payload)

        ws.on("framereceived", received)

    page.on("websocket", on_socket)


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh page in its own context; an uncaught error in the page's scripts
    fails the test that used it."""
    context = await browser.new_context()
    new_page = await context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield new_page
    finally:
        await context.close()
    assert not errors, f"the page threw: {errors}"
