"""``twistd smtpeter`` as an operator runs it: a start that cannot succeed says why in one
line on stderr and exits non-zero (twistd itself exits 0 once its reactor stops)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

TWISTD = str(Path(sys.executable).parent / "twistd")
LOOPBACK = "tcp:0:interface=127.0.0.1"


class StartupFailureTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smtpeter-startup-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.config = self.directory / "smtpeter.toml"

    def twistd(self, smtp: str = f'listen = ["{LOOPBACK}"]', extra: str = "") -> tuple[int, list[str]]:
        """Start twistd with this [smtp] section; its exit status and its stderr lines.
        A start that hangs instead of failing is killed, and fails the test."""
        self.config.write_text(
            f'[server]\nhostname = "mx.test"\ndata_dir = "data"\n{extra}\n'
            f'[smtp]\n{smtp}\n[http]\nlisten = ["{LOOPBACK}"]\n[delivery]\nhold = true\n'
        )
        done = subprocess.run([TWISTD, "-n", "--pidfile=", "smtpeter", "--config", str(self.config)],
                              capture_output=True, env={}, cwd=self.directory, timeout=60)
        return done.returncode, done.stderr.decode().splitlines()

    def test_port_in_use(self) -> None:
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen()
        endpoint = f"tcp:{held.getsockname()[1]}:interface=127.0.0.1"
        code, err = self.twistd(f'listen = ["{endpoint}"]')
        self.assertNotEqual(code, 0)
        self.assertEqual(err, [f"smtpeter: cannot listen on {endpoint}: address already in use"])

    def test_unknown_key(self) -> None:
        code, err = self.twistd(f'listen = ["{LOOPBACK}"]\nfoo = 1')
        self.assertNotEqual(code, 0)
        self.assertEqual(err, [f"smtpeter: {self.config}: unknown key 'foo' in [smtp]"])

    def test_trusted_account_missing(self) -> None:
        code, err = self.twistd(f'listen = ["{LOOPBACK}"]\ntrusted_networks = ["127.0.0.1/32"]\n'
                                      'trusted_account = "apps"')
        self.assertNotEqual(code, 0)
        self.assertEqual(err, ["smtpeter: [smtp] trusted_account 'apps' does not exist; "
                               "create it with: smtpeter account create NAME"])

    def test_storage_cannot_be_opened(self) -> None:
        # A directory where the database file should be: SQLite cannot open it.
        (self.directory / "db").mkdir()
        code, err = self.twistd(extra='[storage]\nurl = "sqlite:///db"')
        self.assertNotEqual(code, 0)
        self.assertEqual(len(err), 1, err)
        prefix = f"smtpeter: cannot open storage sqlite:///{self.directory / 'db'}: "
        self.assertTrue(err[0].startswith(prefix), err)
