"""Signed tracking links: sign, verify, rotate keys, refuse everything else."""

from __future__ import annotations

import base64
import hmac
import os
import shutil
import stat
import tempfile
from pathlib import Path

from twisted.trial import unittest

from smtpeter.ids import new_id
from smtpeter.links import TOKEN_CHARS, Link, LinkSigner, signing_keys


class LinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.link = Link("click", new_id(), 7)
        self.signer = LinkSigner([b"first key"])
        self.token = self.signer.sign(self.link, b"https://www.example.com/offer?a=1")

    def test_round_trip(self) -> None:
        self.assertEqual(len(self.token), TOKEN_CHARS)
        self.assertTrue(all(c.isalnum() or c in "-_" for c in self.token))  # URL-safe, no padding
        self.assertEqual(self.signer.verify(self.token, b"https://www.example.com/offer?a=1"), self.link)
        for kind in ("open", "image", "hosted", "webversion"):
            link = Link(kind, self.link.recipient_id, 0)
            self.assertEqual(self.signer.verify(self.signer.sign(link)), link)

    def test_anything_changed_is_refused(self) -> None:
        self.assertIsNone(self.signer.verify(self.token, b"https://evil.example/offer?a=1"))
        self.assertIsNone(self.signer.verify(self.token, b""))
        for index in range(len(self.token)):  # every character of the token, flipped
            flipped = self.token[:index] + ("A" if self.token[index] != "A" else "B") + self.token[index + 1:]
            self.assertIsNone(self.signer.verify(flipped, b"https://www.example.com/offer?a=1"), index)
        for broken in ("", self.token[:-1], self.token + "A", "%" * TOKEN_CHARS, "é" * TOKEN_CHARS):
            self.assertIsNone(self.signer.verify(broken, b"https://www.example.com/offer?a=1"))
        self.assertIsNone(LinkSigner([b"another key"]).verify(self.token, b"https://www.example.com/offer?a=1"))

    def test_keys_rotate(self) -> None:
        rotated = LinkSigner([b"new key", b"first key"])
        self.assertEqual(rotated.verify(self.token, b"https://www.example.com/offer?a=1"), self.link)
        fresh = rotated.sign(self.link, b"x")
        self.assertIsNone(self.signer.verify(fresh, b"x"))  # new links need the new key
        self.assertEqual(LinkSigner([b"new key"]).verify(fresh, b"x"), self.link)

    def test_tags_are_hmac_sha256(self) -> None:
        # Tokens signed before the signer hashed its key blocks once still verify, for any key length.
        for key in (b"first key", b"k" * 64, b"long " * 40):
            token = LinkSigner([key]).sign(self.link, b"https://x.example/")
            raw = base64.urlsafe_b64decode(token + "==")
            expected = hmac.digest(key, raw[:-16] + b"\0https://x.example/", "sha256")[:16]
            self.assertEqual(raw[-16:], expected)

    def test_a_key_is_made_once_and_kept_private(self) -> None:
        directory = tempfile.mkdtemp(prefix="smtpeter-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        keys = signing_keys([], Path(directory))
        self.assertEqual(signing_keys([], Path(directory)), keys)
        mode = stat.S_IMODE(os.stat(Path(directory) / "tracking.key").st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(signing_keys(["configured"], Path(directory)), [b"configured"])
