"""The delivery engine end to end: queue -> scheduler -> MX lookup -> pools -> SMTP -> outcomes.

Receivers are recording SMTP sinks on 127.0.0.x found through a test DNS
server; the queue's clock can be moved forward to see retries and expiry.
"""

from __future__ import annotations

import email
import email.policy

from twisted.internet import defer, reactor
from twisted.trial import unittest

from smtpeter.storage import StorageError
from tests.support.rig import SENDER_IP, Rig, message, sleep
from tests.support.sink import Behaviour


def dsn_for(rig: Rig) -> email.message.EmailMessage:
    """The one DSN the sender's own MX received."""
    (received,) = rig.sinks[SENDER_IP].received
    assert received.mail_from == ""
    return email.message_from_bytes(received.data, policy=email.policy.default)


def report_fields(dsn: email.message.EmailMessage) -> tuple[dict, list[dict]]:
    status = next(part for part in dsn.walk() if part.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    return dict(blocks[0].items()), [dict(block.items()) for block in blocks[1:]]


class DeliveryTests(unittest.TestCase):
    async def rig(self, *behaviours: tuple[str, Behaviour | None]) -> Rig:
        rig = Rig(self)
        for ip, behaviour in behaviours:
            rig.sink(ip, behaviour)
        rig.sink(SENDER_IP)
        return rig

    async def one_destination(self, behaviour: Behaviour | None = None, **delivery: object) -> Rig:
        """A started rig whose dest.test has one MX, a sink at 127.0.0.2."""
        rig = await self.rig(("127.0.0.2", behaviour))
        await rig.start(**delivery)
        rig.dns.mail_host("dest.test", "mx1.dest.test", "127.0.0.2")
        return rig

    async def test_delivers_through_mx_with_events(self) -> None:
        rig = await self.one_destination()
        (mid,) = await rig.send("bob@dest.test", data=message("first"))
        entry = await rig.wait_for(mid, "delivered")
        self.assertEqual((entry.attempts, entry.last_code), (1, 250))
        (received,) = rig.sinks["127.0.0.2"].received
        self.assertEqual((received.mail_from, received.recipients), ("news@example.com", ["bob@dest.test"]))
        self.assertIn(b"Subject: first", received.data)
        self.assertEqual(received.helo, "out.smtpeter.test")
        events = await rig.events(mid)
        self.assertEqual([e.type for e in events], ["attempt", "delivery"])
        delivery = events[1].data
        self.assertEqual((delivery["to"], delivery["mx"], delivery["code"], delivery["from"]),
                         ("127.0.0.2", "mx1.dest.test", 250, "127.0.0.1"))
        self.assertEqual(delivery["attempt"], 1)  # counted from 1, as the queue counts
        self.assertIn("250", delivery["description"])

    async def test_a_recipient_queued_twice_gets_an_outcome_each_time(self) -> None:
        """Results go by position: an address twice in one transaction still has two outcomes."""
        rig = await self.one_destination()
        first, second = await rig.send("bob@dest.test", "bob@dest.test")
        for mid in (first, second):
            entry = await rig.wait_for(mid, "delivered")
            self.assertEqual(entry.attempts, 1)

    async def test_a_storage_error_while_reading_messages_strands_nothing(self) -> None:
        rig = await self.one_destination(lease=2)
        storage = rig.storage
        real = storage.messages
        calls = []

        async def failing_once(ids: list[str]) -> dict:
            calls.append(ids)
            if len(calls) == 1:
                raise StorageError("disk I/O error")
            return await real(ids)

        self.patch(storage, "messages", failing_once)
        (mid,) = await rig.send("bob@dest.test")
        entry = await rig.wait_for(mid, "delivered", timeout=20)  # once the lease ran out
        self.assertEqual(entry.attempts, 1)
        self.assertGreaterEqual(len(calls), 2)

    async def test_connection_reuse(self) -> None:
        rig = await self.one_destination()
        ids = []
        for n in range(30):
            ids += await rig.send(f"user{n}@dest.test", data=message(f"m{n}"))
        for mid in ids:
            await rig.wait_for(mid, "delivered")
        sink = rig.sinks["127.0.0.2"]
        self.assertEqual(len(sink.received), 30)
        # Many messages per TCP session: far fewer connections than messages, RSET between them.
        self.assertLessEqual(sink.connections_total, 10)
        self.assertGreaterEqual(sink.commands.count("RSET"), 30 - sink.connections_total)

    async def test_concurrency_and_messages_per_connection_limits(self) -> None:
        rig = await self.one_destination(
            profiles={"default": {"max_connections": 2, "max_messages_per_connection": 3}})
        ids = []
        for n in range(24):
            ids += await rig.send(f"user{n}@dest.test")
        for mid in ids:
            await rig.wait_for(mid, "delivered")
        sink = rig.sinks["127.0.0.2"]
        self.assertLessEqual(sink.max_concurrent, 2)
        self.assertGreaterEqual(sink.connections_total, 8)  # at most 3 messages each
        self.assertEqual(len(sink.received), 24)

    async def test_message_rate_limit(self) -> None:
        rig = await self.rig(("127.0.0.2", None))
        await rig.start(profiles={"default": {"messages_per_minute": 240}})  # 4/s, burst 4
        rig.dns.mail_host("dest.test", "mx1.dest.test", "127.0.0.2")
        ids = []
        started = rig.clock.seconds()
        for n in range(12):
            ids += await rig.send(f"user{n}@dest.test")
        for mid in ids:
            await rig.wait_for(mid, "delivered")
        # Messages are prepared in any order, so time from the start: 12 at 4/s with a burst of 4
        # take at least 8/4 s (without the limit, a fraction of a second).
        self.assertGreaterEqual(rig.clock.seconds() - started, 1.9)

    async def test_mx_fallback_in_preference_order(self) -> None:
        rig = await self.rig(("127.0.0.3", None), ("127.0.0.4", None))
        await rig.start()
        # Preference 5 has no server at all (connection refused); 10 answers; 20 must not be used.
        rig.dns.mx("dest.test", (20, "mx3.dest.test"), (10, "mx2.dest.test"), (5, "mx1.dest.test"))
        rig.dns.a("mx1.dest.test", "127.0.0.2")
        rig.dns.a("mx2.dest.test", "127.0.0.3")
        rig.dns.a("mx3.dest.test", "127.0.0.4")
        (mid,) = await rig.send("bob@dest.test")
        await rig.wait_for(mid, "delivered")
        self.assertEqual(len(rig.sinks["127.0.0.3"].received), 1)
        self.assertEqual(rig.sinks["127.0.0.4"].connections_total, 0)

    async def test_implicit_mx(self) -> None:
        rig = await self.rig(("127.0.0.2", None))
        await rig.start()
        rig.dns.a("bare.test", "127.0.0.2")
        (mid,) = await rig.send("bob@bare.test")
        await rig.wait_for(mid, "delivered")
        self.assertEqual(rig.sinks["127.0.0.2"].received[0].recipients, ["bob@bare.test"])

    async def test_null_mx_and_nxdomain_fail_at_once_with_a_dsn(self) -> None:
        rig = await self.rig()
        await rig.start()
        rig.dns.null_mx("nomail.test")
        (nullmx,) = await rig.send("a@nomail.test")
        (nxdomain,) = await rig.send("b@nowhere.test")
        entry = await rig.wait_for(nullmx, "failed")
        self.assertEqual((entry.attempts, entry.last_status), (1, "5.1.10"))
        entry = await rig.wait_for(nxdomain, "failed")
        self.assertEqual(entry.last_status, "5.1.2")
        events = await rig.events(nullmx)
        self.assertEqual((events[-1].type, events[-1].data["state"], events[-1].data["type"]),
                         ("failure", "dns", "failed"))
        # The bounce classifier's reasons: a domain that takes no mail, one that does not exist.
        self.assertEqual((events[-1].data["reason"], events[-1].data["hardbounce"]), ("notaccept", True))
        nowhere = (await rig.events(nxdomain))[-1].data
        self.assertEqual((nowhere["reason"], nowhere["hardbounce"]), ("hostunknown", True))
        await rig.sinks[SENDER_IP].wait_for(2)

    async def test_dns_servfail_is_retried(self) -> None:
        rig = await self.rig()
        await rig.start()
        rig.dns.servfail("broken.test")
        (mid,) = await rig.send("a@broken.test")
        entry = await rig.wait_for(mid, "queued", attempts=1)
        self.assertEqual(entry.last_status, "4.4.3")

    async def test_mixed_results_per_recipient_and_dsn_content(self) -> None:
        replies = {"gone@dest.test": (550, "5.1.1 <gone@dest.test>: no such user"),
                   "busy@dest.test": (452, "4.2.2 mailbox full")}
        rig = await self.one_destination(Behaviour(rcpt_reply=lambda a: replies.get(a, (250, "2.1.5 ok"))))
        ok, gone, busy = await rig.send("ok@dest.test", "gone@dest.test", "busy@dest.test", orcpt=True,
                                        envid="ENV-42", ret="HDRS")
        await rig.wait_for(ok, "delivered")
        failed = await rig.wait_for(gone, "failed")
        deferred = await rig.wait_for(busy, "queued", attempts=1)
        self.assertEqual((failed.last_code, failed.last_status), (550, "5.1.1"))
        self.assertEqual((deferred.last_code, deferred.last_status), (452, "4.2.2"))
        (received,) = rig.sinks["127.0.0.2"].received
        self.assertEqual(received.recipients, ["ok@dest.test"])  # one transaction, three RCPTs
        self.assertEqual([e.type for e in await rig.events(busy)], ["attempt", "deferred"])
        failure_event = (await rig.events(gone))[-1]  # classified as the bounces that come back are
        self.assertEqual((failure_event.data["reason"], failure_event.data["hardbounce"]),
                         ("userunknown", True))
        await rig.sinks[SENDER_IP].wait_for(1)
        dsn = dsn_for(rig)
        self.assertEqual(dsn["To"].addresses[0].addr_spec, "news@example.com")
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        per_message, per_recipient = report_fields(dsn)
        self.assertEqual(per_message["Original-Envelope-Id"], "ENV-42")
        self.assertEqual(per_message["Reporting-MTA"], "dns; mx.test")
        (failure,) = per_recipient
        self.assertEqual(failure["Action"], "failed")
        self.assertEqual(failure["Status"], "5.1.1")
        self.assertIn("gone@dest.test", failure["Final-Recipient"])
        self.assertEqual(failure["Original-Recipient"], "rfc822;gone@dest.test")
        self.assertIn("no such user", failure["Diagnostic-Code"])
        self.assertIn("mx1.dest.test", failure["Remote-MTA"])
        returned = [p for p in dsn.walk() if p.get_content_type() == "text/rfc822-headers"]
        self.assertEqual(len(returned), 1)  # RET=HDRS: the header only
        await sleep(0.3)
        self.assertEqual(len(rig.sinks[SENDER_IP].received), 1)  # nothing for the delivered or deferred

    async def test_no_dsn_for_null_sender_notify_never_or_tracked_bounces(self) -> None:
        rig = await self.one_destination(Behaviour(rcpt_reply=lambda a: (550, "5.1.1 no such user")))
        ids = await rig.send("a@dest.test", envelope="")
        ids += await rig.send("b@dest.test", notify="NEVER")
        ids += await rig.send("c@dest.test", options={"trackbounces": True})
        ids += await rig.send("d@dest.test", envelope=None)
        for mid in ids:
            await rig.wait_for(mid, "failed")
        await sleep(0.5)
        self.assertEqual(rig.sinks[SENDER_IP].received, [])
        self.assertEqual(len(await rig.storage.queue()), 0)

    async def test_retry_schedule_then_success(self) -> None:
        attempts = []

        def rcpt(address: str) -> tuple[int, str]:
            attempts.append(address)
            return (451, "4.3.0 temporary trouble") if len(attempts) < 3 else (250, "2.1.5 ok")

        rig = await self.one_destination(Behaviour(rcpt_reply=rcpt))
        (mid,) = await rig.send("bob@dest.test")
        first = await rig.wait_for(mid, "queued", attempts=1)
        self.assertLess(abs(first.next_attempt - rig.clock.seconds() - 600), 5)
        await rig.advance(590)
        await sleep(0.5)
        self.assertEqual(len(attempts), 1)  # not due yet
        await rig.advance(15)
        second = await rig.wait_for(mid, "queued", attempts=2)
        self.assertLess(abs(second.next_attempt - rig.clock.seconds() - 600), 5)
        await rig.advance(605)
        entry = await rig.wait_for(mid, "delivered")
        self.assertEqual(entry.attempts, 3)
        events = await rig.events(mid)
        self.assertEqual([e.type for e in events], ["attempt", "deferred", "deferred", "delivery"])
        self.assertEqual([e.data["attempt"] for e in events[1:]], [1, 2, 3])

    async def test_greylisting_hint_is_honoured(self) -> None:
        rig = await self.one_destination(Behaviour(greylist=True))
        (mid,) = await rig.send("bob@dest.test")
        entry = await rig.wait_for(mid, "queued", attempts=1)
        # "try again in 5 minutes": 300 s, not the 600 s of the schedule.
        self.assertLess(abs(entry.next_attempt - rig.clock.seconds() - 300), 5)
        await rig.advance(305)
        await rig.wait_for(mid, "delivered")

    async def test_expiry_fails_with_state_expired_and_dsn(self) -> None:
        rig = await self.one_destination(Behaviour(rcpt_reply=lambda a: (451, "4.4.1 later")),
                                         max_deliver_time=3600)
        (mid,) = await rig.send("bob@dest.test", expires=rig.clock.seconds() + 1000)
        await rig.wait_for(mid, "queued", attempts=1)
        await rig.advance(601)
        # Second failure: the next retry (600 s) would come after the message expires, so a
        # last attempt comes just before it does.
        final = await rig.wait_for(mid, "queued", attempts=2)
        self.assertLess(abs(final.next_attempt - (rig.clock.seconds() + 1000 - 601 - 30)), 5)
        await rig.advance(final.next_attempt - rig.clock.seconds() + 1)
        entry = await rig.wait_for(mid, "expired", attempts=3)
        self.assertEqual(entry.last_description, "451 4.4.1 later")
        failure = (await rig.events(mid))[-1]
        self.assertEqual((failure.type, failure.data["state"], failure.data["type"]),
                         ("failure", "expired", "expired"))
        await rig.sinks[SENDER_IP].wait_for(1)
        (recipient_block,) = report_fields(dsn_for(rig))[1]
        self.assertEqual((recipient_block["Action"], recipient_block["Status"]), ("failed", "4.4.7"))

    async def test_already_expired_message_is_not_attempted(self) -> None:
        rig = await self.one_destination()
        rig.service.scheduler.stop()
        (mid,) = await rig.send("bob@dest.test", expires=rig.clock.seconds() + 60)
        rig.clock.advance(120)
        await rig.service.scheduler.start()
        entry = await rig.wait_for(mid, "expired")
        self.assertEqual(entry.attempts, 0)
        self.assertEqual(rig.sinks["127.0.0.2"].connections_total, 0)

    async def test_dropped_connection_and_stall_are_retried(self) -> None:
        rig = await self.rig(("127.0.0.2", Behaviour(drop_after_data_bytes=10)),
                             ("127.0.0.3", Behaviour(stall_at="dot")))
        await rig.start(timeouts={"data_done": 1})
        rig.dns.mail_host("drop.test", "mx.drop.test", "127.0.0.2")
        rig.dns.mail_host("stall.test", "mx.stall.test", "127.0.0.3")
        (dropped,) = await rig.send("a@drop.test")
        (stalled,) = await rig.send("b@stall.test")
        entry = await rig.wait_for(dropped, "queued", attempts=1)
        self.assertEqual(entry.last_state, "message")
        self.assertIn("connection lost", entry.last_description)
        entry = await rig.wait_for(stalled, "queued", attempts=1)
        self.assertEqual(entry.last_state, "message")
        self.assertIn("timeout", entry.last_description)

    async def test_greeting_timeout_and_helo_fallback(self) -> None:
        rig = await self.rig(("127.0.0.2", Behaviour(stall_at="banner")),
                             ("127.0.0.3", Behaviour(ehlo_reply=(502, "5.5.1 EHLO not implemented"))))
        await rig.start(timeouts={"greeting": 0.5})
        rig.dns.mail_host("slow.test", "mx.slow.test", "127.0.0.2")
        rig.dns.mail_host("old.test", "mx.old.test", "127.0.0.3")
        (slow,) = await rig.send("a@slow.test")
        (old,) = await rig.send("b@old.test")
        entry = await rig.wait_for(slow, "queued", attempts=1)
        self.assertEqual(entry.last_state, "greeting")
        await rig.wait_for(old, "delivered")
        self.assertIn("HELO out.smtpeter.test", rig.sinks["127.0.0.3"].commands)

    async def test_starttls_opportunistic_and_required(self) -> None:
        rig = await self.rig(("127.0.0.2", Behaviour(starttls=True)), ("127.0.0.3", None))
        await rig.start(profiles={"strict": {"mx_suffixes": [".strict.test"], "tls": "required"}})
        rig.dns.mail_host("tls.test", "mx.tls.test", "127.0.0.2")
        rig.dns.mail_host("plain.test", "mx.plain.test", "127.0.0.3")
        rig.dns.mail_host("secure.test", "mx.strict.test", "127.0.0.3")
        (tls,) = await rig.send("a@tls.test")
        (plain,) = await rig.send("b@plain.test")
        (strict,) = await rig.send("c@secure.test")
        await rig.wait_for(tls, "delivered")
        self.assertTrue(rig.sinks["127.0.0.2"].received[0].tls)
        self.assertIn("tls", (await rig.events(tls))[-1].data)
        await rig.wait_for(plain, "delivered")
        self.assertFalse(rig.sinks["127.0.0.3"].received[0].tls)
        entry = await rig.wait_for(strict, "queued", attempts=1)
        self.assertEqual(entry.last_state, "starttls")
        self.assertEqual(len(rig.sinks["127.0.0.3"].received), 1)

    async def test_capabilities_decide_parameters_and_conversion(self) -> None:
        bare = Behaviour(extensions=["PIPELINING"])
        rig = await self.rig(("127.0.0.2", None), ("127.0.0.3", bare))
        await rig.start()
        rig.dns.mail_host("full.test", "mx.full.test", "127.0.0.2")
        rig.dns.mail_host("bare.test", "mx.bare.test", "127.0.0.3")
        body = "Grüße\r\n".encode()
        data = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n" + message("8bit", body))
        (full,) = await rig.send("a@full.test", data=data, notify="SUCCESS,FAILURE",
                                 orcpt=True, ret="FULL", envid="E+1")
        (bare_id,) = await rig.send("b@bare.test", data=data, notify="SUCCESS,FAILURE")
        (utf8,) = await rig.send("jörg@bare.test", smtputf8=True)
        await rig.wait_for(full, "delivered")
        received = rig.sinks["127.0.0.2"].received[0]
        self.assertEqual(received.mail_params.get("BODY"), "8BITMIME")
        self.assertEqual((received.mail_params.get("RET"), received.mail_params.get("ENVID")),
                         ("FULL", "E+2B1"))
        self.assertEqual(received.rcpt_params["a@full.test"],
                         {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;a@full.test"})
        self.assertTrue(received.data.endswith(body))
        await rig.wait_for(bare_id, "delivered")
        converted = rig.sinks["127.0.0.3"].received[0]
        self.assertEqual(converted.mail_params, {})
        self.assertEqual(converted.rcpt_params["b@bare.test"], {})
        self.assertTrue(converted.data.isascii())
        self.assertIn(b"quoted-printable", converted.data.lower())
        parsed = email.message_from_bytes(converted.data, policy=email.policy.default)
        self.assertEqual(parsed.get_payload(decode=True), body)
        # NOTIFY=SUCCESS to a peer without DSN: we report "relayed" ourselves.
        entry = await rig.wait_for(utf8, "failed")
        self.assertEqual(entry.last_status, "5.6.7")
        await rig.sinks[SENDER_IP].wait_for(2)
        reports = {b"global" in r.data: r.data for r in rig.sinks[SENDER_IP].received}
        (relayed,) = report_fields(email.message_from_bytes(reports[False], policy=email.policy.default))[1]
        self.assertEqual((relayed["Action"], relayed["Final-Recipient"]), ("relayed", "rfc822; b@bare.test"))
        # The SMTPUTF8 failure is reported in an RFC 6533 global DSN.
        self.assertIn("Final-Recipient: utf-8; jörg@bare.test".encode(), reports[True])
        self.assertIn(b"Action: failed", reports[True])

    async def test_dot_lines_survive_the_wire(self) -> None:
        rig = await self.one_destination()
        head = message("dots", b"")
        filler = b"".join(b"y" * 98 + b"\r\n" for _ in range(170))
        body = b".first\r\n" + filler + b".\r\n..\r\nlast\r\n"
        self.assertGreater(len(head + body), 16384)
        (mid,) = await rig.send("bob@dest.test", data=head + body)
        await rig.wait_for(mid, "delivered")
        (received,) = rig.sinks["127.0.0.2"].received
        self.assertTrue(received.data.endswith(body), "the receiver must get the message unchanged")
        self.assertNotIn(b"\r\n.\r\n", received.raw_data[:-5])

    async def test_backoff_pause_hands_work_back(self) -> None:
        replies = [(421, "4.7.0 [TSS04] please slow down")]
        rig = await self.rig(("127.0.0.2", Behaviour(
            rcpt_reply=lambda a: replies.pop() if replies else (250, "2.1.5 ok"))))
        await rig.start(profiles={"default": {"max_connections": 1}},
                        backoff=[{"pattern": r"\[TSS04\]", "pause": 900}])
        rig.dns.mail_host("dest.test", "mx1.dest.test", "127.0.0.2")
        ids = []
        for n in range(5):
            ids += await rig.send(f"user{n}@dest.test")
        sink = rig.sinks["127.0.0.2"]
        deadline = reactor.seconds() + 15
        while "dest.test" not in rig.service.dispatcher.held_domains():  # the 421 came back
            self.assertLess(reactor.seconds(), deadline, "the destination was never paused")
            await sleep(0.05)
        await rig.advance(600)  # still paused: nothing is tried
        await sleep(0.5)
        self.assertEqual(len([c for c in sink.commands if c.startswith("RCPT")]), 1)
        # Messages are prepared in any order: whichever went first was tried once, no other at all.
        self.assertEqual(sorted([(await rig.recipient(mid)).attempts for mid in ids]), [0, 0, 0, 0, 1])
        await rig.advance(400)  # the pause is over (and the first one's retry is due)
        for mid in ids:
            await rig.wait_for(mid, "delivered")
        self.assertEqual(len(sink.received), 5)

    async def test_a_backlog_drains_at_the_default_rate_without_a_gap(self) -> None:
        # The default profile (100 messages/s); a window of 100 caps a destination at 25
        # waiting recipients, so 300 messages fill it a dozen times over.
        rig = await self.one_destination(window=100)
        sink = rig.sinks["127.0.0.2"]
        started = reactor.seconds()
        await defer.gatherResults([defer.Deferred.fromCoroutine(rig.send(f"user{n}@dest.test"))
                                   for n in range(300)])
        count, progress = 0, started
        while count < 300:
            now = reactor.seconds()
            if len(sink.received) > count:
                count, progress = len(sink.received), now
            self.assertLess(now - progress, 2.0, f"no delivery for 2 s after {count} of 300")
            await sleep(0.05)
        # A hand-back on a timer would stall for a minute; 300 at 100/s (after a
        # burst of 100) take about 2 s.
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual(len({r.recipients[0] for r in sink.received}), 300)

    async def test_window_bounds_the_work_in_memory(self) -> None:
        rig = await self.one_destination(Behaviour(stall_at="dot"), window=10, timeouts={"data_done": 2})
        for n in range(40):
            await rig.send(f"user{n}@dest.test")
        deadline = reactor.seconds() + 10
        while rig.service.scheduler.in_flight < 10:  # the window fills (slower on a loaded machine)
            self.assertLess(reactor.seconds(), deadline, f"only {rig.service.scheduler.in_flight} in flight")
            await sleep(0.05)
        await sleep(0.5)  # and takes no more
        self.assertEqual(rig.service.scheduler.in_flight, 10)
        self.assertLessEqual(len(rig.sinks["127.0.0.2"].attempts), 10)

    async def test_restart_picks_up_leases_it_held(self) -> None:
        rig = await self.one_destination(Behaviour(stall_at="dot"), timeouts={"data_done": 30})
        (mid,) = await rig.send("bob@dest.test")
        await sleep(0.5)
        leased = await rig.recipient(mid)
        self.assertGreater(leased.next_attempt, rig.clock.seconds() + 1000)  # held under a lease
        await rig.harness.stop_async()
        rig.sinks["127.0.0.2"].behaviour.stall_at = None
        await rig.harness.start()
        await rig.wait_for(mid, "delivered")


class PostgreSQLDelivery(unittest.TestCase):
    async def test_delivery_on_postgresql(self) -> None:
        rig = Rig(self)
        rig.sink("127.0.0.2", Behaviour(rcpt_reply=lambda a: (550, "5.1.1 unknown") if "bad" in a
                                        else (250, "2.1.5 ok")))
        rig.sink(SENDER_IP)
        await rig.start("postgresql")
        rig.dns.mail_host("dest.test", "mx1.dest.test", "127.0.0.2")
        good, bad = await rig.send("good@dest.test", "bad@dest.test")
        await rig.wait_for(good, "delivered")
        await rig.wait_for(bad, "failed")
        await rig.sinks[SENDER_IP].wait_for(1)
