"""The console modules' browser fixtures; each module brings its own ``platform`` and ``api`` fixtures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.helpers import Console, chromium, in_ci, launch, new_console, require_browser

with contextlib.suppress(ImportError):  # a missing Playwright is reported by require_browser
    from playwright.sync_api import Browser, sync_playwright


@pytest.fixture(scope="module")
def browser(api: str) -> Iterator[Browser]:
    """Chromium for one module, started after its platform (through ``api``) and closed before it stops.

    Playwright's sync API marks an event loop as running in this thread while it is open, and
    Platform.start uses asyncio.run: so one browser per module, not one per session.
    """
    exe = chromium()
    require_browser(exe, in_ci())
    with sync_playwright() as pw:
        b = launch(pw, exe)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_console(browser: Browser) -> Iterator[Callable[..., Console]]:
    """Opens consoles (``locale`` as the browser's) on the module's browser; all closed after the test."""
    opened: list[Console] = []

    def open_(locale: str = "en-US") -> Console:
        c = new_console(browser, locale)
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.context.close()
