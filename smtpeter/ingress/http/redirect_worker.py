"""A redirect worker: a process of its own answering /c/ and /o/ on the plain HTTP listeners.

Started by redirect_workers.py (``python -m smtpeter.ingress.http.redirect_worker``)
with the listening sockets the main process made, it accepts connections
beside the other workers (the kernel spreads them) and answers the requests of
the redirector and the pixel itself (redirector.py: the token verified with
the same keys, no storage). The first request on a connection that is not one
of those, or one it does not fully understand, is not its business: the
connection's socket and the bytes read of it go to the main process
(SCM_RIGHTS), which serves it as if it had accepted it. The hits go to the
main process in batches, whose HitLog scores and stores them.

A loop of its own over epoll, not Twisted: measured on the 2-core VM, one
process answers 35k redirects/s this way against 21k with Twisted's reactor
and ``adoptStreamPort`` (the same answering code), since a redirect is a
handful of microseconds of work and Twisted's read dispatch, buffering and
write on the next turn cost as much again.

The file descriptors it is given:

    0  the main process's instructions: one JSON line (keys, public_url, idle
       timeout, listener count); end of file means stop
    3  a SOCK_SEQPACKET socket: a connection handed over is one message, the
       bytes read of it with its descriptor
    4  a pipe for hits: frames of a 4-byte length and marshal of
       (hits dropped here, [hits as tuples of events.hits.Hit's fields])
    5… the listening sockets

At the end of file on 0 it stops accepting, closes its connections, sends the
hits it has and exits.
"""

from __future__ import annotations

import base64
import errno
import gc
import json
import marshal
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from typing import Any

from smtpeter.ingress.http.redirector import MAX_HEAD, Redirector, answer_head, origin
from smtpeter.links import Link, LinkSigner

CONTROL_FD, HANDOFF_FD, HITS_FD, FIRST_LISTENER_FD = 0, 3, 4, 5
READ_SIZE = 65536
BATCH_HITS = 500  # a batch goes to the main process at this many hits, or after BATCH_SECONDS
BATCH_SECONDS = 0.05
# Hits waiting for the main process to read them before the worker waits for it (answering nobody):
# a main process behind on writing them stops reading, and so slows the workers to its pace rather
# than lose hits. After STALL_SECONDS of waiting they are dropped (and counted) and the worker goes on.
MAX_WAITING = 20_000
# The worker answers again once fewer than this many wait: the main process reads a little at a time
# when behind (some 10,000 hits for all workers each time it has written as many), so resuming at
# half would wait for two or more of its writes, seconds under a flood (wrk timed out at 2 s).
_RESUME_WAITING = MAX_WAITING * 9 // 10
STALL_SECONDS = 10.0
SWEEP_SECONDS = 5.0  # idle connections are looked for this often
_LENGTH = struct.Struct(">I")


class HitBatch:
    """The hits taken, as tuples of events.hits.Hit's fields, and the frames not yet sent."""

    def __init__(self, public_url: str) -> None:
        self.origin, self.https = origin(public_url)
        self.hits: list[tuple] = []
        self.frames: deque[tuple[bytes, int]] = deque()  # encoded, with their hit counts, for the pipe
        self.sent = 0  # bytes of the first frame the pipe took already
        self.framed = 0  # hits in ``frames``
        self.dropped = 0  # not yet told to the main process
        self.first = 0.0  # monotonic time of the oldest hit in ``hits``
        # The header blocks of ``hits``, each kept as one object: a browser sends the same block with
        # every click, and marshal writes an object it met already in the same call as a reference to
        # it, so a frame carries each block once and the main process makes one object of it.
        self._heads: dict[bytes, bytes] = {}

    def add(self, kind: str, link: Link, destination: str, method: bytes, uri: bytes, head: bytes,
            peer: str, secure: bool) -> None:
        if len(self.hits) + self.framed >= 2 * MAX_WAITING:  # the main process has not read for long
            self.dropped += 1
            return
        if not self.hits:
            self.first = time.monotonic()
        same = self._heads.setdefault(head, head)
        self.hits.append((time.time(), kind, link.recipient_id, link.position, method.decode("ascii"),
                          self.origin + uri.decode("latin-1"), destination, peer, same, secure or self.https))

    def due(self, now: float) -> bool:
        return len(self.hits) >= BATCH_HITS or (bool(self.hits) and now - self.first >= BATCH_SECONDS)

    def frame(self) -> None:
        """The hits taken into a frame for the pipe."""
        if self.hits or self.dropped:
            payload = marshal.dumps((self.dropped, self.hits))
            self.frames.append((_LENGTH.pack(len(payload)) + payload, len(self.hits)))
            self.framed += len(self.hits)
            self.hits, self.dropped = [], 0
            self._heads.clear()

    def send(self, pipe: int) -> bool:
        """Write what the pipe takes now; whether everything went."""
        while self.frames:
            data, count = self.frames[0]
            try:
                self.sent += os.write(pipe, memoryview(data)[self.sent:])
            except BlockingIOError:
                return False
            if self.sent < len(data):
                return False
            self.frames.popleft()
            self.sent = 0
            self.framed -= count
        return True

    def drop_unsent(self) -> int:
        """Give up the frames the pipe took nothing of yet (told as dropped in the next); how many hits."""
        keep = self.frames.popleft() if self.frames and self.sent else None
        lost = self.framed - (keep[1] if keep else 0)
        self.frames.clear()
        if keep:
            self.frames.append(keep)
        self.framed -= lost
        self.dropped += lost
        return lost


class Connection:
    __slots__ = ("closing", "handoff", "held", "mask", "out", "peer", "seen", "sock")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.held = b""  # the start of a request of ours, not complete yet
        self.out = b""  # answers the socket did not take yet
        self.closing = False  # close once ``out`` is sent
        self.handoff: bytes | None = None  # for the main process, once ``out`` is sent
        self.mask = select.EPOLLIN  # what epoll waits for on it
        self.seen = time.monotonic()


class Worker:
    def __init__(self, redirector: Redirector, hits: HitBatch, listeners: list[socket.socket],
                 handoff: socket.socket, idle_timeout: float) -> None:
        self.redirector = redirector
        self.hits = hits
        self.listeners = {sock.fileno(): sock for sock in listeners}
        self.handoff = handoff
        self.idle_timeout = idle_timeout
        self.connections: dict[int, Connection] = {}
        self.answered: list[Connection] = []  # read this turn: what they are owed is sent at its end
        self.epoll = select.epoll()
        self.running = True

    def run(self) -> None:
        for fd in self.listeners:
            # EXCLUSIVE: one waiting worker is woken per connection, not all of them.
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        self.epoll.register(CONTROL_FD, select.EPOLLIN)
        self.epoll.register(HITS_FD, 0)
        swept = time.monotonic()
        while self.running:
            timeout = BATCH_SECONDS if self.hits.hits else SWEEP_SECONDS
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, mask in events:
                if fd in self.listeners:
                    self._accept(self.listeners[fd])
                elif fd == CONTROL_FD:
                    self.running = False  # end of file (or anything else): the main process stops us
                elif fd == HITS_FD:
                    self._send_hits()
                else:
                    connection = self.connections.get(fd)
                    if connection is not None:
                        if mask & select.EPOLLOUT:
                            self._write(connection)
                        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                            self._read(connection)
            # The answers of this turn, sent one after the other: the client (on another core) is
            # woken by the first and finds the rest ready, rather than being woken for each. Sent as
            # each was made, the sends cost twice the answers (bench/redirect.py: 16 µs a send, the
            # client woken again each time).
            for connection in self.answered:
                self._write(connection)
            self.answered.clear()
            now = time.monotonic()
            if self.hits.due(now):
                self.hits.frame()
                self._send_hits()
                if self.hits.framed >= MAX_WAITING:
                    self._wait_for_main()
            if now - swept >= SWEEP_SECONDS:
                swept = now
                self._sweep(now)
        self._stop()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # a few at a time, then the connections already here get a turn
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, a connection reset before accept
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log(f"accept failed: {exc}")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections[sock.fileno()] = Connection(sock, address[0])
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _read(self, connection: Connection) -> None:
        if connection.closing or connection.handoff is not None:
            return  # nothing more is read of it here
        try:
            data = connection.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.seen = time.monotonic()
        if connection.held:
            data, connection.held = connection.held + data, b""
        answers = []
        redirector = self.redirector
        while data:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) <= MAX_HEAD and redirector.may_be_ours(data):
                    connection.held = data
                    data = b""
                break
            answered = answer_head(redirector, data[:end], connection.peer, False)
            if answered is None:
                break
            answers.append(answered[0])
            data = data[end + 4:]
            if answered[1]:
                connection.closing = True
                data = b""
                break
        if data:
            connection.handoff = data
        if answers:
            connection.out += b"".join(answers)
        self.answered.append(connection)

    def _write(self, connection: Connection) -> None:
        if connection.out:
            try:
                sent = connection.sock.send(connection.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(connection)
                return
            connection.out = connection.out[sent:]
            if connection.out:
                # Nothing more is read of a connection that ends or goes to the main process once the
                # rest is sent: waiting for reads then would wake us for ever.
                done = connection.closing or connection.handoff is not None
                self._wait_for(connection, select.EPOLLOUT if done else select.EPOLLIN | select.EPOLLOUT)
                return
            self._wait_for(connection, select.EPOLLIN)
        if connection.closing:
            self._close(connection)
        elif connection.handoff is not None:
            self._hand_off(connection)

    def _wait_for(self, connection: Connection, mask: int) -> None:
        if connection.mask != mask:
            self.epoll.modify(connection.sock.fileno(), mask)
            connection.mask = mask

    def _hand_off(self, connection: Connection) -> None:
        """The connection, with the bytes read of it, to the main process."""
        fd = connection.sock.fileno()
        self.epoll.unregister(fd)
        del self.connections[fd]
        try:
            socket.send_fds(self.handoff, [connection.handoff], [fd])
        except OSError as exc:
            log(f"could not hand a connection to the main process: {exc}")
        connection.sock.close()  # the main process has its own descriptor for it now

    def _close(self, connection: Connection) -> None:
        fd = connection.sock.fileno()
        if self.connections.pop(fd, None) is not None:
            self.epoll.unregister(fd)
        connection.sock.close()

    def _sweep(self, now: float) -> None:
        for connection in list(self.connections.values()):
            if now - connection.seen > self.idle_timeout:
                self._close(connection)

    def _send_hits(self) -> None:
        try:
            everything = self.hits.send(HITS_FD)
        except OSError as exc:  # the main process is gone: so are we
            log(f"the main process stopped reading hits: {exc}")
            self.hits.frames.clear()
            self.running = False
            return
        self.epoll.modify(HITS_FD, 0 if everything else select.EPOLLOUT)

    def _wait_for_main(self) -> None:
        """Until the main process has read some of what waits (_RESUME_WAITING), or STALL_SECONDS."""
        deadline = time.monotonic() + STALL_SECONDS
        while self.running and self.hits.framed >= _RESUME_WAITING:
            left = deadline - time.monotonic()
            if left <= 0:
                log(f"the main process read no hits for {STALL_SECONDS:.0f} s: "
                    f"{self.hits.drop_unsent()} dropped")
                return
            stopping, _, _ = select.select([CONTROL_FD], [HITS_FD], [], left)
            if stopping:
                self.running = False  # and _stop sends what waits
                return
            self._send_hits()

    def _stop(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        for connection in list(self.connections.values()):
            self._close(connection)
        self.hits.frame()
        os.set_blocking(HITS_FD, True)
        try:
            self.hits.send(HITS_FD)
        except OSError as exc:
            log(f"{self.hits.framed} hits not sent: {exc}")
        os.close(HITS_FD)


def log(message: str) -> None:
    print(f"redirect worker {os.getpid()}: {message}", file=sys.stderr, flush=True)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the main process's to handle
    settings: dict[str, Any] = json.loads(_read_line(CONTROL_FD))
    keys = [base64.b64decode(key) for key in settings["keys"]]
    hits = HitBatch(settings["public_url"])
    redirector = Redirector(LinkSigner(keys), hits, settings["public_url"])
    listeners = [socket.socket(fileno=FIRST_LISTENER_FD + i) for i in range(settings["listeners"])]
    for listener in listeners:
        listener.setblocking(False)
    handoff = socket.socket(fileno=HANDOFF_FD)
    handoff.settimeout(5)  # the main process reads these at once; never wait for it for ever
    os.set_blocking(HITS_FD, False)
    gc.collect()
    gc.freeze()  # what start-up made lives as long as the process: out of the collector's way
    Worker(redirector, hits, listeners, handoff, settings["idle_timeout"]).run()


def _read_line(fd: int) -> bytes:
    """The first line of ``fd``, read without buffering past it."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line


if __name__ == "__main__":
    main()
