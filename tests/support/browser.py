"""A real browser for tests that run the service in the test's reactor: headless Chromium driven by
Playwright's synchronous API on one thread of its own, so the reactor keeps serving while the
browser waits. ``await browser.run(fn)`` calls ``fn(page)`` on that thread.

Only loopback is reachable: every request to another host is aborted. Screenshots go to
``SMTPETER_ARTIFACTS`` (default ``test-artifacts/`` in the working directory), not committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from tests.support.chromium import _FLAGS, CHROMIUM

ARTIFACTS = Path(os.environ.get("SMTPETER_ARTIFACTS", "test-artifacts"))


class Browser:
    def __init__(self) -> None:
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="browser")
        self._pool.start()
        self.page: Any = None

    async def start(self) -> Browser:
        await self.run(lambda _: self._open())
        return self

    def _open(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=_FLAGS)
        self._context = self._browser.new_context(viewport={"width": 1200, "height": 900},
                                                  service_workers="block")
        self._context.route("**/*", _loopback_only)
        self.page = self._context.new_page()

    async def run(self, work: Callable[[Any], Any]) -> Any:
        return await deferToThreadPool(reactor, self._pool, work, self.page)

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.run(lambda page: page.screenshot(path=str(path), full_page=True))
        return path

    async def stop(self) -> None:
        def close(_: Any) -> None:
            try:
                self._browser.close()
            finally:
                self._playwright.stop()

        try:
            await self.run(close)
        finally:
            self._pool.stop()


def _loopback_only(route: Any) -> None:
    host = urlsplit(route.request.url).hostname or ""
    if host.startswith("127.") or host == "localhost":
        route.continue_()
    else:
        route.abort()
