"""Sealing DKIM private keys at rest: round trips, and everything else refused."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import tempfile
from pathlib import Path

from twisted.trial import unittest

from smtpeter.config import ConfigError, parse_config
from smtpeter.domains.sealing import KEY_FILE, Sealer, SealingError, encryption_key

CONTEXT = b"dkim:example.com/zero"
PEM = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIF4A...\n-----END PRIVATE KEY-----\n"


class SealerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sealer = Sealer(bytes(range(32)))

    def test_round_trip(self) -> None:
        sealed = self.sealer.seal(PEM, CONTEXT)
        self.assertEqual(self.sealer.open(sealed, CONTEXT), PEM)
        self.assertNotIn(b"PRIVATE", sealed)
        # Version byte, 96-bit nonce, ciphertext as long as the plaintext, 128-bit tag.
        self.assertEqual(len(sealed), 1 + 12 + len(PEM) + 16)
        self.assertEqual(sealed[:1], b"\x01")
        # A fresh nonce every time: the same key sealed twice looks different.
        self.assertNotEqual(self.sealer.seal(PEM, CONTEXT), sealed)
        self.assertEqual(self.sealer.open(self.sealer.seal(b"", CONTEXT), CONTEXT), b"")

    def test_another_context_does_not_open(self) -> None:
        sealed = self.sealer.seal(PEM, CONTEXT)
        for context in (b"dkim:example.com/one", b"dkim:example.net/zero", b"", CONTEXT + b"\0"):
            with self.assertRaises(SealingError):
                self.sealer.open(sealed, context)

    def test_another_key_does_not_open(self) -> None:
        sealed = self.sealer.seal(PEM, CONTEXT)
        with self.assertRaises(SealingError) as caught:
            Sealer(bytes(32)).open(sealed, CONTEXT)
        self.assertIn("another key", str(caught.exception))

    def test_any_changed_byte_is_refused(self) -> None:
        sealed = self.sealer.seal(PEM, CONTEXT)
        for index in range(len(sealed)):
            tampered = sealed[:index] + bytes([sealed[index] ^ 0x01]) + sealed[index + 1:]
            with self.assertRaises(SealingError, msg=index):
                self.sealer.open(tampered, CONTEXT)
        for broken in (b"", sealed[:28], sealed[:-1], sealed + b"\0", b"\x02" + sealed[1:]):
            with self.assertRaises(SealingError):
                self.sealer.open(broken, CONTEXT)

    def test_key_must_be_32_bytes(self) -> None:
        for length in (0, 16, 31, 33):
            with self.assertRaises(ValueError):
                Sealer(bytes(length))


class EncryptionKeyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smtpeter-test-"))
        self.addCleanup(shutil.rmtree, self.directory, True)

    def config(self, **domains: object) -> object:
        return parse_config({"server": {"data_dir": str(self.directory / "data")}, "domains": domains})

    def test_configured_key(self) -> None:
        key = os.urandom(32)
        self.assertEqual(encryption_key(self.config(encryption_key=base64.b64encode(key).decode())), key)
        self.assertFalse((self.directory / "data" / KEY_FILE).exists())

    def test_a_key_file_is_made_once_and_kept_private(self) -> None:
        key = encryption_key(self.config())
        self.assertEqual(len(key), 32)
        self.assertEqual(encryption_key(self.config()), key)
        path = self.directory / "data" / KEY_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(base64.b64decode(path.read_text()), key)
        # No temporary file is left behind.
        self.assertEqual([p.name for p in path.parent.iterdir()], [KEY_FILE])
        # What it sealed opens after a restart.
        sealed = Sealer(key).seal(PEM, CONTEXT)
        self.assertEqual(Sealer(encryption_key(self.config())).open(sealed, CONTEXT), PEM)

    def test_a_broken_key_file_is_an_error_not_a_new_key(self) -> None:
        path = self.directory / "data" / KEY_FILE
        path.parent.mkdir()
        path.write_text("c2hvcnQ=\n")
        with self.assertRaises(ConfigError) as caught:
            encryption_key(self.config())
        self.assertIn(str(path), str(caught.exception))
        self.assertEqual(path.read_text(), "c2hvcnQ=\n")
