"""A clock that runs with the real reactor but can be moved forward, for retries and expiry."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor


class ShiftedClock:
    """``seconds()`` is the reactor's time plus an offset that tests advance.

    Timers still run on the real reactor (so sockets and commits work); only
    "now" as the code under test sees it jumps ahead.
    """

    def __init__(self, base: Any = reactor) -> None:
        self._base = base
        self.offset = 0.0

    def seconds(self) -> float:
        return self._base.seconds() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def callLater(self, delay: float, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._base.callLater(delay, fn, *args, **kwargs)

    def getDelayedCalls(self) -> list:
        return self._base.getDelayedCalls()
