"""Where the outbound steps run: worker processes, off the reactor and on the other cores.

Measured on the 2-core VM (a Python thread spinning beside the step, its
speed kept): css-inline 15% (it holds the GIL), our MIME code 46% (pure
Python), lxml 84% (it releases the GIL). Most steps would stall the reactor
from a thread about as much as from the reactor itself, so they run in
processes: ``delivery.transform_workers`` of them (default: one per core
beside the reactor's). With 0, they run in the reactor's thread pool.

The processes (worker.py) are the reactor's own children, and the reactor
reads and writes their pipes itself: a call is one pickled frame out and one
back, with no thread in this process. (``concurrent.futures``' process pool
pickles, unpickles and hands results over in threads of this process; their
fight with the reactor for the GIL cost the reactor about 1 ms a DKIM-signed
message, most of it waiting in its own ``send()`` calls: bench/relay.py.)

Each worker has up to ``DEPTH`` calls in its pipe (it starts the next one as
soon as it has answered), a call goes to the least loaded, the rest wait
here, not yet pickled, holding only references to data the scheduler holds
anyway. A worker that dies (killed, out of memory) is replaced; the call it
was running is tried once more, the calls behind it in its pipe go again as
new, so a message that kills its worker twice fails alone.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpeter.outbound.worker import CALLS_FD, HEADER, RESULTS_FD, WorkerError

log = Logger()

# Calls in a worker's pipe at once: the one it runs, the next, and room for the reactor's turn to
# come late under load. Measured with DKIM calls of 2 KB messages: with 1 the worker idles between
# calls (about 35% fewer calls a second), 2 and 4 are alike within the noise.
DEPTH = 4
READ_SIZE = 1 << 20
PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size's default


class WorkerDied(WorkerError):
    """The call's worker process ended while running it, on its second try too."""


def default_worker_count() -> int:
    """One process per core this process may use, beside the reactor's; at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(eq=False)
class _Call:
    fn: Callable[..., Any]
    args: tuple
    result: defer.Deferred = field(init=False)
    retry: bool = True  # may be tried once more if its worker dies running it
    payload: bytes | None = None  # pickled, once sent


class Workers:
    def __init__(self, reactor: Any, processes: int) -> None:
        self.reactor = reactor
        self.processes = processes
        self._turns = defer.DeferredSemaphore(2)  # without processes: calls in the thread pool at once
        self._waiting: deque[_Call] = deque()
        self._workers: list[_Worker] = []
        self._stopped = False

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``fn(*args)`` in a worker; ``fn`` and the arguments must pickle (module-level functions).

        Cancelling the Deferred drops the call if it has not been sent, its result if it has.
        """
        if self._stopped:
            return defer.fail(defer.CancelledError("the workers are stopped"))
        if self.processes == 0:
            return self._turns.run(deferToThreadPool, self.reactor, self.reactor.getThreadPool(), fn, *args)
        call = _Call(fn, args)
        call.result = defer.Deferred(lambda _: self._cancel(call))
        self._waiting.append(call)
        self._dispatch()
        return call.result

    def pids(self) -> list[int]:
        """The worker processes' ids (the tests kill them)."""
        return [worker.pid for worker in self._workers if worker.pid is not None]

    def _cancel(self, call: _Call) -> None:
        if call in self._waiting:  # not sent; a sent one's result will be dropped
            self._waiting.remove(call)

    def _dispatch(self) -> None:
        while self._waiting and not self._stopped:
            if len(self._workers) < self.processes:
                try:
                    self._spawn()
                except Exception as exc:  # the processes cannot even be started
                    self._fail_waiting(Failure(exc))
                    return
            worker = min(self._workers, key=lambda w: len(w.calls))
            if len(worker.calls) >= DEPTH:
                return
            call = self._waiting.popleft()
            if call.payload is None:
                try:
                    call.payload = pickle.dumps((call.fn, call.args), pickle.HIGHEST_PROTOCOL)
                except Exception as exc:
                    call.result.errback(exc)
                    continue
            worker.send(call)

    def _spawn(self) -> None:
        calls_read, calls_write = os.pipe()
        results_read, results_write = os.pipe()
        env = dict(os.environ)
        # The worker imports what this process can (the steps; a test's own functions).
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entry for entry in sys.path if entry))
        try:
            worker = _Worker(self, _Pipe(self.reactor, calls_write), _Pipe(self.reactor, results_read))
            self.reactor.spawnProcess(worker, sys.executable,
                                      [sys.executable, "-m", "smtpeter.outbound.worker", str(os.getpid())],
                                      env=env, childFDs={CALLS_FD: calls_read, 1: "r", 2: "r",
                                                         RESULTS_FD: results_write})
        except BaseException:
            for fd in (calls_write, results_read):
                os.close(fd)
            raise
        finally:
            os.close(calls_read)  # the worker has its own
            os.close(results_write)
        worker.results.start(worker.received)
        self._workers.append(worker)

    def _answered(self, call: _Call, ok: bool, value: Any) -> None:
        if call.result.called:  # cancelled: the result is dropped
            return
        if ok:
            call.result.callback(value)
        else:
            call.result.errback(value)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        self._workers.remove(worker)  # first: the results read now may free places for new calls
        worker.results.drain()  # what it answered before it ended
        worker.results.close()
        worker.calls_pipe.close()
        calls = list(worker.calls.values())
        worker.calls.clear()
        if self._stopped or not calls:
            return
        running, behind = calls[0], calls[1:]
        log.warn("transform worker {pid} died ({reason}) with {count} calls in its pipe", pid=worker.pid,
                 reason=reason.getErrorMessage(), count=len(calls))
        self._waiting.extendleft(reversed([call for call in behind if not call.result.called]))
        if running.retry and not running.result.called:
            running.retry = False
            self._waiting.appendleft(running)
        elif not running.result.called:
            running.result.errback(WorkerDied(f"a transform worker died running the call, twice "
                                              f"({reason.getErrorMessage()})"))
        self._dispatch()

    def _fail_waiting(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting, deque()
        for call in waiting:
            call.result.errback(failure)

    def stop(self) -> defer.Deferred:
        """No more work: what waits or runs is cancelled, the processes end; fires once they have."""
        self._stopped = True
        self._fail_waiting(Failure(defer.CancelledError("the workers are stopped")))
        ended = []
        for worker in self._workers:
            calls = list(worker.calls.values())
            worker.calls.clear()
            for call in calls:
                if not call.result.called:
                    call.result.errback(defer.CancelledError("the workers are stopped"))
            worker.terminate()
            ended.append(worker.ended)
        return defer.DeferredList(ended)


class _Worker(protocol.ProcessProtocol):
    """One worker process: calls into its pipe, results from its own, anything it prints logged."""

    def __init__(self, owner: Workers, calls: _Pipe, results: _Pipe) -> None:
        self.owner = owner
        self.calls_pipe = calls
        self.results = results
        self.pid: int | None = None
        self.calls: dict[int, _Call] = {}  # sent and not answered, in the order sent
        self.ended: defer.Deferred = defer.Deferred()
        self._next_id = 0
        self._buffer = bytearray()
        self._text = {1: b"", 2: b""}  # a line begun on stdout or stderr

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def send(self, call: _Call) -> None:
        assert call.payload is not None
        self._next_id += 1
        self.calls[self._next_id] = call
        self.calls_pipe.write([HEADER.pack(len(call.payload), self._next_id), call.payload])

    def received(self, data: bytes) -> None:
        """Results: each answered call's Deferred fires, then the freed places are filled."""
        buffer = self._buffer
        buffer += data
        offset, answered = 0, []
        while len(buffer) - offset >= HEADER.size:
            length, call_id = HEADER.unpack_from(buffer, offset)
            end = offset + HEADER.size + length
            if len(buffer) < end:
                break
            answered.append((self.calls.pop(call_id, None), buffer[offset + HEADER.size:end]))
            offset = end
        del buffer[:offset]
        for call, payload in answered:
            if call is not None:
                self.owner._answered(call, *_outcome(payload))
        self.owner._dispatch()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, self._text[fd] = (self._text.get(fd, b"") + data).split(b"\n")
        for line in lines:
            log.warn("transform worker {pid}: {line}", pid=self.pid, line=line.decode("utf-8", "replace"))

    def terminate(self) -> None:
        try:
            self.transport.signalProcess("TERM")  # what it runs now is not wanted any more
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended(self, reason)
        self.ended.callback(None)


class _Pipe:
    """Our end of a pipe to a worker, read or written by the reactor itself (an IReadDescriptor and
    IWriteDescriptor): a call is written at once, not on the reactor's next turn, and results are
    read up to READ_SIZE at a time (Twisted's process pipes read 8 KiB a turn)."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self._pending: deque[memoryview] = deque()
        self._on_data: Callable[[bytes], None] | None = None
        os.set_blocking(fd, False)
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # a 2 KB message's call is ~5 KB; 5 MB ones exist
        except OSError:
            pass  # the system's limit is lower: the default size works, in more turns

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "transform worker pipe"

    def start(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.reactor.addReader(self)

    def write(self, parts: list[bytes]) -> None:
        if self.fd < 0:
            return  # the worker ended: its calls are tried again elsewhere
        if not self._pending:
            try:
                written = os.writev(self.fd, parts)
            except BlockingIOError:
                written = 0
            except OSError:
                return  # it is ending: processEnded follows
            for part in parts:
                if written >= len(part):
                    written -= len(part)
                    continue
                self._pending.append(memoryview(part)[written:])
                written = 0
            if self._pending:
                self.reactor.addWriter(self)
            return
        self._pending.extend(memoryview(part) for part in parts)

    def doWrite(self) -> None:
        while self._pending:
            chunk = self._pending[0]
            try:
                written = os.write(self.fd, chunk)
            except BlockingIOError:
                return
            except OSError:
                self._pending.clear()
                break
            if written < len(chunk):
                self._pending[0] = chunk[written:]
                return
            self._pending.popleft()
        self.reactor.removeWriter(self)

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker is gone: processEnded does the rest
            self.reactor.removeReader(self)
            return
        assert self._on_data is not None
        self._on_data(data)

    def drain(self) -> None:
        while self.fd >= 0 and self._on_data is not None:
            try:
                data = os.read(self.fd, READ_SIZE)
            except OSError:
                return
            if not data:
                return
            self._on_data(data)

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            os.close(self.fd)
            self.fd = -1
            self._pending.clear()


def _outcome(payload: bytearray) -> tuple[bool, Any]:
    try:
        ok, value = pickle.loads(payload)  # noqa: S301 - from our own child
    except Exception as exc:
        return False, WorkerError(f"the call's outcome does not unpickle: {exc!r}")
    return ok, value
