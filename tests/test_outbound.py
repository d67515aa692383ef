"""The outbound pipeline: per-message work once, per-recipient variants, batching, workers."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial import unittest

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.ids import new_id
from smtpeter.outbound import pipeline as pipeline_module
from smtpeter.outbound import steps as outbound_steps
from smtpeter.outbound.job import OutboundJob, StepSettings
from smtpeter.outbound.pipeline import Batch, Pipeline, batched
from smtpeter.outbound.steps import Step
from smtpeter.outbound.workers import Workers
from smtpeter.storage.models import StoredMessage
from tests.support.rig import Rig
from tests.support.rig import message as rig_message
from tests.support.sink import Behaviour

MIME = b"From: news@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
SETTINGS = StepSettings("http://track.test", (b"a test key",))
CALLS: list[str] = []


def message(mime: bytes = MIME, message_id: str = "m1") -> StoredMessage:
    return StoredMessage(message_id, "acct", "smtp", Envelope("news@example.com"), mime, MessageOptions(), [],
                         0.0, 86400.0)


# Steps are module-level functions, as the shipped ones: workers get them by reference.
def count_parse(message: StoredMessage, content: bytes, settings: StepSettings) -> bytes:
    CALLS.append(message.id)
    return b"X-Prepared: yes\r\n" + content


def fail(message: StoredMessage, content: bytes, settings: StepSettings) -> bytes:
    raise ValueError("broken step")


def stamp_pid(message: StoredMessage, content: bytes, settings: StepSettings) -> bytes:
    return f"X-Worker-Pid: {os.getpid()}\r\n".encode() + content


def variant_by_domain(job: OutboundJob, settings: StepSettings) -> OutboundJob:
    """Per recipient, as tracking will be; here recipients of one domain get the same bytes."""
    domain = job.recipients[0].address.rpartition("@")[2]
    return job.with_content(f"X-Variant: {domain}\r\n".encode() + job.content)


def always(*args: object) -> bool:
    return True


def ids(recipients: list[Recipient]) -> list[str]:
    return [new_id() for _ in recipients]


async def jobs_for(pipeline: Pipeline, stored: StoredMessage, *addresses: str) -> list[Batch]:
    recipients = [Recipient(address) for address in addresses]
    return await pipeline.jobs(stored, recipients, ids(recipients))


class PipelineTests(unittest.TestCase):
    def setUp(self) -> None:
        CALLS.clear()
        self.workers = Workers(reactor, 0)
        self.addCleanup(self.workers.stop)

    async def test_a_message_is_prepared_once_for_all_its_recipients(self) -> None:
        """10,000 recipients of one message, in 100 jobs of 100: one parse, not 10,000."""
        pipeline = Pipeline(self.workers, SETTINGS, message_steps=[Step("count", count_parse, always)])
        stored = message()
        for _ in range(100):
            pipeline.hold(stored)
        jobs = []
        for chunk in range(100):
            recipients = [Recipient(f"r{chunk}-{n}@dest.test") for n in range(100)]
            jobs += [batch.job for batch in await pipeline.jobs(stored, recipients, ids(recipients))]
        self.assertEqual(CALLS, ["m1"])
        self.assertEqual(len(jobs), 100)  # plain mail: a transaction per chunk of 100
        self.assertTrue(all(len(job.recipients) == 100 for job in jobs))
        self.assertTrue(all(job.content.startswith(b"X-Prepared") for job in jobs))
        for _ in range(100):
            pipeline.release(stored.id)
        self.assertEqual(pipeline._entries, {})
        await jobs_for(pipeline, stored, "late@dest.test")  # just released: still known
        self.assertEqual(CALLS, ["m1"])
        self.patch(pipeline_module, "RECENT_BYTES", 0)
        pipeline.hold(message(message_id="m2"))
        pipeline.release("m2")  # forgotten at once: nothing else fits now
        await jobs_for(pipeline, message(message_id="m2"), "a@dest.test")
        await jobs_for(pipeline, message(message_id="m2"), "a@dest.test")
        self.assertEqual(CALLS, ["m1", "m2", "m2"])

    async def test_nothing_to_do_costs_no_worker(self) -> None:
        ran: list[str] = []
        self.workers.run = lambda *args: ran.append("ran")  # type: ignore[method-assign]
        pipeline = Pipeline(self.workers, SETTINGS)  # the shipped steps: lines are short, nothing to do
        (batch,) = await jobs_for(pipeline, message(), "a@dest.test", "b@dest.test")
        self.assertEqual((ran, batch.job.content, len(batch.job.recipients), batch.positions),
                         ([], MIME, 2, (0, 1)))

    async def test_per_recipient_variants_share_a_transaction_only_when_identical(self) -> None:
        pipeline = Pipeline(self.workers, SETTINGS,
                            recipient_steps=[Step("variant", variant_by_domain, always)])
        recipients = [Recipient(a) for a in ("a@one.test", "b@two.test", "c@one.test", "d@two.test",
                                             "e@three.test")]
        batches = await pipeline.jobs(message(), recipients, ids(recipients))
        self.assertEqual([[r.address for r in batch.job.recipients] for batch in batches],
                         [["a@one.test", "c@one.test"], ["b@two.test", "d@two.test"], ["e@three.test"]])
        self.assertEqual([batch.positions for batch in batches], [(0, 2), (1, 3), (4,)])
        self.assertEqual([batch.job.content.split(b"\r\n")[0] for batch in batches],
                         [b"X-Variant: one.test", b"X-Variant: two.test", b"X-Variant: three.test"])
        self.assertTrue(all(batch.job.message.mime == MIME for batch in batches))  # not the worker's copy

    async def test_batching_keeps_senders_apart(self) -> None:
        stored = message()
        a = OutboundJob(stored, Envelope("x@example.com", (Recipient("a@d.test"),)), MIME)
        b = OutboundJob(stored, Envelope("y@example.com", (Recipient("b@d.test"),)), MIME)
        c = OutboundJob(stored, Envelope("x@example.com", (Recipient("c@d.test"),)), MIME)
        self.assertEqual([([r.address for r in batch.job.recipients], batch.positions)
                          for batch in batched([a, b, c])],
                         [(["a@d.test", "c@d.test"], (0, 2)), (["b@d.test"], (1,))])

    async def test_a_failing_step_is_skipped_and_the_message_kept(self) -> None:
        pipeline = Pipeline(self.workers, SETTINGS, message_steps=[Step("fail", fail, always),
                                                         Step("count", count_parse, always)])
        (batch,) = await jobs_for(pipeline, message(), "a@dest.test")
        self.assertEqual(batch.job.content, b"X-Prepared: yes\r\n" + MIME)  # the next step still ran
        self.assertEqual(batch.warnings, ("fail: ValueError('broken step')",))

    async def test_steps_run_in_a_worker_process(self) -> None:
        workers = Workers(reactor, 1)
        self.addCleanup(workers.stop)
        pipeline = Pipeline(workers, SETTINGS, message_steps=[Step("pid", stamp_pid, always)])
        (batch,) = await jobs_for(pipeline, message(), "a@dest.test")
        pid = int(batch.job.content.split(b"\r\n")[0].split(b": ")[1])
        self.assertNotEqual(pid, os.getpid())


SIGNED: dict[str, bytes] = {}


def last_step(job: OutboundJob, settings: StepSettings) -> bytes:
    """Stands where DKIM will: adds a header over the final bytes, and remembers what it returned."""
    signed = b"X-Last-Step: " + job.recipients[0].address.encode() + b"\r\n" + job.content
    SIGNED[job.recipients[0].address] = signed
    return signed


class WireBytesTests(unittest.TestCase):
    async def test_the_last_step_returns_exactly_what_the_peer_stores(self) -> None:
        """8-bit mail to a peer with 8BITMIME and to one without: 7-bit is decided before the
        last step, and nothing after it changes a byte (the sink dot-unstuffs what it got)."""
        SIGNED.clear()
        self.patch(outbound_steps, "LAST_STEPS", (Step("last", last_step, always),))
        rig = Rig(self)
        rig.sink("127.0.0.2")
        rig.sink("127.0.0.3", Behaviour(extensions=["PIPELINING", "SIZE 10000000"]))
        await rig.start(transform_workers=0)  # in this process, where SIGNED is
        rig.dns.mail_host("full.test", "mx.full.test", "127.0.0.2")
        rig.dns.mail_host("bare.test", "mx.bare.test", "127.0.0.3")
        body = "Grüße aus Köln\r\n.a line that starts with a dot\r\n".encode()
        data = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n" + rig_message("8bit", body))
        full, bare = [(await rig.send(address, data=data))[0] for address in ("a@full.test", "b@bare.test")]
        await rig.wait_for(full, "delivered")
        await rig.wait_for(bare, "delivered")
        eight_bit = rig.sinks["127.0.0.2"].received[0]
        seven_bit = rig.sinks["127.0.0.3"].received[0]
        self.assertEqual(eight_bit.data, SIGNED["a@full.test"])
        self.assertEqual(seven_bit.data, SIGNED["b@bare.test"])
        self.assertFalse(eight_bit.data.isascii())  # sent as it was, with BODY=8BITMIME
        self.assertEqual(eight_bit.mail_params.get("BODY"), "8BITMIME")
        self.assertTrue(seven_bit.data.isascii())  # converted before the last step saw it
        self.assertTrue(seven_bit.data.startswith(b"X-Last-Step: b@bare.test\r\n"))
        self.assertIn(b"\r\n..a line", seven_bit.raw_data + eight_bit.raw_data)  # stuffed on the wire

    async def test_a_step_that_fails_is_a_warning_event_and_the_mail_goes_out(self) -> None:
        self.patch(outbound_steps, "MESSAGE_STEPS", (Step("fail", fail, always),))
        rig = Rig(self)
        rig.sink("127.0.0.2")
        await rig.start(transform_workers=0)
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        (mid,) = await rig.send("a@dest.test")
        await rig.wait_for(mid, "delivered")
        stored = await rig.storage.message_content(mid)
        self.assertEqual(rig.sinks["127.0.0.2"].received[0].data, stored.mime)  # unchanged
        (warning,) = [e for e in await rig.events(mid) if e.type == "warning"]
        self.assertEqual(warning.data["description"], "fail: ValueError('broken step')")
