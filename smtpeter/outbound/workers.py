"""Where the outbound steps run: worker processes, off the reactor and on the other cores.

Measured on the 2-core VM (a Python thread spinning beside the step, its
speed kept): css-inline 15% (it holds the GIL), our MIME code 46% (pure
Python), lxml 84% (it releases the GIL). Most steps would stall the reactor
from a thread about as much as from the reactor itself, so they run in
processes: ``delivery.transform_workers`` of them (default: one per core
beside the reactor's). With 0, they run in the reactor's thread pool.

At most twice as many calls as workers are in work or waiting in the pool at once;
the rest wait here, holding only references to data the scheduler holds anyway.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

log = Logger()


def default_worker_count() -> int:
    """One process per core that the reactor does not occupy, at least one."""
    return max(1, (os.cpu_count() or 2) - 1)


class Workers:
    def __init__(self, reactor: Any, processes: int) -> None:
        self.reactor = reactor
        self.processes = processes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._turns = defer.DeferredSemaphore(max(2, 2 * processes))

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``fn(*args)`` in a worker; ``fn`` and the arguments must pickle (module-level functions)."""
        return self._turns.run(self._submit, fn, *args)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self.processes == 0:
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)
        try:
            future = self._process_pool().submit(fn, *args)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # a worker died (killed, out of memory): start afresh
            future = self._process_pool().submit(fn, *args)
        done: defer.Deferred = defer.Deferred(lambda _: future.cancel())
        future.add_done_callback(lambda f: self.reactor.callFromThread(_settle, done, f))
        return done

    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # Not fork: this process runs threads (the reactor's pool, SQLite's writer).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["smtpeter.outbound.steps"])
            self._pool = concurrent.futures.ProcessPoolExecutor(self.processes, mp_context=context)
        return self._pool

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _settle(done: defer.Deferred, future: concurrent.futures.Future) -> None:
    if done.called:  # cancelled meanwhile
        return
    if future.cancelled():
        done.cancel()
        return
    error = future.exception()
    if error is not None:
        done.errback(error)
    else:
        done.callback(future.result())
