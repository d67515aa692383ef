"""Redirect workers: processes of their own answering clicks and opens on the plain HTTP listeners.

The redirect is ~30 µs of the reactor's time in this process (Twisted's read
dispatch, the token's check, a ``send``), so one process cannot answer as
many as a web server does on the same machine (bench/redirect.py). With
``http.redirect_workers`` at N > 0 the plain listeners (``http.listen``, TCP)
are opened here as ever, but this process stops accepting on them: N workers
(redirect_worker.py, ``reactor.spawnProcess`` of a small entry point) get the
listening sockets and accept beside each other. A worker answers /c/ and /o/
itself from the token (the same ``tracking.keys``) and sends the hits here
in batches over a pipe, where the HitLog scores them for bots (its rules
look at every hit of a recipient, whichever worker took it) and stores them.
Any other request, e.g. /v1/send, /metrics or an image, and everything after
it on that connection, comes here: the worker hands over the connection's
socket (SCM_RIGHTS over a socket pair) with the bytes it read, this process
adopts it (``adoptStreamConnection``) and gives the bytes to the site as if
it had read them itself. TLS listeners stay in this process.

A worker that dies is started again (at once, later if it keeps dying). At
stop, the workers stop accepting, send the hits they hold and exit; one that
does not within ``STOP_SECONDS`` is killed, and what it held is lost (said
in the log).

Hits are read as they come, in large reads, unless the HitLog is ``BEHIND``
on writing them while storage works: then this process stops reading them
until fewer wait (90% of that), and the workers, their pipes full, wait
for it (redirect_worker.MAX_WAITING) rather than drop clicks: under more
clicks than this process can score and store, the redirects slow down to
that pace. While storage fails the hits are read on and past
events/hits.MAX_PENDING dropped, counted on ``smtpeter_hits_dropped_total``
(so are what a worker drops after waiting redirect_worker.STALL_SECONDS).
"""

from __future__ import annotations

import base64
import json
import marshal
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, tcp
from twisted.logger import Logger

from smtpeter.events.hits import MAX_PENDING, HitLog
from smtpeter.ingress.http import redirect_worker
from smtpeter.outbound.workers import default_worker_count

log = Logger()

STOP_SECONDS = 10.0
RESTART_SECONDS = 0.5  # before a dead worker is started again; doubled while they die young
MAX_RESTART_SECONDS = 30.0
_YOUNG_SECONDS = 10.0
_HANDOFF_BYTES = 256 * 1024  # more than a worker ever reads before handing over (MAX_HEAD + a read)
_HITS_READ = 1024 * 1024  # bytes of hits read at once (Twisted's process pipes read 8 KiB a turn)
BEHIND = MAX_PENDING // 2  # hits waiting to be written before the workers' are no longer read
# ... until fewer wait: short pauses, so a click waits a fraction of a second, not seconds.
_CAUGHT_UP = 0.9
_BEHIND_CHECK_SECONDS = 0.1
_LENGTH = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # where ``smtpeter`` is imported from


def worker_count(configured: int | None) -> int:
    """``http.redirect_workers``: unset, one per core beside the reactor's."""
    return default_worker_count() if configured is None else configured


class RedirectWorkers:
    def __init__(self, reactor: Any, count: int, keys: Sequence[bytes], public_url: str, site: Any,
                 hit_log: HitLog, clock: Any) -> None:
        self.reactor = reactor
        self.count = count
        self.keys = keys
        self.public_url = public_url
        self.site = site
        self.hit_log = hit_log
        self.clock = clock
        self.listeners: list[Any] = []
        self.workers: list[_Worker] = []
        self.running = False
        self._delay = RESTART_SECONDS
        self._restarts: list[Any] = []  # pending restarts (IDelayedCall)
        self._paused: Any = None  # while hits are not read: the next look at the HitLog (IDelayedCall)

    def start(self, ports: Sequence[Any]) -> None:
        """Serve ``ports`` (what ``listen`` gave for http.listen) from the workers: the TCP ones stop
        accepting here."""
        # Plain TCP only: an ssl: endpoint's port is a tcp.Port too, but not its to answer.
        self.listeners = [port for port in ports if type(port) is tcp.Port and port.factory is self.site]
        if not self.count or not self.listeners:
            return
        for port in self.listeners:
            port.stopReading()
        self.running = True
        for _ in range(self.count):
            self._spawn()
        log.info("{count} redirect workers answer clicks and opens on {ports}", count=self.count,
                 ports=", ".join(str(port.getHost().port) for port in self.listeners))

    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers if worker.pid is not None]

    async def stop(self) -> None:
        """Stop the workers, with the hits they hold recorded here."""
        self.running = False
        for call in self._restarts:
            if call.active():
                call.cancel()
        self._restarts.clear()
        self._resume()  # what the workers hold is taken whatever the HitLog waits for
        workers = list(self.workers)
        for worker in workers:
            worker.stop()
        ended = defer.DeferredList([worker.ended for worker in workers])
        timer = self.reactor.callLater(STOP_SECONDS, self._kill, workers)
        await ended
        if timer.active():
            timer.cancel()

    def _kill(self, workers: Sequence[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("redirect worker {pid} did not stop in {seconds:.0f} s: killed; the hits it held "
                         "are lost", pid=worker.pid, seconds=STOP_SECONDS)
                worker.kill()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        hits_in, hits_out = os.pipe()
        worker = _Worker(self, ours, hits_in)
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", redirect_worker.HANDOFF_FD: theirs.fileno(),
                                     redirect_worker.HITS_FD: hits_out}
        for index, port in enumerate(self.listeners):
            child_fds[redirect_worker.FIRST_LISTENER_FD + index] = port.fileno()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            self.reactor.spawnProcess(worker, sys.executable,
                                      [sys.executable, "-m", "smtpeter.ingress.http.redirect_worker"],
                                      env=env, childFDs=child_fds)
        except BaseException:
            worker.hits.close()
            raise
        finally:
            theirs.close()  # the worker has its own
            os.close(hits_out)
        self.workers.append(worker)
        worker.handoffs.start()
        if self._paused is None:
            worker.hits.start()

    def _ended(self, worker: _Worker, reason: Any, lived: float) -> None:
        self.workers.remove(worker)
        if not self.running:
            return
        self._delay = RESTART_SECONDS if lived > _YOUNG_SECONDS else min(2 * self._delay, MAX_RESTART_SECONDS)
        log.warn("redirect worker {pid} ended ({reason}); another starts in {delay:.1f} s", pid=worker.pid,
                 reason=reason.getErrorMessage(), delay=self._delay)
        self._restarts = [call for call in self._restarts if call.active()]
        self._restarts.append(self.reactor.callLater(self._delay, self._restart))

    def _restart(self) -> None:
        if self.running:
            self._spawn()

    def take_hits(self, dropped: int, hits: list[tuple]) -> None:
        """A worker's batch to the HitLog, its wall-clock times on this clock (a test's may be ahead)."""
        if dropped:
            self.hit_log.drop(dropped)
        offset = self.clock.seconds() - time.time()
        add = self.hit_log.add_raw
        if abs(offset) < 0.001:  # the reactor's clock: the same but for the moment between the calls
            for hit in hits:
                add(hit)
        else:
            for hit in hits:
                add((hit[0] + offset, *hit[1:]))
        if self._paused is None and self.running and self._behind(BEHIND):
            for worker in self.workers:
                worker.hits.pause()
            self._paused = self.reactor.callLater(_BEHIND_CHECK_SECONDS, self._look_again)

    def _behind(self, limit: int) -> bool:
        return self.hit_log.waiting >= limit and not self.hit_log.storage_failing

    def _look_again(self) -> None:
        if self._behind(int(BEHIND * _CAUGHT_UP)):
            self._paused = self.reactor.callLater(_BEHIND_CHECK_SECONDS, self._look_again)
        else:
            self._paused = None
            self._resume()

    def _resume(self) -> None:
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        self._paused = None
        for worker in self.workers:
            worker.hits.start()

    def adopt(self, fd: int, data: bytes) -> None:
        """A connection a worker handed over, and what it had read of it: served by the site."""
        sock = socket.socket(fileno=fd)
        try:
            sock.setblocking(False)
            transport = self.reactor.adoptStreamConnection(sock.fileno(), sock.family, self.site)
        except OSError:
            return  # the client left meanwhile
        finally:
            sock.close()  # Twisted has its own descriptor for it
        if transport is not None:
            transport.protocol.dataReceived(data)


class _Worker(protocol.ProcessProtocol):
    """One worker process: its settings on stdin, its hits on HITS_FD, its log lines on stderr."""

    def __init__(self, owner: RedirectWorkers, handoff: socket.socket, hits: int) -> None:
        self.owner = owner
        self.handoffs = _Handoffs(owner, handoff)
        self.hits = _Hits(owner, hits)
        self.pid: int | None = None
        self.started = time.monotonic()
        self.ended: defer.Deferred = defer.Deferred()
        self._text = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        settings = {"keys": [base64.b64encode(key).decode("ascii") for key in self.owner.keys],
                    "public_url": self.owner.public_url, "listeners": len(self.owner.listeners),
                    "idle_timeout": self.owner.site.timeOut or 60}
        self.transport.write(json.dumps(settings).encode() + b"\n")  # keys on a pipe, never in argv

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, self._text = (self._text + data).split(b"\n")
        for line in lines:
            log.warn("{line}", line=line.decode("utf-8", "replace"))

    def stop(self) -> None:
        if self.transport is not None and self.pid is not None:
            self.transport.closeStdin()  # end of file: the worker stops

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason: Any) -> None:
        self.handoffs.drain()
        self.handoffs.close()
        self.hits.drain()  # to its end: the worker is gone
        self.hits.close()
        self.owner._ended(self, reason, time.monotonic() - self.started)
        self.ended.callback(None)


class _Handoffs:
    """The reading end of a worker's socket pair: connections handed over (an IReadDescriptor)."""

    def __init__(self, owner: RedirectWorkers, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        sock.setblocking(False)

    def start(self) -> None:
        self.owner.reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "redirect worker hand-offs"

    def doRead(self) -> None:
        self.drain()

    def drain(self) -> None:
        while self.sock.fileno() >= 0:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, _HANDOFF_BYTES, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds, flags = b"", [], 0
            if not data and not fds:  # the worker is gone
                self.close()
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for fd in fds:
                    os.close(fd)
                continue
            for fd in fds:
                self.owner.adopt(fd, data)

    def connectionLost(self, reason: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.owner.reactor.removeReader(self)
            self.sock.close()


class _Hits:
    """The reading end of a worker's hits pipe (an IReadDescriptor): frames to ``take_hits``."""

    def __init__(self, owner: RedirectWorkers, fd: int) -> None:
        self.owner = owner
        self.fd = fd
        self.buffer = bytearray()
        self.reading = False
        os.set_blocking(fd, False)

    def start(self) -> None:
        if not self.reading and self.fd >= 0:
            self.owner.reactor.addReader(self)
            self.reading = True

    def pause(self) -> None:
        if self.reading:
            self.owner.reactor.removeReader(self)
            self.reading = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "redirect worker hits"

    def doRead(self) -> None:
        self.drain(_HITS_READ)

    def drain(self, most: int | None = None) -> None:
        """Read what is there (at most about ``most`` bytes; None: all of it)."""
        read = 0
        while self.fd >= 0 and (most is None or read < most):
            try:
                data = os.read(self.fd, _HITS_READ)
            except BlockingIOError:  # (once the worker ended, only if a process still holds its end)
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            read += len(data)
            self.buffer += data
            self._frames()

    def _frames(self) -> None:
        buffer = self.buffer
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            dropped, hits = marshal.loads(buffer[start + _LENGTH.size:end])  # noqa: S302 - our child's tuples
            self.owner.take_hits(dropped, hits)
            start = end
        del buffer[:start]

    def connectionLost(self, reason: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.pause()
            os.close(self.fd)
            self.fd = -1
