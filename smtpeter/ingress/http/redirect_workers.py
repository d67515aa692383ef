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
in the log). A worker that cannot send its hits (this process not reading
them) keeps at most redirect_worker.MAX_WAITING; what it drops is counted
here, on ``smtpeter_hits_dropped_total``.
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

from smtpeter.events.hits import HitLog
from smtpeter.ingress.http import redirect_worker
from smtpeter.outbound.workers import default_worker_count

log = Logger()

STOP_SECONDS = 10.0
RESTART_SECONDS = 0.5  # before a dead worker is started again; doubled while they die young
MAX_RESTART_SECONDS = 30.0
_YOUNG_SECONDS = 10.0
_HANDOFF_BYTES = 256 * 1024  # more than a worker ever reads before handing over (MAX_HEAD + a read)
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
        worker = _Worker(self, ours)
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", redirect_worker.HANDOFF_FD: theirs.fileno(),
                                     redirect_worker.HITS_FD: "r"}
        for index, port in enumerate(self.listeners):
            child_fds[redirect_worker.FIRST_LISTENER_FD + index] = port.fileno()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            self.reactor.spawnProcess(worker, sys.executable,
                                      [sys.executable, "-m", "smtpeter.ingress.http.redirect_worker"],
                                      env=env, childFDs=child_fds)
        finally:
            theirs.close()  # the worker has its own
        self.workers.append(worker)
        worker.handoffs.start()

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

    def __init__(self, owner: RedirectWorkers, handoff: socket.socket) -> None:
        self.owner = owner
        self.handoffs = _Handoffs(owner, handoff)
        self.pid: int | None = None
        self.started = time.monotonic()
        self.ended: defer.Deferred = defer.Deferred()
        self._hits = bytearray()
        self._text = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        settings = {"keys": [base64.b64encode(key).decode("ascii") for key in self.owner.keys],
                    "public_url": self.owner.public_url, "listeners": len(self.owner.listeners),
                    "idle_timeout": self.owner.site.timeOut or 60}
        self.transport.write(json.dumps(settings).encode() + b"\n")  # keys on a pipe, never in argv

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == redirect_worker.HITS_FD:
            self._hits += data
            while len(self._hits) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._hits)
                if len(self._hits) < _LENGTH.size + length:
                    break
                frame = bytes(self._hits[_LENGTH.size:_LENGTH.size + length])
                dropped, hits = marshal.loads(frame)  # noqa: S302 - our own child's, plain tuples
                del self._hits[:_LENGTH.size + length]
                self.owner.take_hits(dropped, hits)
            return
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
