"""kill -9 the real twistd process while clients submit: every acknowledged message survives."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from twisted.trial import unittest

from tests.support import postgres
from tests.support.harness import RawClient, wait_for_port

BIN = Path(sys.executable).parent


class KillNineTests(unittest.TestCase):
    def run_case(self, storage_url: str | None) -> None:
        directory = Path(tempfile.mkdtemp(prefix="smtpeter-kill-"))
        port = postgres.free_port()
        config = directory / "smtpeter.toml"
        storage = f'[storage]\nurl = "{storage_url}"\n' if storage_url else ""
        config.write_text(
            f'[server]\nhostname = "mx.test"\ndata_dir = "{directory / "data"}"\n{storage}'
            f'[smtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            'trusted_networks = ["127.0.0.0/8"]\ntrusted_account = "apps"\n'
            # Not the default tcp:8080, which another service on this machine may hold.
            f'[http]\nlisten = ["tcp:{postgres.free_port()}:interface=127.0.0.1"]\n'
            # This test is about ingress: nothing leaves, everything stays queued.
            '[delivery]\nhold = true\n'
        )
        cli = [str(BIN / "smtpeter"), "--config", str(config)]
        subprocess.run([*cli, "account", "create", "apps"], check=True, capture_output=True)
        subprocess.run([*cli, "domain", "add", "apps", "example.com", "--approve"], check=True,
                       capture_output=True)
        twistd = [str(BIN / "twistd"), "-n", "--pidfile=", "smtpeter", "--config", str(config)]

        # Logs go to a file: a pipe nobody reads would fill up and stop the server.
        log = open(directory / "twistd.log", "w")
        self.addCleanup(log.close)
        server = subprocess.Popen(twistd, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: server.poll() is None and server.kill())
        wait_for_port(port, process=server)

        acknowledged: list[str] = []
        stop = threading.Event()

        def client() -> None:
            try:
                connection = RawClient.greeted(port)
                while not stop.is_set():
                    connection.command(b"MAIL FROM:<app@example.com>")
                    connection.command(b"RCPT TO:<a@example.net>")
                    connection.command(b"RCPT TO:<b@example.net>")
                    connection.command(b"DATA")
                    connection.send(b"From: app@example.com\r\nSubject: durable\r\n\r\n" + b"x" * 2000
                                    + b"\r\n.\r\n")
                    code, lines = connection.reply()
                    if code == 250:
                        acknowledged.extend(re.findall(r"2\.0\.0 (\S+) for ", "\n".join(lines)))
            except (OSError, ConnectionError):
                pass  # the server was killed under us: expected

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        for thread in threads:
            thread.join(30)
        self.assertGreater(len(acknowledged), 50, "the clients should have had many messages accepted")

        restarted = subprocess.Popen(twistd, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: restarted.poll() is None and restarted.kill())
        wait_for_port(port, process=restarted)
        listing = subprocess.run([*cli, "queue", "list", "--json", "--state", "all", "--limit", "1000000"],
                                 check=True, capture_output=True, text=True)
        restarted.terminate()
        restarted.wait(30)
        stored = {entry["id"] for entry in json.loads(listing.stdout)}
        missing = set(acknowledged) - stored
        self.assertEqual(missing, set(), f"{len(missing)} of {len(acknowledged)} acknowledged messages lost")

    def test_sqlite(self) -> None:
        self.run_case(None)

    def test_postgresql(self) -> None:
        self.run_case(postgres.cluster().create_database())
