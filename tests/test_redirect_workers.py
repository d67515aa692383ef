"""Redirect workers (http.redirect_workers): clicks answered by processes of their own over real
sockets, recorded by the main process with their bot verdicts; tampered tokens 404; every other
request, first or later on a connection, pipelined or not, answered by the main process; a killed
worker replaced; no worker left once the service stops, and the hits they held recorded."""

from __future__ import annotations

import http.client
import json
import marshal
import os
import signal
import socket
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from smtpeter import tracking_urls
from smtpeter.config import ConfigError, parse_config
from smtpeter.ingress.http import redirect_worker, redirect_workers
from smtpeter.links import Link
from tests.support.http import Client
from tests.support.rig import Rig, sleep
from tests.support.sink import free_port_on

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
TARGET = "https://shop.example/offer?size=42&colour=red"
BOT_SECONDS = 0.5
WORKERS = 2


Request = tuple[str, str, dict[str, str], bytes | None]  # method, path, headers, body


def exchange(port: int, requests: list[Request]) -> list[tuple[int, Any, bytes]]:
    """The requests one after the other on one keep-alive connection (in a thread: the service
    answers in this process's reactor); each answer's status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    try:
        for method, path, headers, body in requests:
            connection.request(method, path, body=body, headers={"User-Agent": BROWSER, **headers})
            response = connection.getresponse()
            answers.append((response.status, response.headers, response.read()))
    finally:
        connection.close()
    return answers


def pipelined(port: int, data: bytes) -> bytes:
    """``data`` sent in one piece (its last request says Connection: close); what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


class RedirectWorkerTests(unittest.TestCase):
    async def start(self, workers: int = WORKERS) -> Rig:
        self.port = free_port_on("127.0.0.1")
        self.public_url = f"http://127.0.0.1:{self.port}"
        rig = self.rig = Rig(self)
        rig.sink("127.0.0.2")
        await rig.start(sections={
            "http": {"listen": [f"tcp:{self.port}:interface=127.0.0.1"], "public_url": self.public_url,
                     "redirect_workers": workers},
            "tracking": {"bot_seconds": BOT_SECONDS}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        self.client = Client(self.public_url, rig.login.token)
        (self.recipient_id,) = await rig.send("bob@dest.test")
        await rig.wait_for(self.recipient_id, "delivered")
        return rig

    def link(self, position: int = 1, target: str = TARGET) -> str:
        """The path of a signed click link of the delivered recipient."""
        where = tracking_urls.target(target)
        assert where is not None
        signer = self.rig.service.api.links
        token = signer.sign(Link("click", self.recipient_id, position), where.url.encode())
        return tracking_urls.click_url(self.public_url, token, where)[len(self.public_url):]

    def tampered(self, path: str) -> str:
        at = len("/c/") + 20
        return path[:at] + ("A" if path[at] != "A" else "B") + path[at + 1:]

    async def clicks(self, count: int) -> list[dict[str, Any]]:
        """The recipient's click events from GET /v1/events, once there are ``count``."""
        deadline = reactor.seconds() + 15
        while True:
            response = await self.client.get(f"/v1/events/messageid/{self.recipient_id}")
            self.assertEqual(response.code, 200, response.body)
            found = [e["data"] for e in response.json if e["event"] == "click"]
            if len(found) >= count or reactor.seconds() > deadline:
                self.assertEqual(len(found), count, found)
                return found
            await sleep(0.2)

    def assert_served_by_workers(self) -> None:
        workers = self.rig.service.redirect_workers
        self.assertEqual(len(workers.pids()), WORKERS)
        for port in workers.listeners:  # this process accepts nothing on the listener itself
            self.assertNotIn(port, reactor.getReaders())

    async def test_clicks_are_answered_by_workers_and_recorded_here(self) -> None:
        await self.start()
        self.assert_served_by_workers()
        path = self.link()
        answers = await deferToThread(exchange, self.port, [("HEAD", path, {}, None)])
        self.assertEqual(answers[0][0], 302)
        await sleep(BOT_SECONDS + 0.1)
        answers = await deferToThread(exchange, self.port, [
            ("GET", path, {}, None), ("GET", self.tampered(path), {}, None), ("GET", path + "x", {}, None)])
        (status, headers, _), (bad, bad_headers, page), (longer, _, _) = answers
        self.assertEqual((status, headers["Location"]), (302, TARGET))
        self.assertEqual((bad, bad_headers["Location"], longer), (404, None, 404))
        self.assertIn(b"This link is not valid", page)
        clicks = await self.clicks(2)
        self.assertEqual(sorted((c["bot"], c["bot_reason"]) for c in clicks), [(False, ""), (True, "head")])
        person = next(c for c in clicks if not c["bot"])
        self.assertEqual((person["destination"], person["ip"], person["url"]),
                         (TARGET, "127.0.0.1", self.public_url + path))
        self.assertIn(BROWSER, person["headers"])

    async def test_other_requests_go_to_the_main_process(self) -> None:
        await self.start()
        self.assert_served_by_workers()
        path = self.link()
        token = {"Authorization": f"Bearer {self.rig.login.token}"}
        send = {"recipient": "carol@dest.test", "subject": "hi", "text": "Hello.", "from": "news@example.com"}
        body = json.dumps(send).encode()
        # A click, then the API on the same connection, then a click again (Twisted's machinery now).
        answers = await deferToThread(exchange, self.port, [
            ("GET", path, {}, None), ("GET", "/metrics", {}, None),
            ("POST", "/v1/send", {**token, "Content-Type": "application/json"}, body),
            ("GET", path, {}, None), ("GET", self.tampered(path), {}, None)])
        self.assertEqual([a[0] for a in answers], [302, 200, 200, 302, 404])
        self.assertIn(b"smtpeter_clicks_total", answers[1][2])
        self.assertIn(b"carol@dest.test", answers[2][2])
        self.assertEqual(answers[3][1]["Location"], TARGET)
        # The API as a connection's first request.
        (metrics,) = await deferToThread(exchange, self.port, [("GET", "/metrics", {}, None)])
        self.assertEqual(metrics[0], 200)
        # Pipelined: two clicks and an API request in one piece, the last closing the connection.
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {BROWSER}\r\n\r\n".encode()
        received = await deferToThread(
            pipelined, self.port,
            request + request + b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(received.count(b"HTTP/1.1 302 Found"), 2, received[:400])
        self.assertIn(b"HTTP/1.1 200 OK", received)
        self.assertIn(b'"openapi"', received)
        await sleep(BOT_SECONDS)
        self.assertEqual(len(await self.clicks(4)), 4)  # none lost, none twice

    async def test_a_killed_worker_is_replaced(self) -> None:
        await self.start()
        workers = self.rig.service.redirect_workers
        victim = workers.pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = reactor.seconds() + 30
        while victim in workers.pids() or len(workers.pids()) < WORKERS:
            self.assertLess(reactor.seconds(), deadline, "the worker was not replaced")
            await sleep(0.1)
        for _ in range(2 * WORKERS):  # new connections, whichever worker takes them
            (answer,) = await deferToThread(exchange, self.port, [("GET", self.link(), {}, None)])
            self.assertEqual(answer[0], 302)

    async def test_stopping_leaves_no_worker_and_records_their_hits(self) -> None:
        rig = await self.start()
        await sleep(BOT_SECONDS)
        pids = rig.service.redirect_workers.pids()
        requests: list[Request] = [("GET", self.link(p), {}, None) for p in (1, 2, 3)]
        answers = await deferToThread(exchange, self.port, requests)
        self.assertEqual([a[0] for a in answers], [302] * 3)
        storage = await rig.harness.admin()
        await rig.harness.stop_async()  # at once: the hits may still be in the workers
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}"), pid)
        events = await storage.events(self.recipient_id)
        self.assertEqual(sorted(e.data["position"] for e in events if e.type == "click"), [1, 2, 3])

    async def test_hits_wait_in_the_workers_while_the_hit_log_is_behind(self) -> None:
        self.patch(redirect_workers, "BEHIND", 2)  # behind from the second hit waiting to be written
        await self.start()
        await sleep(BOT_SECONDS)
        for position in range(1, 7):
            (answer,) = await deferToThread(exchange, self.port, [("GET", self.link(position), {}, None)])
            self.assertEqual(answer[0], 302)
        self.assertEqual(len({c["url"] for c in await self.clicks(6)}), 6)  # each link once

    async def test_without_workers_the_reactor_answers(self) -> None:
        await self.start(workers=0)
        self.assertEqual(self.rig.service.redirect_workers.pids(), [])
        answers = await deferToThread(exchange, self.port, [("GET", self.link(), {}, None),
                                                            ("GET", "/metrics", {}, None)])
        self.assertEqual([a[0] for a in answers], [302, 200])


class RedirectWorkerConfigTests(unittest.TestCase):
    def test_a_count(self) -> None:
        self.assertIsNone(parse_config({}).http.redirect_workers)
        self.assertEqual(parse_config({"http": {"redirect_workers": 0}}).http.redirect_workers, 0)
        with self.assertRaises(ConfigError):
            parse_config({"http": {"redirect_workers": -1}})
        with self.assertRaises(ConfigError):
            parse_config({"http": {"redirect_workers": "2"}})


class HitPipeTests(unittest.TestCase):
    """A worker's frames of hits over a pipe that takes only part of them at a time."""

    def test_a_header_block_goes_once_a_frame(self) -> None:
        """Equal header blocks read from different requests travel as one object."""
        hits = redirect_worker.HitBatch("https://t.example")
        link = Link("click", "0" * 18, 3)
        browser = b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\nAccept-Language: nl"
        for n in range(50):
            head = bytes(bytearray(browser))  # a new object each time, as each request's is
            hits.add("click", link, f"https://shop.example/{n}", b"GET", b"/c/x", head, "192.0.2.1", False)
        hits.add("click", link, "https://shop.example/", b"GET", b"/c/x", b"User-Agent: curl", "192.0.2.1",
                 False)
        hits.frame()
        frame = hits.frames[0][0]
        self.assertEqual(frame.count(browser), 1)
        _, received = marshal.loads(frame[4:])  # noqa: S302 - the frame made just above
        self.assertEqual(len({id(hit[8]) for hit in received}), 2)
        self.assertEqual([hit[8] for hit in received], [browser] * 50 + [b"User-Agent: curl"])

    def test_frames_arrive_whole_and_what_is_given_up_is_counted(self) -> None:
        hits = redirect_worker.HitBatch("https://t.example")
        link = Link("click", "0" * 18, 3)
        for batch in range(6):
            for n in range(1000):
                hits.add("click", link, f"https://shop.example/{batch}/{n}", b"GET", b"/c/x",
                         b"User-Agent: x", "192.0.2.1", False)
            hits.frame()  # a frame is some 80 KB: more than the pipe holds
        received: list[tuple] = []
        dropped: list[int] = []
        owner = SimpleNamespace(take_hits=lambda d, h: (dropped.append(d), received.extend(h)),
                                reactor=reactor)
        reader_end, writer_end = os.pipe()
        os.set_blocking(writer_end, False)
        reader = redirect_workers._Hits(owner, reader_end)
        self.addCleanup(reader.close)
        self.assertFalse(hits.send(writer_end))  # the pipe is full, a frame sent in part
        self.assertEqual(hits.drop_unsent(), 5000)  # all but the frame begun
        hits.frame()  # says what was dropped
        while not hits.send(writer_end):
            reader.drain(1 << 20)
        os.close(writer_end)
        reader.drain()
        self.assertEqual((len(received), sum(dropped)), (1000, 5000))
        self.assertEqual(received[0][1:4], ("click", "0" * 18, 3))
        self.assertEqual(received[-1][5:7], ("https://t.example/c/x", "https://shop.example/0/999"))
        self.assertEqual(hits.framed, 0)
