"""Webhooks: payloads, signatures, the retry schedule on a fake clock, and end to end against real
HTTP receivers (twisted.web on 127.0.0.x) that fail, delay, hang, answer 410 and succeed, with a
restart of smtpeter in the middle. Receivers check every signature with an implementation of
their own: the ``standardwebhooks`` package, and a plain HMAC check written here from the spec."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from smtpeter.config import ConfigError, WebhooksConfig, parse_config
from smtpeter.dns import Resolver
from smtpeter.domains.sealing import Sealer
from smtpeter.events.model import CLICK, DEFERRED, DELIVERY, FAILURE
from smtpeter.ids import new_id
from smtpeter.storage import Storage, open_storage
from smtpeter.storage.db import SQL
from smtpeter.storage.models import Event, NewEvent, Position
from smtpeter.storage.webhooks import CALL_DELIVERED, CALL_FAILED, CALL_PENDING, WebhookCall
from smtpeter.webhooks import model, ownership
from smtpeter.webhooks.client import Answer, CallError, WebhookClient
from smtpeter.webhooks.registry import WebhookRegistry
from smtpeter.webhooks.sender import SenderSettings, WebhookSender, outcome
from smtpeter.webhooks.signing import signed_headers
from tests.support.backends import sqlite_url
from tests.support.dns_server import TestDNSServer
from tests.support.harness import Harness
from tests.support.http import Client
from tests.support.rig import sleep
from tests.support.sink import free_port_on

try:
    import standardwebhooks
except ImportError:  # the plain check below still runs
    standardwebhooks = None

SCHEDULE = tuple(WebhooksConfig().retry_schedule)
RECEIVER_IP = "127.0.0.5"  # inside webhooks.allow_networks in these tests
ELSEWHERE_IP = "127.0.0.6"  # never allowed
# Retries in seconds rather than hours for the tests on the real clock.
FAST = {"allow_networks": [f"{RECEIVER_IP}/32"], "timeout": 1.0,
        "retry_schedule": [0.3, 0.3, 0.5, 0.5, 1.0, 1.0, 1.0]}


# -- the receiver's side ----------------------------------------------------------------------------


def plain_verify(secrets: list[str], headers: dict[str, str], body: bytes, now: float) -> bool:
    """Standard Webhooks' check as its spec words it, written without the package: some ``v1,``
    signature is the base64 HMAC-SHA256, under a secret's base64-decoded bytes after ``whsec_``,
    of ``id.timestamp.body``; the timestamp within five minutes of now."""
    call_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not call_id or not stamp.isdigit() or abs(int(stamp) - now) > 300:
        return False
    offered = [part.split(",", 1)[1] for part in headers.get("webhook-signature", "").split()
               if part.startswith("v1,")]
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, f"{call_id}.{stamp}.".encode() + body,
                                             hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, signature) for signature in offered):
            return True
    return False


def package_verify(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    if standardwebhooks is None:
        return True
    for secret in secrets:
        try:
            standardwebhooks.Webhook(secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            continue
        return True
    return False


@dataclass
class Received:
    time: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None = None  # None: not a signed call (or no secret known yet)
    status: int | None = None  # what it answered; None: the caller was gone first

    @property
    def payload(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver(Resource):
    """A webhook receiver on one address: keeps every request, checks its signature, answers as
    ``behaviour`` says (files in ``files`` are served as they are)."""

    isLeaf = True

    def __init__(self, ip: str) -> None:
        super().__init__()
        self.ip = ip
        self.received: list[Received] = []
        self.secrets: list[str] = []
        self.files: dict[str, bytes] = {}
        self.behaviour: Callable[[Received], Reply] = lambda _: Reply()
        self.url = ""
        self._answers: list[Any] = []  # answers given later

    def _forget_answers(self) -> None:
        for answer in self._answers:
            if answer.active():
                answer.cancel()

    async def start(self, test: unittest.TestCase, port: int = 0) -> Receiver:
        listening = await TCP4ServerEndpoint(reactor, port, interface=self.ip).listen(Site(self))
        test.addCleanup(listening.stopListening)
        test.addCleanup(self._forget_answers)
        self.url = f"http://{self.ip}:{listening.getHost().port}"
        return self

    def render(self, request: Any) -> Any:
        headers = {name.decode().lower(): values[0].decode()
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        received = Received(reactor.seconds(), request.method.decode(), request.path.decode(), headers,
                            request.content.read())
        self.received.append(received)
        if received.method == "GET":
            received.status = 200 if received.path in self.files else 404
            request.setResponseCode(received.status)
            return self.files.get(received.path, b"no such file")
        if "webhook-signature" in headers and self.secrets:
            by_plain = plain_verify(self.secrets, headers, received.body, time.time())
            by_package = package_verify(self.secrets, headers, received.body)
            received.verified = by_plain and by_package
        reply = self.behaviour(received)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer() -> None:
            if gone or request.finished:
                return
            request.setResponseCode(reply.status)
            for name, value in reply.headers.items():
                request.setHeader(name, value)
            request.write(reply.body)
            request.finish()
            received.status = reply.status

        if reply.delay:
            self._answers.append(reactor.callLater(reply.delay, answer))
        else:
            answer()
        return NOT_DONE_YET

    def calls(self, path: str | None = None) -> list[Received]:
        """The signed POSTs received (at ``path``)."""
        return [r for r in self.received if r.method == "POST" and "webhook-id" in r.headers
                and (path is None or r.path == path)]

    def successes(self, path: str | None = None) -> list[Received]:
        return [r for r in self.calls(path) if r.status is not None and 200 <= r.status < 300]


async def until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = reactor.seconds() + timeout
    while not await _value(predicate()):
        if reactor.seconds() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        await sleep(0.05)


async def _value(value: Any) -> Any:
    return await value if isinstance(value, defer.Deferred) or hasattr(value, "__await__") else value


def delivery_data(recipient: str, tags: tuple[str, ...] = ("news",)) -> dict[str, Any]:
    return {"recipient": recipient, "envelope": "news@example.com", "attempt": 1, "from": "192.0.2.1",
            "to": "198.51.100.7", "mx": "mx.example.net", "code": 250, "status": "2.0.0",
            "description": "Ok: queued as 1234", "state": "data", "tags": list(tags)}


# -- payloads and signatures --------------------------------------------------------------------------


def event(kind: str, data: dict[str, Any], time_: float = 1_767_225_600.0) -> Event:
    return Event(7, "acct", "01abcdefghjkmnpqrs", data.get("recipient", "r@example.net"), kind, time_, data,
                 Position(0, 7))


class PayloadTests(unittest.TestCase):
    def test_types_and_their_old_names(self) -> None:
        self.assertEqual([model.hook_type(name) for name in ("Delivery", "feedbackloop", "feedbackloops",
                                                             "unsubscribe", "attempt", "")],
                         ["delivery", "abuse", "abuse", "unsubscribe", None, None])

    def test_delivery_has_smtpeters_fields(self) -> None:
        body = model.payload(event(DELIVERY, delivery_data("Bob@example.net", ("news", "nov"))))
        self.assertEqual(body, {
            "id": "01abcdefghjkmnpqrs", "type": "delivery", "timestamp": "2026-01-01 00:00:00",
            "time": 1_767_225_600, "recipient": "Bob@example.net", "tags": "news;nov", "code": 250,
            "extended": "2.0.0", "description": "Ok: queued as 1234", "envelope": "news@example.com",
            "attempt": 1, "from": "192.0.2.1", "to": "198.51.100.7", "mx": "mx.example.net", "state": "data"})

    def test_failures_say_whether_they_are_final(self) -> None:
        data = {**delivery_data("r@example.net"), "code": 450, "status": "4.2.0", "state": "rcpt"}
        deferred = model.payload(event(DEFERRED, {**data, "retry": 1_767_226_200.0}))
        self.assertEqual((deferred["type"], deferred["action"], deferred["result"], deferred["state"],
                          deferred["code"], deferred["extended"]),
                         ("failure", "failure", "deferred", "rcpt", 450, "4.2.0"))
        failed = model.payload(event(FAILURE, {**data, "code": 550, "status": "5.1.1", "type": "failed"}))
        self.assertEqual((failed["type"], failed["action"], failed["result"]),
                         ("failure", "failed", "failed"))
        expired = model.payload(event(FAILURE, {**data, "type": "expired", "state": "expired"}))
        self.assertEqual((expired["action"], expired["result"], expired["state"]),
                         ("failed", "expired", "expired"))

    def test_click_names_the_original_url(self) -> None:
        body = model.payload(event(CLICK, {
            "recipient": "r@example.net", "tags": [], "ip": "203.0.113.9", "useragent": "Mozilla/5.0",
            "referer": "", "url": "https://t.example/c/TOKEN/https/shop.example/", "destination":
            "https://shop.example/", "bot": False, "bot_reason": "", "headers": "User-Agent: Mozilla/5.0"}))
        self.assertEqual((body["type"], body["original"], body["ip"], body["useragent"], body["tags"]),
                         ("click", "https://shop.example/", "203.0.113.9", "Mozilla/5.0", ""))
        self.assertNotIn("destination", body)

    def test_signatures_verify_independently(self) -> None:
        secrets = ["whsec_" + base64.b64encode(os.urandom(24)).decode() for _ in range(2)]
        body = model.body_text(model.payload(event(DELIVERY, delivery_data("r@example.net")))).encode()
        now = int(time.time())
        headers = {name.decode(): value.decode() for name, value in
                   signed_headers("msg_1", now, body, secrets).items()}
        self.assertEqual(len(headers["webhook-signature"].split()), 2)
        for secret in secrets:  # during a rotation a receiver holding either secret verifies
            self.assertTrue(plain_verify([secret], headers, body, now))
            self.assertTrue(package_verify([secret], headers, body))
        self.assertFalse(plain_verify(secrets, headers, body + b" ", now))
        self.assertFalse(package_verify(secrets, headers, body + b" "))
        self.assertFalse(plain_verify(["whsec_" + base64.b64encode(b"x" * 24).decode()], headers, body, now))


class ConfigTests(unittest.TestCase):
    def test_defaults_and_mistakes(self) -> None:
        webhooks = parse_config({}).webhooks
        self.assertEqual((webhooks.allow_networks, webhooks.timeout, webhooks.max_concurrency_per_endpoint),
                         ([], 15.0, 4))
        given = parse_config({"webhooks": {"allow_networks": ["10.0.0.0/8"], "retry_schedule": [1, 2.5]}})
        self.assertEqual((given.webhooks.networks(), given.webhooks.retry_schedule),
                         ([ipaddress.ip_network("10.0.0.0/8")], [1.0, 2.5]))
        for wrong in ({"allow_networks": ["nowhere"]}, {"timeout": 0}, {"max_concurrency_per_endpoint": 0},
                      {"retry_schedule": []}, {"retry_schedule": [5, -1]}, {"allow_network": []}):
            with self.assertRaises(ConfigError, msg=wrong):
                parse_config({"webhooks": wrong})


class OutcomeTests(unittest.TestCase):
    call = WebhookCall("msg_1", "hook", 1, "delivery", "{}", 0, 0.0)

    def test_the_schedule_spans_a_day_and_more(self) -> None:
        self.assertEqual(SCHEDULE, (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0))
        self.assertGreaterEqual(sum(SCHEDULE), 86400)

    def test_results(self) -> None:
        ok = outcome(self.call, 204, "", None, 100.0, 0.1, SCHEDULE)
        self.assertEqual((ok.state, ok.attempt, ok.disable_hook), (CALL_DELIVERED, 1, None))
        retry = outcome(self.call, 500, "answered 500", None, 100.0, 0.1, SCHEDULE)
        self.assertEqual((retry.state, retry.next_attempt), (CALL_PENDING, 105.0))
        # Retry-After: followed when it asks for longer than the schedule, never sooner, at most a day.
        self.assertEqual(outcome(self.call, 503, "", 60.0, 100.0, 0.1, SCHEDULE).next_attempt, 160.0)
        self.assertEqual(outcome(self.call, 503, "", 1.0, 100.0, 0.1, SCHEDULE).next_attempt, 105.0)
        self.assertEqual(outcome(self.call, 429, "", 1e9, 100.0, 0.1, SCHEDULE).next_attempt, 86500.0)
        gone = outcome(self.call, 410, "answered 410", None, 100.0, 0.1, SCHEDULE)
        self.assertIsNotNone(gone.disable_hook)
        last = WebhookCall("msg_1", "hook", 1, "delivery", "{}", len(SCHEDULE), 0.0)
        self.assertEqual(outcome(last, None, "no answer", None, 100.0, 15.0, SCHEDULE).state, CALL_FAILED)


# -- the sender on a fake clock ---------------------------------------------------------------------


class FakeClient:
    """Answers calls from a script (Answers, CallErrors, or Deferreds that fire with one later)."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.requests: list[tuple[float, str, dict[bytes, bytes], bytes]] = []
        self.script: list[Any] = []
        self.in_flight: dict[str, int] = {}
        self.held = 0  # requests waiting for a Deferred of the script
        self.most_in_flight: dict[str, int] = {}

    async def request(self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None = None,
                      *, inside_only: bool = False, read: int = 1024) -> Answer:
        self.requests.append((self.clock.seconds(), url, headers, body or b""))
        self.in_flight[url] = self.in_flight.get(url, 0) + 1
        self.most_in_flight[url] = max(self.most_in_flight.get(url, 0), self.in_flight[url])
        try:
            reply = self.script.pop(0) if self.script else Answer(200, b"", None)
            if isinstance(reply, defer.Deferred):
                self.held += 1
                try:
                    reply = await reply
                finally:
                    self.held -= 1
        finally:
            self.in_flight[url] -= 1
        if isinstance(reply, Exception):
            raise reply
        return reply

    def recipients(self) -> list[str]:
        return [json.loads(body)["recipient"] for _, _, _, body in self.requests]


class SenderTests(unittest.TestCase):
    """Retries, 410, concurrency and restarts with the real schedule on task.Clock (storage: SQLite)."""

    async def setup(self, concurrency: int = 4) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_767_225_600)
        self.storage = await open_storage(sqlite_url(self), reactor)
        self.storage.clock = self.clock
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(self.storage.close()))
        self.account = (await self.storage.create_account("acme")).id
        # IP-literal URLs inside allow_networks: proven by the network, no request made.
        client = WebhookClient(reactor, Resolver(reactor, [("127.0.0.1", 9)]),
                               [ipaddress.ip_network("127.0.0.0/8")], 1.0)
        self.registry = WebhookRegistry(self.storage, Sealer(os.urandom(32)), client, self.clock)
        self.client = FakeClient(self.clock)
        self.settings = SenderSettings(SCHEDULE, 15.0, concurrency, "node-a")
        self.sender = await self.start_sender()

    async def start_sender(self) -> WebhookSender:
        sender = WebhookSender(self.storage, self.client, self.registry.signing_secrets, self.clock,
                               self.settings, pace=0)  # no pacing: only the retry schedule is on the clock
        await sender.start()
        self.addCleanup(self.stop, sender)
        return sender

    async def stop(self, sender: WebhookSender) -> None:
        if sender.running:
            await sender.stop(0)

    async def hook(self, kind: str = "delivery", account: str | None = None, path: str = "/hook") -> str:
        hook, _ = await self.registry.create(account or self.account, kind, "http://127.0.0.1:9" + path)
        hook = await self.registry.verify(account or self.account, hook.id)
        self.assertEqual((hook.state, hook.proof), ("active", "network"))
        return hook.id

    async def record(self, *recipients: str, kind: str = DELIVERY, account: str | None = None) -> None:
        await self.storage.record_events([
            NewEvent(account or self.account, new_id(), recipient, kind, delivery_data(recipient),
                     time=self.clock.seconds()) for recipient in recipients])

    async def quiet(self) -> None:
        """Until the feed has read everything and no round or call is running."""
        last = (await self.storage.db.query("SELECT MAX(id) FROM events"))[0][0] or 0
        await until(lambda: defer.Deferred.fromCoroutine(self._read_up_to(last)), "the feed to catch up")
        still = 0
        while still < 3:  # the same for three looks in a row
            idle = not self.sender.looking and self.sender.calls_in_flight == self.client.held
            still = still + 1 if idle else 0
            await sleep(0.02)

    async def _read_up_to(self, last: int) -> bool:
        return (await self.storage.feed_position("webhooks")).id >= last

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.quiet()

    async def test_retries_follow_the_schedule_until_a_success_then_stop(self) -> None:
        await self.setup()
        hook = await self.hook()
        self.client.script = [Answer(500, b"oops", None)] * 4 + [CallError("no answer within 15 s"),
                                                               Answer(503, b"", 40000.0)]
        start = self.clock.seconds()
        await self.record("a@example.net")
        await self.quiet()
        self.assertEqual(len(self.client.requests), 1)
        for delay in SCHEDULE[:5]:
            await self.advance(delay - 1)
            before = len(self.client.requests)
            await self.advance(1)
            self.assertEqual(len(self.client.requests), before + 1)
        # The sixth answer asked for 40,000 s, more than the schedule's 36,000: honoured.
        await self.advance(36000)
        self.assertEqual(len(self.client.requests), 6)
        await self.advance(4000)
        self.assertEqual(len(self.client.requests), 7)  # a success
        self.assertEqual([t - start for t, *_ in self.client.requests],
                         [0, 5, 305, 2105, 9305, 27305, 67305])
        # Every attempt has the same webhook-id; none comes after the success.
        self.assertEqual({headers[b"webhook-id"] for _, _, headers, _ in self.client.requests},
                         {self.client.requests[0][2][b"webhook-id"]})
        await self.advance(100000)
        self.assertEqual(len(self.client.requests), 7)
        attempts = await self.storage.webhook_attempts(self.account, hook)
        self.assertEqual([(a.attempt, a.status, a.error) for a in attempts][:3], [
            (7, 200, ""), (6, 503, "answered 503"), (5, None, "no answer within 15 s")])
        self.assertEqual(attempts[-1].error, "answered 500: oops")
        self.assertEqual(await self.storage.webhook_call_counts(hook), {CALL_DELIVERED: 1})

    async def test_a_call_is_given_up_after_the_last_retry(self) -> None:
        await self.setup()
        hook = await self.hook()
        self.client.script = [Answer(500, b"", None)] * 20
        await self.record("a@example.net")
        await self.quiet()
        for delay in SCHEDULE:
            await self.advance(delay)
        self.assertEqual(len(self.client.requests), len(SCHEDULE) + 1)
        await self.advance(200000)
        self.assertEqual(len(self.client.requests), len(SCHEDULE) + 1)
        self.assertGreaterEqual(self.client.requests[-1][0] - self.client.requests[0][0], 86400)
        self.assertEqual(await self.storage.webhook_call_counts(hook), {CALL_FAILED: 1})

    async def test_only_the_accounts_events_of_the_hooks_type_since_it_is_active(self) -> None:
        await self.setup()
        await self.record("before@example.net")  # before the hook existed
        await self.quiet()
        self.clock.advance(1)
        await self.hook()
        other = (await self.storage.create_account("other")).id
        await self.record("mine@example.net")
        await self.record("theirs@example.net", account=other)
        await self.record("click@example.net", kind=CLICK)
        await self.record("deferred@example.net", kind=DEFERRED)
        await self.quiet()
        self.assertEqual(self.client.recipients(), ["mine@example.net"])
        # A failure hook gets deferrals and failures.
        await self.hook("failure")
        await self.record("deferred2@example.net", kind=DEFERRED)
        await self.quiet()
        self.assertEqual(self.client.recipients()[1:], ["deferred2@example.net"])

    async def test_410_disables_the_hook_until_it_is_enabled(self) -> None:
        await self.setup(concurrency=1)
        hook = await self.hook()
        self.client.script = [Answer(410, b"", None)]
        await self.record("a@example.net", "b@example.net", "c@example.net")
        await self.quiet()
        self.assertEqual(self.client.recipients(), ["a@example.net"])
        stored = await self.storage.webhook(self.account, hook)
        self.assertEqual(stored.state, "disabled")
        self.assertIn("410", stored.problem)
        await self.record("d@example.net")
        await self.advance(100000)
        self.assertEqual(self.client.recipients(), ["a@example.net"])
        await self.registry.enable(self.account, hook)
        await self.record("e@example.net")
        await self.quiet()
        self.assertEqual(self.client.recipients(), ["a@example.net", "e@example.net"])

    async def test_concurrency_is_bounded_per_endpoint(self) -> None:
        await self.setup(concurrency=2)
        await self.hook()
        clicks = await self.hook("click", path="/clicks")
        held = [defer.Deferred(), defer.Deferred()]
        self.client.script = [*held, Answer(200, b"", None)]
        await self.record(*(f"r{i}@example.net" for i in range(5)))
        await self.quiet()
        self.assertEqual(self.client.recipients(), ["r0@example.net", "r1@example.net"])
        # Another endpoint is not held up by a full one.
        await self.record("click@example.net", kind=CLICK)
        await self.quiet()
        self.assertEqual(self.client.recipients()[2:], ["click@example.net"])
        self.assertEqual(await self.storage.webhook_call_counts(clicks), {CALL_DELIVERED: 1})
        # A slot comes free: the rest go through it, two at a time at most.
        held[0].callback(Answer(200, b"", None))
        await self.quiet()
        self.assertEqual(self.client.recipients()[3:], ["r2@example.net", "r3@example.net", "r4@example.net"])
        held[1].callback(Answer(200, b"", None))
        await self.quiet()
        self.assertEqual(self.client.most_in_flight, {"http://127.0.0.1:9/hook": 2,
                                                      "http://127.0.0.1:9/clicks": 1})
        self.assertEqual(len(self.client.requests), 6)

    async def test_calls_resume_after_a_restart(self) -> None:
        await self.setup(concurrency=1)
        await self.hook()
        hanging: defer.Deferred = defer.Deferred()
        self.client.script = [Answer(500, b"", None), hanging]
        await self.record("a@example.net", "b@example.net")
        await self.quiet()
        self.assertEqual(self.client.recipients(), ["a@example.net", "b@example.net"])
        # Stopping cuts the call in flight (b) after the grace time; a waits for its retry.
        await self.sender.stop(0)
        self.assertTrue(hanging.called)
        await self.record("c@example.net")  # while stopped
        self.sender = await self.start_sender()
        await self.quiet()
        # b was cut: sent again at once, under the same webhook-id; c is new.
        self.assertEqual(self.client.recipients(), ["a@example.net", "b@example.net", "b@example.net",
                                                    "c@example.net"])
        self.assertEqual(self.client.requests[1][2][b"webhook-id"], self.client.requests[2][2][b"webhook-id"])
        await self.advance(5)
        self.assertEqual(self.client.recipients()[-1], "a@example.net")
        await self.advance(100000)
        self.assertEqual(len(self.client.requests), 5)


# -- ownership over real sockets --------------------------------------------------------------------


class OwnershipTests(unittest.TestCase):
    async def prove(self, receiver: Receiver, trusted: Any = ()) -> ownership.Proof:
        client = WebhookClient(reactor, Resolver(reactor, [("127.0.0.1", 9)]),
                               [ipaddress.ip_network("127.0.0.0/8")], 2.0)
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        receiver.secrets = [secret]
        return await ownership.prove(client, "hook", receiver.url + "/in/hook.php", "tok3n", [secret],
                                     time.time, no_proof_networks=trusted)

    async def test_the_token_file(self) -> None:
        receiver = await Receiver("127.0.0.1").start(self)
        receiver.files["/.well-known/smtpeter-webhook-tok3n.txt"] = b"tok3n\n"
        self.assertEqual(await self.prove(receiver), ownership.Proof("file", ""))
        self.assertEqual([r.method for r in receiver.received], ["GET"])

    async def test_the_verification_call(self) -> None:
        receiver = await Receiver("127.0.0.1").start(self)
        receiver.behaviour = lambda r: Reply(200, json.dumps({"challenge": r.payload["challenge"]}).encode())
        self.assertEqual(await self.prove(receiver), ownership.Proof("challenge", ""))
        (call,) = receiver.calls()
        self.assertEqual((call.path, call.payload["type"], call.verified),
                         ("/in/hook.php", "verification", True))
        receiver.behaviour = lambda r: Reply(200, r.payload["challenge"].encode())  # the bare challenge
        self.assertEqual((await self.prove(receiver)).method, "challenge")

    async def test_no_proof(self) -> None:
        receiver = await Receiver("127.0.0.1").start(self)
        receiver.behaviour = lambda _: Reply(200, b"ok")
        receiver.files["/.well-known/smtpeter-webhook-tok3n.txt"] = b"someone else's token"
        proof = await self.prove(receiver)
        self.assertIsNone(proof.method)
        self.assertIn("ownership file: answered 200 without the token", proof.problem)
        self.assertIn("verification call: answered 200 without the challenge", proof.problem)
        # Inside the networks that need no proof: proven without a request.
        before = len(receiver.received)
        self.assertEqual(await self.prove(receiver, None), ownership.Proof("network", ""))
        self.assertEqual(len(receiver.received), before)


# -- end to end ---------------------------------------------------------------------------------------


class EndToEndTests(unittest.TestCase):
    timeout = 120

    async def start(self, webhooks: dict[str, Any] | None = None, **sections: Any) -> None:
        self.harness = Harness(self, webhooks=FAST if webhooks is None else webhooks, **sections)
        self.login = await self.harness.login("acme")
        self.other = await self.harness.login("other", domains=("other.example",))
        await self.harness.start()
        self.api = Client(self.harness.http_url, self.login.token)

    async def call(self, method: str, path: str, status: int = 200, client: Client | None = None,
                   **kwargs: Any) -> Any:
        response = await (client or self.api).request(method, path, **kwargs)
        self.assertEqual(response.code, status, response.body)
        return response.json

    async def make_hook(self, receiver: Receiver, path: str, kind: str = "delivery",
                        client: Client | None = None) -> dict[str, Any]:
        made = await self.call("POST", "/v1/webhook", json_body={"type": kind, "url": receiver.url + path},
                               client=client)
        self.assertTrue(made["secret"].startswith("whsec_"))
        receiver.secrets.append(made["secret"])
        return made

    async def wait_active(self, hook_id: str, client: Client | None = None) -> dict[str, Any]:
        async def active() -> bool:
            return (await self.call("GET", f"/v1/webhook/{hook_id}", client=client))["state"] == "active"
        await until(lambda: defer.Deferred.fromCoroutine(active()), "the hook to be active")
        return await self.call("GET", f"/v1/webhook/{hook_id}", client=client)

    async def record(self, storage: Storage, account_id: str, *recipients: str, kind: str = DELIVERY) -> None:
        await storage.record_events([NewEvent(account_id, new_id(), recipient, kind, delivery_data(recipient))
                                     for recipient in recipients])

    async def test_every_event_arrives_once_across_failures_and_a_restart(self) -> None:
        receiver = await Receiver(RECEIVER_IP).start(self)
        first_time: set[str] = set()

        def behaviour(received: Received) -> Reply:
            recipient = received.payload["recipient"]
            first = recipient not in first_time
            first_time.add(recipient)
            if first and recipient == "fail@example.net":
                return Reply(500, b"internal error")
            if recipient == "slow@example.net":
                return Reply(200, b"", delay=0.3)  # slow but within the timeout
            if first and recipient == "hang@example.net":
                return Reply(503, b"", delay=3.0)  # past the timeout: we give up waiting
            if first and recipient == "later@example.net":
                return Reply(503, b"busy", headers={"Retry-After": "1"})
            return Reply(204)

        receiver.behaviour = behaviour
        await self.start()
        hook = await self.make_hook(receiver, "/hook")
        self.assertEqual(hook["state"], "pending")  # until the check made right away is done
        hook = await self.wait_active(hook["id"])
        self.assertEqual((hook["proof"], hook["type"], hook["url"]),
                         ("network", "delivery", receiver.url + "/hook"))
        other_client = Client(self.harness.http_url, self.other.token)
        other_hook = await self.make_hook(receiver, "/other", client=other_client)
        await self.wait_active(other_hook["id"], client=other_client)
        storage = await self.harness.admin()
        first = ["fail@example.net", "slow@example.net", "hang@example.net", "later@example.net",
                 "ok1@example.net", "ok2@example.net"]
        await self.record(storage, self.login.account_id, *first)
        await self.record(storage, self.login.account_id, "click@example.net", kind=CLICK)
        await self.record(storage, self.other.account_id, "theirs@example.net")
        await until(lambda: any(r.payload["recipient"] == "hang@example.net" for r in receiver.calls("/hook"))
                    and any(r.status == 500 for r in receiver.calls("/hook")), "a failure and a hang")
        # Restart in the middle: calls waiting for a retry, one in flight; events come while it is down.
        await self.harness.stop_async()
        second = ["down1@example.net", "down2@example.net"]
        await self.record(storage, self.login.account_id, *second)
        await self.harness.start()
        self.api = Client(self.harness.http_url, self.login.token)
        expected = set(first + second)
        await until(lambda: {r.payload["recipient"] for r in receiver.successes("/hook")} >= expected,
                    "every event to arrive")
        await sleep(1.5)  # time for anything sent twice to show
        calls = receiver.calls("/hook")
        successes = receiver.successes("/hook")
        self.assertEqual(sorted(r.payload["recipient"] for r in successes), sorted(expected))
        self.assertTrue(all(r.verified for r in calls), [r.headers for r in calls if not r.verified])
        by_id: dict[str, list[Received]] = {}
        for received in calls:
            by_id.setdefault(received.headers["webhook-id"], []).append(received)
        self.assertEqual(len(by_id), len(expected))  # one webhook-id per event, on every retry
        for attempts in by_id.values():
            statuses = [r.status for r in attempts]
            self.assertEqual(len({r.payload["recipient"] for r in attempts}), 1)
            self.assertEqual(sum(1 for s in statuses if s is not None and s < 300), 1, statuses)
            self.assertTrue(200 <= (statuses[-1] or 0) < 300, statuses)  # none after the success
        later = [r.time for r in calls if r.payload["recipient"] == "later@example.net"]
        self.assertGreaterEqual(later[1] - later[0], 0.95)  # Retry-After: 1, over the schedule's 0.3
        # The other account's hook got only its event.
        self.assertEqual([r.payload["recipient"] for r in receiver.successes("/other")],
                         ["theirs@example.net"])
        payload = next(r.payload for r in successes if r.payload["recipient"] == "ok1@example.net")
        self.assertEqual({k: payload[k] for k in ("type", "code", "extended", "description", "tags")},
                         {"type": "delivery", "code": 250, "extended": "2.0.0",
                          "description": "Ok: queued as 1234", "tags": "news"})
        self.assertEqual(len(payload["id"]), 18)
        self.assertEqual((await self.call("GET", f"/v1/webhook/{hook['id']}"))["calls"], {"delivered": 8})
        attempts = await self.call("GET", f"/v1/webhook/{hook['id']}/calls")
        self.assertEqual(len(attempts), len(calls))  # each request, with its result
        errors = [a["error"] for a in attempts]
        self.assertIn("answered 500: internal error", errors)
        self.assertIn("no answer within 1 s", errors)
        self.assertIn("answered 503: busy", errors)
        self.assertTrue(all(a["duration"] >= 0 and a["event"] == "delivery" for a in attempts))
        self.assertEqual(len(await self.call("GET", f"/v1/webhook/{hook['id']}/calls?limit=2")), 2)

    async def test_410_disables_and_enable_takes_it_up_again(self) -> None:
        receiver = await Receiver(RECEIVER_IP).start(self)
        gone = [True]
        receiver.behaviour = lambda _: Reply(410) if gone[0] else Reply(200)
        await self.start()
        hook = await self.make_hook(receiver, "/hook")
        await self.wait_active(hook["id"])
        storage = await self.harness.admin()
        await self.record(storage, self.login.account_id, "one@example.net")

        async def disabled() -> bool:
            return (await self.call("GET", f"/v1/webhook/{hook['id']}"))["state"] == "disabled"
        await until(lambda: defer.Deferred.fromCoroutine(disabled()), "the hook disabled")
        shown = await self.call("GET", f"/v1/webhook/{hook['id']}")
        self.assertIn("410", shown["problem"])
        await self.record(storage, self.login.account_id, "two@example.net")
        await sleep(1.0)
        self.assertEqual([r.payload["recipient"] for r in receiver.calls()], ["one@example.net"])
        gone[0] = False
        enabled = await self.call("POST", f"/v1/webhook/{hook['id']}/enable")
        self.assertEqual(enabled["state"], "active")
        await self.record(storage, self.login.account_id, "three@example.net")
        await until(lambda: receiver.successes(), "a call after enabling")
        await sleep(0.5)
        self.assertEqual([r.payload["recipient"] for r in receiver.calls()],
                         ["one@example.net", "three@example.net"])

    async def test_rest_per_account_validation_old_names_and_rotation(self) -> None:
        receiver = await Receiver(RECEIVER_IP).start(self)
        await self.start()
        for body, words in (({}, "type is required"), ({"type": "nope", "url": receiver.url}, "type must be"),
                            ({"type": "click", "url": "ftp://example.com/"}, "url: not an http"),
                            ({"type": "click", "url": "http://u:p@example.com/"}, "credentials"),
                            ({"type": "click", "url": receiver.url, "secret": "mine"},
                             "unknown field 'secret'")):
            response = await self.api.post("/v1/webhook", json_body=body)
            self.assertEqual(response.code, 400, body)
            self.assertIn(words, response.error)
        hook = await self.make_hook(receiver, "/hook")
        complaints = await self.call("POST", "/v1/feedbackloop", json_body={"type": "feedbackloops",
                                                                             "url": receiver.url + "/fbl"})
        self.assertEqual(complaints["type"], "abuse")
        self.assertEqual(sorted(h["id"] for h in await self.call("GET", "/v1/feedbackloops")),
                         sorted([hook["id"], complaints["id"]]))
        listed = await self.call("GET", "/v1/webhooks")
        self.assertNotIn("secret", json.dumps(listed))  # a secret is shown when made, never listed
        self.assertEqual(len(listed), 2)
        # Another account's hook is not found, whatever is asked of it.
        other = Client(self.harness.http_url, self.other.token)
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/verify"), ("POST", "/enable"),
                             ("POST", "/secret"), ("GET", "/calls")):
            await self.call(method, f"/v1/webhook/{hook['id']}{path}", 404, client=other)
            await self.call(method, f"/v1/webhook/{new_id()}{path}", 404)
        self.assertEqual(await self.call("GET", "/v1/webhooks", client=other), [])
        await self.call("GET", f"/v1/webhook/{hook['id']}/calls?limit=0", 400)
        await self.call("GET", f"/v1/webhook/{hook['id']}", 401, token="wrong")
        # A rotation: for a day calls are signed with both secrets; either verifies alone.
        await self.wait_active(hook["id"])
        rotated = await self.call("POST", f"/v1/webhook/{hook['id']}/secret")
        self.assertNotEqual(rotated["secret"], hook["secret"])
        receiver.secrets = [rotated["secret"]]
        storage = await self.harness.admin()
        await self.record(storage, self.login.account_id, "a@example.net")
        await until(lambda: receiver.successes("/hook"), "the call")
        (received,) = receiver.calls("/hook")
        self.assertTrue(received.verified)
        self.assertEqual(len(received.headers["webhook-signature"].split()), 2)
        for secret in (hook["secret"], rotated["secret"]):
            self.assertTrue(plain_verify([secret], received.headers, received.body, time.time()))
            self.assertTrue(package_verify([secret], received.headers, received.body))
        self.assertEqual(await self.call("DELETE", f"/v1/webhook/{hook['id']}"), True)
        await self.call("GET", f"/v1/webhook/{hook['id']}", 404)

    async def test_no_request_to_loopback_without_allow_networks(self) -> None:
        receiver = await Receiver("127.0.0.1").start(self)
        await self.start(webhooks={"timeout": 1.0, "retry_schedule": [0.2]})
        hook = await self.make_hook(receiver, "/hook")
        self.assertIn("verification", hook)
        self.assertEqual(hook["verification"]["token"] in hook["verification"]["file"], True)
        checked = await self.call("POST", f"/v1/webhook/{hook['id']}/verify")
        self.assertEqual(checked["state"], "pending")
        self.assertIn("has no public address", checked["problem"])
        storage = await self.harness.admin()
        await self.record(storage, self.login.account_id, "a@example.net")
        # Even active (as if proven by a file while its name pointed elsewhere), it is not called.
        await storage.db.transaction([SQL(
            "UPDATE webhooks SET state = 'active', proof = 'file', active_since = ? WHERE id = ?",
            (reactor.seconds(), hook["id"]))])
        await self.record(storage, self.login.account_id, "b@example.net")

        async def given_up() -> bool:
            attempts = await self.call("GET", f"/v1/webhook/{hook['id']}/calls")
            return len(attempts) == 2 and attempts[0]["state"] == "failed"
        await until(lambda: defer.Deferred.fromCoroutine(given_up()), "the attempts")
        attempts = await self.call("GET", f"/v1/webhook/{hook['id']}/calls")
        self.assertEqual({a["call"] for a in attempts}, {attempts[0]["call"]})
        for attempt in attempts:
            self.assertIsNone(attempt["status"])
            self.assertIn("has no public address", attempt["error"])
        self.assertEqual(receiver.received, [])

    async def test_the_address_is_checked_after_each_resolution(self) -> None:
        """A name proven inside allow_networks that resolves elsewhere later (DNS rebinding) is not
        called there."""
        dns_server = TestDNSServer()
        await dns_server.start()
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(dns_server.stop()))
        port = free_port_on(RECEIVER_IP, ELSEWHERE_IP)
        inside = await Receiver(RECEIVER_IP).start(self, port)
        elsewhere = await Receiver(ELSEWHERE_IP).start(self, port)
        dns_server.a("hooks.test", RECEIVER_IP, ttl=0)
        await self.start(dns={"nameservers": dns_server.nameservers, "timeout": 1.0})
        made = await self.call("POST", "/v1/webhook", json_body={"type": "delivery",
                                                                  "url": f"http://hooks.test:{port}/hook"})
        inside.secrets.append(made["secret"])
        await self.wait_active(made["id"])
        storage = await self.harness.admin()
        await self.record(storage, self.login.account_id, "a@example.net")
        await until(lambda: inside.successes(), "the call inside")
        self.assertEqual(inside.calls()[0].headers["host"], f"hooks.test:{port}")
        dns_server.remove("hooks.test")
        dns_server.a("hooks.test", ELSEWHERE_IP, ttl=0)
        await self.record(storage, self.login.account_id, "b@example.net")

        async def refused() -> bool:
            attempts = await self.call("GET", f"/v1/webhook/{made['id']}/calls")
            return any("no longer inside webhooks.allow_networks" in a["error"] for a in attempts)
        await until(lambda: defer.Deferred.fromCoroutine(refused()), "the refused attempt")
        self.assertEqual(elsewhere.received, [])
        self.assertEqual(len(inside.calls()), 1)

