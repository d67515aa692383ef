"""A pause in a background loop that ends when its time is up or when someone wakes it early."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime


class Pause:
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._sleep: defer.Deferred | None = None

    async def wait(self, seconds: float) -> None:
        """Return after ``seconds``, or sooner at ``end()``."""
        self._sleep = defer.Deferred()
        timer = self.clock.callLater(seconds, self.end)
        try:
            await self._sleep
        finally:
            if timer.active():
                timer.cancel()

    def end(self) -> None:
        """End the pause now (nothing happens if none is under way)."""
        if self._sleep is not None:
            sleep, self._sleep = self._sleep, None
            sleep.callback(None)
