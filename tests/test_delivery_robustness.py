"""Delivery under trouble: slow, dead, rude or broken receivers, storage hiccups, leases running out."""

from __future__ import annotations

from twisted.trial import unittest

from smtpeter.delivery.client_connection import ClientConnection
from smtpeter.storage import StorageUnavailable
from tests.support.rig import SENDER_IP, Rig, message, sleep
from tests.support.sink import Behaviour


class RobustnessTests(unittest.TestCase):
    def rig(self, *sinks: tuple[str, Behaviour | None]) -> Rig:
        rig = Rig(self)
        for ip, behaviour in sinks:
            rig.sink(ip, behaviour)
        rig.sink(SENDER_IP)
        return rig

    def mx(self, rig: Rig, domain: str, ip: str) -> None:
        rig.dns.mx(domain, (10, f"mx.{domain}"))
        rig.dns.a(f"mx.{domain}", ip)

    async def test_a_lease_running_out_while_waiting_does_not_deliver_twice(self) -> None:
        rig = self.rig(("127.0.0.2", None))
        await rig.start(lease=3, profiles={"default": {"max_connections": 1, "messages_per_minute": 60}})
        self.mx(rig, "dest.test", "127.0.0.2")
        ids = []
        for n in range(6):
            ids += await rig.send(f"user{n}@dest.test")
        for mid in ids:
            await rig.wait_for(mid, "delivered", timeout=30)
        await sleep(1.5)
        received = [r.recipients[0] for r in rig.sinks["127.0.0.2"].received]
        self.assertEqual(sorted(received), sorted(f"user{n}@dest.test" for n in range(6)))
        for mid in ids:
            self.assertEqual([e.type for e in await rig.events(mid)], ["attempt", "delivery"])

    async def test_a_slow_destination_does_not_block_the_others(self) -> None:
        rig = self.rig(("127.0.0.2", Behaviour(stall_at="dot")), ("127.0.0.3", None))
        await rig.start(window=40, timeouts={"data_done": 30})
        self.mx(rig, "slow.test", "127.0.0.2")
        self.mx(rig, "fast.test", "127.0.0.3")
        for n in range(30):
            await rig.send(f"user{n}@slow.test")
        await sleep(1.0)
        (fast,) = await rig.send("someone@fast.test")
        await rig.wait_for(fast, "delivered", timeout=10)
        # The slow one holds at most its share (a quarter of the window waiting, plus its
        # sessions' work); the rest was never claimed: due, in the queue, not attempted.
        self.assertLessEqual(rig.service.scheduler.in_flight, 20)
        waiting = [q for q in await rig.storage.queue() if q.address.endswith("@slow.test")]
        self.assertTrue(any(q.attempts == 0 and q.next_attempt <= rig.clock.seconds() for q in waiting))

    async def test_a_dead_destination_fails_its_work_at_once_and_rests(self) -> None:
        rig = self.rig(("127.0.0.2", Behaviour(stall_at="banner")))
        await rig.start(timeouts={"greeting": 1}, profiles={"default": {"max_connections": 3}})
        self.mx(rig, "dead.test", "127.0.0.2")
        ids = []
        for n in range(10):
            ids += await rig.send(f"user{n}@dead.test")
        for mid in ids:
            entry = await rig.wait_for(mid, "queued", attempts=1, timeout=15)
            self.assertEqual(entry.last_state, "greeting")
        # It rests: a few connection attempts, not one per message or more.
        self.assertLessEqual(rig.sinks["127.0.0.2"].connections_total, 4)

    async def test_a_5xx_greeting_is_not_a_bounce(self) -> None:
        rig = self.rig(("127.0.0.2", Behaviour(
            banner=(554, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"))))
        await rig.start()
        self.mx(rig, "rbl.test", "127.0.0.2")
        (mid,) = await rig.send("a@rbl.test")
        entry = await rig.wait_for(mid, "queued", attempts=1)
        self.assertEqual((entry.last_state, entry.last_code, entry.last_status), ("greeting", 554, "4.7.1"))

    async def test_a_temporary_dns_failure_does_not_bounce_an_implicit_mx(self) -> None:
        rig = self.rig()
        await rig.start()
        rig.dns.servfail("flaky.test")
        (mid,) = await rig.send("a@flaky.test")
        entry = await rig.wait_for(mid, "queued", attempts=1)
        self.assertNotEqual(entry.state, "failed")

    async def test_an_unexpected_error_fails_the_attempt_not_the_queue(self) -> None:
        rig = self.rig(("127.0.0.2", None))
        await rig.start()
        self.mx(rig, "dest.test", "127.0.0.2")
        original = ClientConnection.deliver
        calls = []

        async def broken(connection: ClientConnection, transaction: object) -> list:
            calls.append(transaction)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return await original(connection, transaction)

        self.patch(ClientConnection, "deliver", broken)
        (first,) = await rig.send("a@dest.test")
        entry = await rig.wait_for(first, "queued", attempts=1)
        self.assertIn("internal error", entry.last_description)
        (second,) = await rig.send("b@dest.test")
        await rig.wait_for(second, "delivered")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_rate_limited_replies_really_slow_the_destination(self) -> None:
        rig = self.rig(("127.0.0.2", Behaviour(rcpt_reply=lambda a: (
            451, "4.7.1 temporarily rate limited, try again later"))))
        await rig.start()
        self.mx(rig, "busy.test", "127.0.0.2")
        for n in range(10):
            await rig.send(f"user{n}@busy.test")
        await sleep(3)
        rcpts = [c for c in rig.sinks["127.0.0.2"].commands if c.startswith("RCPT")]
        self.assertLessEqual(len(rcpts), 2)  # 1 message a minute once the rule fires

    async def test_421_then_hang_up_still_feeds_the_backoff_rules(self) -> None:
        rig = self.rig(("127.0.0.2", Behaviour(rcpt_reply=lambda a: (421, "4.7.0 [TSS04] go away"))))
        await rig.start(backoff=[{"pattern": r"\[TSS04\]", "pause": 600}])
        self.mx(rig, "yahoo.test", "127.0.0.2")
        (mid,) = await rig.send("a@yahoo.test")
        entry = await rig.wait_for(mid, "queued", attempts=1)
        self.assertEqual(entry.last_code, 421)
        self.assertIn("[TSS04]", entry.last_description)
        self.assertIn("yahoo.test", rig.service.dispatcher.held_domains())

    async def test_smtputf8_asked_for_but_not_needed_still_goes_to_a_plain_server(self) -> None:
        rig = self.rig(("127.0.0.2", Behaviour(extensions=["PIPELINING", "8BITMIME"])))
        await rig.start()
        self.mx(rig, "plain.test", "127.0.0.2")
        (mid,) = await rig.send("a@plain.test", smtputf8=True)
        await rig.wait_for(mid, "delivered")
        self.assertNotIn("SMTPUTF8", rig.sinks["127.0.0.2"].received[0].mail_params)

    async def test_too_many_recipients_go_on_in_the_next_transaction(self) -> None:
        sink_commands: list[str] = []

        def rcpt(address: str) -> tuple[int, str]:
            since_mail = sink_commands[len(sink_commands) - sink_commands[::-1].index(
                next(c for c in reversed(sink_commands) if c.startswith("MAIL"))):]
            count = sum(1 for c in since_mail if c.startswith("RCPT"))
            return (452, "4.5.3 Too many recipients") if count > 2 else (250, "2.1.5 ok")

        rig = self.rig(("127.0.0.2", Behaviour(rcpt_reply=rcpt)))
        sink_commands = rig.sinks["127.0.0.2"].commands
        await rig.start()
        self.mx(rig, "list.test", "127.0.0.2")
        ids = await rig.send(*[f"user{n}@list.test" for n in range(5)])
        for mid in ids:
            await rig.wait_for(mid, "delivered")
        sink = rig.sinks["127.0.0.2"]
        self.assertEqual([len(r.recipients) for r in sink.received], [2, 2, 1])
        self.assertEqual(sink.connections_total, 1)

    async def test_recording_outcomes_survives_a_storage_hiccup(self) -> None:
        rig = self.rig(("127.0.0.2", None))
        await rig.start()
        self.mx(rig, "dest.test", "127.0.0.2")
        original = rig.storage.record
        failures = [StorageUnavailable("database restarting")]

        def flaky(*args: object, **kwargs: object) -> object:
            if failures:
                from twisted.internet import defer

                return defer.fail(failures.pop())
            return original(*args, **kwargs)

        rig.storage.record = flaky
        (mid,) = await rig.send("a@dest.test")
        await rig.wait_for(mid, "delivered", timeout=20)
        self.assertEqual(len(rig.sinks["127.0.0.2"].received), 1)

    async def test_mail_that_would_loop_back_to_us_fails(self) -> None:
        rig = self.rig()
        await rig.start()
        rig.dns.mx("self.test", (10, "mx.test"))  # our own host name (the harness's server.hostname)
        rig.dns.a("mx.test", "127.0.0.1")
        (mid,) = await rig.send("a@self.test", data=message("loop"))
        entry = await rig.wait_for(mid, "failed")
        self.assertEqual(entry.last_status, "5.4.6")
