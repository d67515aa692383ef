"""The operator's dashboard: the pause in a destination and the dispatcher (on a task.Clock), its
storage on both backends, and the page in a real browser (headless Chromium) against the running
service: log in with the admin token and with a login made by ``smtpeter admin create``, every
account, a destination deferring mail (its 451 and its deferral rate), pause, retry now, resume;
and what it refuses: an account's session, a form without the CSRF token."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, utils
from twisted.trial import unittest

from smtpeter import credentials
from smtpeter.config import parse_config
from smtpeter.delivery.client_session import Transaction
from smtpeter.delivery.destination import HELD, RECENT_SECONDS, Context, Destination, HandBack
from smtpeter.delivery.dispatcher import Dispatcher
from smtpeter.delivery.shaping import profiles, shaping_for
from smtpeter.envelope import Envelope, Recipient
from smtpeter.storage import Conflict, NotFound
from smtpeter.storage.dashboard import admin_credential, login_credential
from smtpeter.storage.models import Outcome
from tests.support.backends import both_backends
from tests.support.browser import Browser
from tests.support.http import Client
from tests.support.rig import SENDER_IP, Rig
from tests.support.sink import Behaviour, free_port_on
from tests.test_destination import LATENCY, MESSAGE, ConnectOnlyReactor, Resolver, ScriptedMX
from tests.test_storage import new_message
from tests.test_webhooks import until

SMTPETER = str(Path(sys.executable).parent / "smtpeter")
GREYLISTED = "4.7.1 Greylisted: please try again later"


def transaction(*recipients: str) -> Transaction:
    return Transaction(Envelope("a@out.test", tuple(Recipient(r) for r in recipients)), MESSAGE)


class PauseTests(unittest.TestCase):
    """Destination.hold/resume and the dispatcher's controls, every timer on the clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rooms = 0

    def config(self, **delivery: Any) -> Any:
        return parse_config({"delivery": {"hold": False, **delivery}}).delivery

    def context(self, server: ScriptedMX, config: Any) -> Context:
        return Context(ConnectOnlyReactor({"192.0.2.1": server}), self.clock, Resolver(), config.timeouts,
                       "out.test")

    def destination(self, server: ScriptedMX, **profile: Any) -> Destination:
        config = self.config(profiles={"default": profile})
        destination = Destination("route:192.0.2.1:25", [("192.0.2.1", 25)],
                                  shaping_for(["192.0.2.1"], config, profiles(config)),
                                  self.context(server, config), on_room=self.room)
        self.addCleanup(self.close, destination)
        return destination

    def room(self) -> None:
        self.rooms += 1

    def close(self, destination: Destination) -> None:
        destination.close()
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [], "every timer ran on the clock and ended")

    def advance(self, seconds: float) -> None:
        for _ in range(round(seconds / LATENCY)):
            self.clock.advance(LATENCY)

    def test_a_held_destination_connects_to_nobody_until_resumed(self) -> None:
        server = ScriptedMX(self.clock)
        destination = self.destination(server)
        destination.hold()
        refused = self.failureResultOf(destination.submit(transaction("b@dest.test")), HandBack)
        self.assertEqual((refused.value.reason, refused.value.until), (HELD, self.clock.seconds()))
        self.advance(1)
        self.assertEqual(server.connections, 0)
        figures = destination.figures()
        self.assertEqual((figures["held"], figures["paused"], figures["paused_until"]), (True, True, None))
        self.clock.advance(3600)
        self.assertTrue(destination.paused, "held however long it takes")
        self.assertEqual(destination.idle_for, 0.0, "a held destination is never forgotten")
        destination.resume()
        self.assertEqual(self.rooms, 1, "the scheduler is told to claim for it again")
        delivered = destination.submit(transaction("b@dest.test"))
        self.advance(1)
        self.assertTrue(self.successResultOf(delivered)[0].delivered)
        self.assertEqual((server.connections, destination.figures()["held"]), (1, False))

    def test_holding_hands_back_what_waits_and_lets_the_message_under_way_finish(self) -> None:
        server = ScriptedMX(self.clock)
        destination = self.destination(server, max_connections=1)
        first = destination.submit(transaction("b@dest.test"))
        while not any(command.startswith("MAIL") for command in server.commands):
            self.clock.advance(LATENCY)  # the first message is under way
        second = destination.submit(transaction("c@dest.test"))
        destination.hold()
        self.assertEqual(self.failureResultOf(second, HandBack).value.reason, HELD)
        self.advance(1)
        self.assertTrue(self.successResultOf(first)[0].delivered)
        self.assertEqual(len(server.messages), 1)
        self.assertEqual(server.commands[-1], "QUIT", "the session ends after its message")
        self.assertEqual((destination.sessions, destination.connected), (0, 0))

    def test_holding_ends_idle_sessions_at_once(self) -> None:
        server = ScriptedMX(self.clock)
        destination = self.destination(server, idle_timeout=300)
        self.submit_and_settle(destination, "b@dest.test")
        self.assertEqual(destination.connected, 1)
        destination.hold()
        self.advance(1)
        self.assertEqual((server.commands[-1], destination.connected), ("QUIT", 0))

    def submit_and_settle(self, destination: Destination, *recipients: str) -> list:
        result = destination.submit(transaction(*recipients))
        self.advance(1)
        return self.successResultOf(result)

    def test_figures_count_recent_deferrals_and_keep_the_last_error(self) -> None:
        server = ScriptedMX(self.clock, rcpt=lambda address: (
            f"451 {GREYLISTED}".encode() if address.startswith("grey") else b"250 2.1.5 ok"))
        destination = self.destination(server)
        self.submit_and_settle(destination, "grey@dest.test", "ok@dest.test")
        figures = destination.figures()
        self.assertEqual((figures["attempts"], figures["deferred"], figures["deferral_rate"]), (2, 1, 0.5))
        self.assertEqual(figures["last_error"], f"451 {GREYLISTED}")
        self.assertTrue(0 < figures["last_error_time"] <= self.clock.seconds())
        self.clock.advance(RECENT_SECONDS + 1)
        figures = destination.figures()
        self.assertEqual((figures["attempts"], figures["deferral_rate"]), (0, None), "only recent attempts")
        self.assertEqual(figures["last_error"], f"451 {GREYLISTED}", "the last error stays")

    def test_a_backoff_rules_pause_says_until_when_and_resume_ends_it(self) -> None:
        server = ScriptedMX(self.clock, rcpt=lambda address: b"451 4.7.0 [TS01] Messages deferred")
        destination = self.destination(server, backoff=[{"pattern": r"\[TS01\]", "pause": 1800}])
        first = destination.submit(transaction("b@dest.test"))
        while destination.last_error is None:
            self.clock.advance(LATENCY)
        self.assertFalse(self.successResultOf(first)[0].delivered)
        figures = destination.figures()
        self.assertEqual(figures["paused_until"], self.clock.seconds() + 1800)
        self.assertIn("backoff rule", figures["pause_reason"])
        self.assertFalse(figures["held"])
        paused = self.failureResultOf(destination.submit(transaction("c@dest.test")), HandBack)
        self.assertEqual(paused.value.until, figures["paused_until"])
        destination.resume()
        self.assertFalse(destination.paused)
        self.assertEqual((destination.figures()["paused_until"], destination.pause_reason), (None, ""))

    def dispatcher(self, server: ScriptedMX) -> Dispatcher:
        config = self.config(routes={"dest.test": "192.0.2.1:25"}, timeouts={"greeting": 30})
        dispatcher = Dispatcher(config, self.context(server, config), "out.test")
        dispatcher.on_room = self.room
        self.addCleanup(self.close_dispatcher, dispatcher)
        return dispatcher

    def close_dispatcher(self, dispatcher: Dispatcher) -> None:
        dispatcher.close()
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [], "every timer ran on the clock and ended")

    def test_the_dispatcher_pauses_a_domains_destination_and_resumes_it_by_key(self) -> None:
        server = ScriptedMX(self.clock)
        dispatcher = self.dispatcher(server)
        # A queued domain whose destination is not known yet: looked up, then held.
        held = self.successResultOf(defer.Deferred.fromCoroutine(dispatcher.pause("dest.test")))
        key = held.key
        self.assertEqual(key, "route:192.0.2.1:25")
        self.assertEqual(dispatcher.held_domains(), ["dest.test"], "the scheduler claims nothing for it")
        stats = dispatcher.stats()[key]
        self.assertEqual((stats["held"], stats["paused"], stats["domains"]), (True, True, ["dest.test"]))
        attempt = defer.Deferred.fromCoroutine(dispatcher.deliver("dest.test", transaction("b@dest.test")))
        self.assertEqual(self.failureResultOf(attempt, HandBack).value.reason, HELD)
        self.assertEqual((dispatcher.domains_of(key), dispatcher.domains_of("other.test")),
                         (["dest.test"], ["other.test"]))
        dispatcher.resume(key)
        self.assertEqual((dispatcher.held_domains(), self.rooms), ([], 1))
        attempt = defer.Deferred.fromCoroutine(dispatcher.deliver("dest.test", transaction("b@dest.test")))
        self.advance(1)
        self.assertTrue(self.successResultOf(attempt)[0].delivered)

    def test_retry_now_ends_the_rest_after_failed_connections(self) -> None:
        server = ScriptedMX(self.clock, greets=False)
        dispatcher = self.dispatcher(server)
        attempt = defer.Deferred.fromCoroutine(dispatcher.deliver("dest.test", transaction("b@dest.test")))
        self.clock.advance(30)  # the greeting times out: no host answered, the destination rests
        self.assertFalse(self.successResultOf(attempt)[0].delivered)
        (destination,) = dispatcher.destinations.values()
        self.assertTrue(destination.down)
        self.assertIsNotNone(dispatcher.stats()[destination.key]["down_until"])
        dispatcher.retry_now(destination.key)
        self.assertEqual((destination.down, self.rooms), (False, 1))
        self.assertIsNone(dispatcher.stats()[destination.key]["down_until"])


class OperatorStorageSuite:
    async def test_admin_logins(self) -> None:
        storage = await self.open_storage()
        password = await storage.create_admin_login("ops")
        self.assertTrue(credentials.verify_password(password, await storage.admin_password_hash("ops")))
        self.assertIsNone(await storage.admin_password_hash("nobody"))
        with self.assertRaises(Conflict):
            await storage.create_admin_login("ops")
        self.assertEqual([name for name, _ in await storage.admin_logins()], ["ops"])
        account = await storage.create_account("acme")
        await storage.create_admin_login("other-ops")
        await storage.create_dashboard_session("operator", None, True, "csrf", 3600, admin_credential("ops"))
        await storage.create_dashboard_session("colleague", None, True, "csrf", 3600,
                                               admin_credential("other-ops"))
        await storage.create_dashboard_session("customer", account.id, False, "csrf", 3600,
                                               login_credential("ops"))
        await storage.delete_admin_login("ops")
        self.assertEqual([name for name, _ in await storage.admin_logins()], ["other-ops"])
        self.assertIsNone(await storage.dashboard_session("operator"), "its sessions end with it")
        self.assertIsNotNone(await storage.dashboard_session("colleague"))
        self.assertIsNotNone(await storage.dashboard_session("customer"))
        with self.assertRaises(NotFound):
            await storage.delete_admin_login("ops")

    async def test_accounts_and_the_queue_by_domain(self) -> None:
        storage = await self.open_storage()
        acme, other = await storage.create_account("acme"), await storage.create_account("other")
        await storage.add_domain(acme.id, "example.com", approved=True)
        await storage.add_domain(acme.id, "example.org")
        await storage.enqueue(new_message(acme.id, to=("a@dest.test", "b@dest.test", "c@far.test")))
        await storage.enqueue(new_message(other.id, to=("d@dest.test",)))
        minute = int(storage.now() // 60)
        await storage.db.transaction([storage.add_event_counts([(acme.id, minute, "delivered", False, 3)])])
        figures = await storage.account_figures(storage.now() - 60)
        self.assertEqual([(f.name, f.queued, f.delivered, f.domains) for f in figures],
                         [("acme", 3, 3, 2), ("other", 1, 0, 0)])
        self.assertEqual([(q.domain, q.waiting) for q in await storage.queue_by_domain()],
                         [("dest.test", 3), ("far.test", 1)])
        self.assertEqual([q.domain for q in await storage.queue_by_domain(limit=1)], ["dest.test"])
        leases = await storage.claim("n", limit=10, lease=60)
        deferred = [lease for lease in leases if lease.domain == "dest.test"]
        await storage.record("n", [Outcome(x.id, x.account_id, x.address, "queued", 1, storage.now() + 600,
                                           "deferred", {}, code=451, description=f"451 {GREYLISTED}")
                                   for x in deferred])
        errors = await storage.last_errors(["dest.test", "far.test"])
        self.assertEqual(list(errors), ["dest.test"], "far.test is leased, with no reply yet")
        self.assertEqual(errors["dest.test"].text, f"451 {GREYLISTED}")
        self.assertEqual(await storage.retry_domains_now(["dest.test"]), 3)
        self.assertEqual(await storage.retry_domains_now(["far.test"]), 0, "a leased one is left alone")
        self.assertEqual(len(await storage.claim("n2", limit=10, lease=60)), 3)


OperatorStorageSQLite, OperatorStoragePostgreSQL = both_backends(OperatorStorageSuite)


class OperatorInABrowser(unittest.TestCase):
    async def start(self) -> Rig:
        port = free_port_on("127.0.0.1")
        self.base = f"http://127.0.0.1:{port}"
        rig = self.rig = Rig(self)
        self.reply = (451, GREYLISTED)
        self.sink = rig.sink("127.0.0.2", Behaviour(rcpt_reply=lambda recipient: self.reply))
        self.other = rig.sink("127.0.0.3")
        rig.sink(SENDER_IP)
        await rig.start(sections={"http": {"listen": [f"tcp:{port}:interface=127.0.0.1"],
                                           "public_url": self.base, "admin_token": "operator-secret"}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        rig.dns.mail_host("other.test", "mx.other.test", "127.0.0.3")
        self.browser = await Browser().start()
        self.addCleanup(self.browser.stop)
        return rig

    async def cli(self, *args: str) -> Any:
        directory = Path(tempfile.mkdtemp(prefix="smtpeter-cli-"))
        self.addCleanup(shutil.rmtree, directory, True)
        config = directory / "smtpeter.toml"
        config.write_text(f'[server]\ndata_dir = "{directory}"\n[storage]\nurl = "{self.rig.harness.url}"\n')
        out, err, code = await utils.getProcessOutputAndValue(
            SMTPETER, ["--config", str(config), *args, "--json"], env={}, path=str(directory))
        self.assertEqual(code, 0, err)
        return json.loads(out)

    async def goto(self, path: str) -> int:
        return await self.browser.run(lambda page: page.goto(self.base + path).status)

    async def text(self, selector: str) -> str:
        return await self.browser.run(lambda page: page.inner_text(selector))

    async def log_in(self, **fields: str) -> str:
        def steps(page: Any) -> str:
            page.goto(self.base + "/dashboard/login")
            for name, value in fields.items():
                page.fill(f"input[name={name}]", value)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            return page.url

        return await self.browser.run(steps)

    async def log_out(self) -> None:
        def steps(page: Any) -> None:
            page.click("form.logout button")
            page.wait_for_load_state()

        await self.browser.run(steps)

    async def cookies(self) -> str:
        """The browser's cookies as a Cookie header, for requests made beside it."""
        cookies = await self.browser.run(lambda page: page.context.cookies())
        return "; ".join(f"{c['name']}={c['value']}" for c in cookies)

    async def act(self, row: str, button: str) -> str:
        """Press a button in a destination's row; the notice the page answers with."""
        def steps(page: Any) -> str:
            page.click(f"tr[data-destination='{row}'] button.{button}")
            page.wait_for_load_state()
            return page.inner_text(".notice")

        return await self.browser.run(steps)

    async def test_see_pause_retry_and_resume_a_deferring_destination(self) -> None:
        rig = await self.start()
        key = "mx:mx.dest.test"
        (bob,) = await rig.send("bob@dest.test")
        deferred = await rig.wait_for(bob, "queued", attempts=1)
        self.assertEqual(deferred.last_code, 451)

        # The admin token: the operator's page, with the account and the deferring destination.
        self.assertTrue((await self.log_in(token="operator-secret")).endswith("/dashboard/operator"))
        accounts = await self.text("table#accounts")
        self.assertIn("acme", accounts)
        self.assertIn(rig.login.account_id, accounts)
        self.assertEqual(await self.text(f"tr[data-account='{rig.login.account_id}'] td.queued"), "1")
        row = f"tr[data-destination='{key}']"
        self.assertIn("dest.test", await self.text(f"{row} .domains"))
        self.assertEqual(await self.text(f"{row} td.waiting"), "1")
        self.assertEqual(await self.text(f"{row} td.deferral"), "100% of 1")
        self.assertIn(f"451 {GREYLISTED}", await self.text(f"{row} td.last-error"))
        self.assertIn("Delivering", await self.text(f"{row} td.state"))
        # The figures /metrics exports are the page's.
        exported = (await Client(self.base).get("/metrics")).body.decode()
        self.assertIn(f'smtpeter_destination_deferral_ratio{{destination="{key}"}} 1.0', exported)
        self.assertIn(f"smtpeter_queue_depth {await self.text('#queue-depth')}.0", exported)

        # Paused: retry now makes bob due, yet nothing reaches the sink (though it would take him now).
        self.reply = (250, "2.1.5 Ok")
        self.assertIn("Paused", await self.act(key, "pause"))
        self.assertIn("Paused by the operator", await self.text(f"{row} td.state"))
        self.assertIn('smtpeter_destination_paused{destination="mx:mx.dest.test"} 1.0',
                      (await Client(self.base).get("/metrics")).body.decode())
        await self.browser.screenshot("dashboard-operator")
        await until(lambda: self.sink.connections_open == 0, "the idle session to QUIT when paused")
        seen = (self.sink.connections_total, len(self.sink.commands))
        self.assertIn("Made due now", await self.act(key, "retry"))
        self.assertLessEqual((await rig.recipient(bob)).next_attempt, rig.storage.now())
        # Mail due after bob's, to another destination, delivered: the scheduler has claimed past
        # bob (due first) and left him queued.
        (carol,) = await rig.send("carol@other.test")
        await rig.wait_for(carol, "delivered")
        self.assertEqual((self.sink.connections_total, len(self.sink.commands)), seen)
        waiting = await rig.recipient(bob)
        self.assertEqual((waiting.state, waiting.attempts), ("queued", 1))

        # Resumed: bob, due since the retry, is delivered.
        self.assertIn("Resumed", await self.act(key, "resume"))
        await rig.wait_for(bob, "delivered")
        self.assertEqual([r.recipients for r in self.sink.received], [["bob@dest.test"]])

        async def drained() -> bool:
            await self.goto("/dashboard/operator")
            return await self.text(f"{row} td.waiting") == "0"
        await until(drained, "the destination's waiting count to drop to 0")

        # A form without the session's CSRF token (or with a wrong one) changes nothing.
        for body in (f"destination={key}", f"destination={key}&csrf=forged"):
            refused = await Client(self.base).post("/dashboard/operator/pause", form=body,
                                                   headers={"cookie": await self.cookies()})
            self.assertEqual(refused.code, 403, refused.body)
        self.assertFalse(rig.service.dispatcher.destinations[key].held)
        await self.log_out()

        # A login made with `smtpeter admin create`; gone with `admin delete`.
        created = await self.cli("admin", "create", "ops")
        self.assertEqual([entry["admin"] for entry in await self.cli("admin", "list")], ["ops"])
        self.assertTrue((await self.log_in(username="ops", password=created["password"]))
                        .endswith("/dashboard/operator"))
        self.assertIn("acme", await self.text("table#accounts"))
        await self.log_out()
        self.assertEqual(await self.cli("admin", "delete", "ops"), {"deleted": "ops"})
        self.assertTrue((await self.log_in(username="ops", password=created["password"]))
                        .endswith("/dashboard/login"))

        # An account's session: the operator's pages are the 404 page.
        self.assertTrue((await self.log_in(token=rig.login.token)).endswith("/dashboard/overview"))
        self.assertNotIn("Operator", await self.text("nav"))
        self.assertEqual(await self.goto("/dashboard/operator"), 404)
        self.assertIn("not yours to see", await self.text("main"))
        for action in ("pause", "resume", "retry"):
            refused = await Client(self.base).post(f"/dashboard/operator/{action}", form=f"destination={key}",
                                                   headers={"cookie": await self.cookies()})
            self.assertEqual(refused.code, 404, refused.body)
        self.assertFalse(rig.service.dispatcher.destinations[key].held)
