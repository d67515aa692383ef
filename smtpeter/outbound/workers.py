"""Where the outbound steps run: worker processes, off the reactor and on the other cores.

Measured on the 2-core VM (a Python thread spinning beside the step, its
speed kept): css-inline 15% (it holds the GIL), our MIME code 46% (pure
Python), lxml 84% (it releases the GIL). Most steps would stall the reactor
from a thread about as much as from the reactor itself, so they run in
processes: ``delivery.transform_workers`` of them (default: one per core
beside the reactor's). With 0, they run in the reactor's thread pool.

At most twice as many calls as workers are in work or waiting in the pool at
once (a slot is free again only when its call has really ended); the rest
wait here, holding only references to data the scheduler holds anyway.
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
    """One process per core this process may use, beside the reactor's; at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


class Workers:
    def __init__(self, reactor: Any, processes: int) -> None:
        self.reactor = reactor
        self.processes = processes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._turns = defer.DeferredSemaphore(max(2, 2 * processes))
        self._stopped = False

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``fn(*args)`` in a worker; ``fn`` and the arguments must pickle (module-level functions).

        A worker that dies (killed, out of memory) fails every call it had; such a call is
        tried once more on fresh workers, so one poisonous message cannot fail the others twice.
        """
        if self._stopped:
            return defer.fail(defer.CancelledError("the workers are stopped"))
        if self.processes == 0:
            return self._turns.run(deferToThreadPool, self.reactor, self.reactor.getThreadPool(), fn, *args)
        result: defer.Deferred = defer.Deferred()
        self._turns.acquire().addCallback(lambda _: self._submit(result, fn, args, retry=True))
        return result

    def _submit(self, result: defer.Deferred, fn: Callable[..., Any], args: tuple, retry: bool) -> None:
        if result.called or self._stopped:  # cancelled while waiting for a turn
            self._turns.release()
            if not result.called:
                result.errback(defer.CancelledError("the workers are stopped"))
            return
        try:
            pool = self._process_pool()
            try:
                future = pool.submit(fn, *args)
            except concurrent.futures.BrokenExecutor:
                self._replace(pool)
                pool = self._process_pool()
                future = pool.submit(fn, *args)
        except Exception as exc:  # the processes cannot even be started
            self._turns.release()
            result.errback(exc)
            return
        result.addErrback(_cancel, future)
        future.add_done_callback(
            lambda f: self.reactor.callFromThread(self._finished, result, f, pool, fn, args, retry))

    def _finished(self, result: defer.Deferred, future: concurrent.futures.Future,
                  pool: concurrent.futures.ProcessPoolExecutor, fn: Callable[..., Any], args: tuple,
                  retry: bool) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, concurrent.futures.BrokenExecutor) and retry and not self._stopped:
            log.warn("a transform worker died ({error}); trying its work once more", error=error)
            self._replace(pool)
            self._submit(result, fn, args, retry=False)  # keeps the turn
            return
        self._turns.release()
        if result.called:
            return
        if future.cancelled():
            result.errback(defer.CancelledError())
        elif error is not None:
            result.errback(error)
        else:
            result.callback(future.result())

    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # Not fork: this process runs threads (the reactor's pool, SQLite's writer).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["smtpeter.outbound.steps"])
            self._pool = concurrent.futures.ProcessPoolExecutor(self.processes, mp_context=context)
        return self._pool

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        broken.shutdown(wait=False, cancel_futures=True)
        if self._pool is broken:
            self._pool = None

    def stop(self) -> None:
        """No more work: what waits is cancelled, the processes end."""
        self._stopped = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _cancel(failure: Any, future: concurrent.futures.Future) -> Any:
    """The caller gave up: the work is dropped if it has not begun (the turn is held until it ends)."""
    if failure.check(defer.CancelledError):
        future.cancel()
    return failure
