"""Delivery to a real receiving server: Postfix's smtp-sink, dumping what it gets to files."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial import unittest

from tests.support.harness import wait_for_port
from tests.support.rig import SENDER_IP, Rig, message

SINK_IP = "127.0.0.5"


class SmtpSinkTests(unittest.TestCase):
    def start_smtp_sink(self, port: int) -> Path:
        program = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(program).exists():
            raise RuntimeError("smtp-sink is not installed (the postfix package; .ci/run installs it)")
        dumps = Path(tempfile.mkdtemp(prefix="smtpeter-smtp-sink-"))
        dumps.chmod(0o777)
        self.addCleanup(shutil.rmtree, dumps, True)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = subprocess.Popen([program, *user, "-d", f"{dumps}/%M.", f"{SINK_IP}:{port}", "100"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (sink.terminate(), sink.wait(10)))
        wait_for_port(port, SINK_IP, sink)
        return dumps

    async def test_delivery_to_postfix_smtp_sink(self) -> None:
        rig = Rig(self, ips=(SINK_IP, SENDER_IP))
        dumps = self.start_smtp_sink(rig.port)
        rig.sink(SENDER_IP)
        await rig.start()
        rig.dns.mx("postfix.test", (10, "mx.postfix.test"))
        rig.dns.a("mx.postfix.test", SINK_IP)
        body = b".leading dot\r\n..two dots\r\n.\r\nend\r\n"
        ids = []
        for n in range(3):
            ids += await rig.send(f"user{n}@postfix.test", f"copy{n}@postfix.test",
                                  data=message(f"via smtp-sink {n}", body))
        for mid in ids:
            entry = await rig.wait_for(mid, "delivered")
            self.assertEqual(entry.last_code, 250)
        dumped = sorted(p.read_bytes() for p in dumps.iterdir())
        self.assertEqual(len(dumped), 3)  # one transaction per message, both recipients in it
        for text in dumped:
            self.assertIn(b"X-Mail-Args: <news@example.com>", text)
            self.assertEqual(text.count(b"X-Rcpt-Args: <"), 2)
            self.assertIn(b"X-Helo-Args: out.smtpeter.test", text)
            # smtp-sink stores LF line ends and one blank line after the message.
            self.assertTrue(text.endswith(b"\n\n" + body.replace(b"\r\n", b"\n") + b"\n"), text)
        event = (await rig.events(ids[0]))[-1]
        self.assertEqual((event.type, event.data["to"], event.data["mx"]), ("delivery", SINK_IP,
                                                                             "mx.postfix.test"))
