"""DKIM keys of sender domains: made or installed, sealed in storage, opened to sign, rotated."""

from __future__ import annotations

import json
import os
import subprocess

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial import unittest

from smtpeter.domains import rotation
from smtpeter.domains.keys import DkimKeyError, KeyStore, context, load_private_key, public_view
from smtpeter.domains.model import ACTIVE, NEXT, RETIRED, DomainStatus
from smtpeter.domains.sealing import Sealer, SealingError
from smtpeter.outbound.dkim import dns_record, sign
from smtpeter.storage import Conflict, NotFound
from smtpeter.storage.db import SQL
from tests.support.backends import BackendMixin
from tests.support.clock import ShiftedClock

DAY = 86400.0
MESSAGE = (b"From: News <news@example.com>\r\nTo: someone@example.net\r\nSubject: Hello\r\n"
           b"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello there.\r\n")


def pem(key: object, encoding: object = serialization.PrivateFormat.PKCS8,
        encryption: object = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, encoding,  # type: ignore[attr-defined]
                             encryption or serialization.NoEncryption())


def verified(message: bytes, records: dict[str, str]) -> list[bool]:
    """Each DKIM signature of ``message`` checked by dkimpy against ``records`` (name -> TXT)."""
    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    signatures = message.count(b"DKIM-Signature:")
    return [dkim.DKIM(message).verify(idx=i, dnsfunc=txt) for i in range(signatures)]


class KeyStoreTests(BackendMixin, unittest.TestCase):
    backend = "sqlite"  # storage itself runs on both backends in test_storage

    async def setUp(self) -> None:
        self.clock = ShiftedClock()
        self.storage = await self.open_storage(clock=self.clock)
        self.account = (await self.storage.create_account("acme")).id
        self.other = (await self.storage.create_account("other")).id
        await self.storage.add_domain(self.account, "example.com", approved=True)
        self.sealer = Sealer(os.urandom(32))
        self.keystore = KeyStore(self.storage, self.sealer)

    async def test_managed_keys_are_made_and_kept_sealed(self) -> None:
        before = self.clock.seconds()
        made = await self.keystore.setup_new_domain(self.account, "example.com", ("rsa", "ed25519"))
        self.assertEqual([(k.selector, k.algorithm, k.state, k.managed) for k in made],
                         [("zero", "rsa", NEXT, True), ("zero-ed", "ed25519", NEXT, True)])
        self.assertEqual(await self.keystore.keys("example.com"), sorted(made, key=lambda k: k.selector))
        rsa_key, ed_key = made
        self.assertEqual(serialization.load_pem_private_key(rsa_key.private_key, None).key_size, 2048)
        self.assertIsInstance(serialization.load_pem_private_key(ed_key.private_key, None),
                              ed25519.Ed25519PrivateKey)
        for key in made:
            self.assertEqual(key.public_record, dns_record(key.algorithm, key.private_key))
            self.assertTrue(before <= key.created <= self.clock.seconds())
            self.assertIsNone(key.activated)
        # In the database only sealed, and only for its own row.
        rows = await self.storage.db.query("SELECT selector, private_key FROM dkim_keys ORDER BY selector")
        for (selector, sealed), key in zip(rows, made, strict=True):
            self.assertNotIn(b"PRIVATE", bytes(sealed))
            self.assertNotIn(key.private_key[40:80], bytes(sealed))
            opened = self.sealer.open(bytes(sealed), context("example.com", selector))
            self.assertEqual(opened, key.private_key)
        # Done already: nothing more is made.
        again = await self.keystore.setup_new_domain(self.account, "example.com", ("rsa", "ed25519"))
        self.assertEqual(again, [])
        self.assertEqual(len(await self.keystore.keys(account_id=self.account)), 2)
        self.assertEqual(await self.keystore.keys(account_id=self.other), [])
        self.assertEqual([k.selector for k in await self.keystore.keys(selector="zero-ed")], ["zero-ed"])
        # Another account's domain gets no keys.
        with self.assertRaises(NotFound):
            await self.keystore.setup_new_domain(self.other, "example.com", ("rsa",))

    async def test_a_sealed_key_opens_only_in_its_row_and_with_its_key(self) -> None:
        await self.keystore.setup_new_domain(self.account, "example.com", ("ed25519",))
        await self.keystore.create(self.account, "example.com", "ed25519", "one-ed", NEXT)
        await self.storage.db.transaction([SQL(
            "UPDATE dkim_keys SET private_key = "
            "(SELECT private_key FROM dkim_keys WHERE selector = 'zero-ed') WHERE selector = 'one-ed'")])
        with self.assertRaises(SealingError):
            await self.keystore.keys("example.com", selector="one-ed")
        self.assertEqual(len(await self.keystore.keys("example.com", selector="zero-ed")), 1)
        with self.assertRaises(SealingError):
            await KeyStore(self.storage, Sealer(os.urandom(32))).keys("example.com", selector="zero-ed")

    async def test_installed_keys(self) -> None:
        rsa_1024 = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the smallest DKIM takes
        # PKCS#1 ("BEGIN RSA PRIVATE KEY") as text, as the API gets it: kept as PKCS#8.
        traditional = pem(rsa_1024, serialization.PrivateFormat.TraditionalOpenSSL).decode()
        self.assertIn("BEGIN RSA PRIVATE KEY", traditional)
        key = await self.keystore.install(self.account, "Example.COM", "Mail2026", traditional, always=True,
                                          start=1000.0, end=2000.0)
        self.assertEqual((key.domain, key.selector, key.algorithm, key.managed, key.state, key.always),
                         ("example.com", "mail2026", "rsa", False, ACTIVE, True))
        self.assertEqual((key.start, key.end), (1000.0, 2000.0))
        self.assertEqual(key.private_key, pem(rsa_1024))
        self.assertEqual(await self.keystore.keys("example.com"), [key])
        ed = ed25519.Ed25519PrivateKey.generate()
        key = await self.keystore.install(self.account, "example.com", "ed.2026", pem(ed))
        self.assertEqual((key.algorithm, key.private_key, key.always), ("ed25519", pem(ed), False))
        # Without a key of their own, one is made (RSA-2048).
        key = await self.keystore.install(self.account, "example.com", "made")
        self.assertEqual((key.algorithm, key.managed, key.state), ("rsa", False, ACTIVE))
        self.assertEqual(serialization.load_pem_private_key(key.private_key, None).key_size, 2048)
        with self.assertRaises(Conflict):
            await self.keystore.install(self.account, "example.com", "MADE")
        with self.assertRaises(NotFound):
            await self.keystore.install(self.other, "example.com", "theirs", pem(ed))

    async def test_installed_keys_that_cannot_sign_are_refused_saying_why(self) -> None:
        rsa_512 = subprocess.run(["openssl", "genrsa", "512"], capture_output=True, check=True).stdout
        cases = [
            (rsa_512, "the RSA key has 512 bits; DKIM verifiers take 1024 to 4096"),
            (pem(rsa.generate_private_key(65537, 4104)), "has 4104 bits"),
            (pem(ed25519.Ed25519PrivateKey.generate(),
                 encryption=serialization.BestAvailableEncryption(b"pw")),
             "encrypted; install it without a passphrase"),
            (pem(ec.generate_private_key(ec.SECP256R1())), "neither RSA nor ed25519"),
            (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
             "is not a PEM private key"),
            ("just text ✓", "is not a PEM private key"),
            (dns_record("ed25519", pem(ed25519.Ed25519PrivateKey.generate())), "is not a PEM private key"),
        ]
        for private_key, message in cases:
            with self.assertRaises(DkimKeyError, msg=message) as caught:
                await self.keystore.install(self.account, "example.com", "custom", private_key)
            self.assertIn(message, str(caught.exception))
        ed = pem(ed25519.Ed25519PrivateKey.generate())
        selector_cases = [
            ("zero", "one of our rotating ones"), ("two-ed", "one of our rotating ones"),
            ("under_score", "is not a DKIM selector"), ("-dash", "is not a DKIM selector"),
            ("a..b", "is not a DKIM selector"), ("", "is not a DKIM selector"),
            ("x" * 64, "is not a DKIM selector"),
        ]
        for selector, message in selector_cases:
            with self.assertRaises(DkimKeyError, msg=selector) as caught:
                await self.keystore.install(self.account, "example.com", selector, ed)
            self.assertIn(message, str(caught.exception))
        with self.assertRaises(DkimKeyError) as caught:
            await self.keystore.create(self.account, "example.com", "rsa", "custom", ACTIVE, managed=False,
                                       private_key=ed)
        self.assertIn("the private key is ed25519, not rsa", str(caught.exception))
        with self.assertRaises(DkimKeyError) as caught:
            await self.keystore.create(self.account, "example.com", "rsa", "zero-ed", NEXT)
        self.assertIn("managed rsa keys use the selectors zero, one, two", str(caught.exception))
        with self.assertRaises(DkimKeyError):
            await self.keystore.create(self.account, "example.com", "dsa", "zero", NEXT)
        with self.assertRaises(DkimKeyError):
            await self.keystore.create(self.account, "example.com", "rsa", "zero", "signing")
        self.assertEqual(await self.keystore.keys(), [])

    def test_load_private_key(self) -> None:
        ed = ed25519.Ed25519PrivateKey.generate()
        self.assertEqual(load_private_key(pem(ed)), ("ed25519", pem(ed)))
        self.assertEqual(load_private_key(b"\n\n" + pem(ed).strip()), ("ed25519", pem(ed)))

    async def test_the_public_view_never_shows_the_private_key(self) -> None:
        keys = await self.keystore.setup_new_domain(self.account, "example.com", ("rsa", "ed25519"))
        for key in keys:
            view = public_view(key)
            shown = json.dumps(view)
            self.assertNotIn("PRIVATE", shown)
            private_body = b"".join(key.private_key.splitlines()[1:-1]).decode()
            for start in range(0, len(private_body) - 16, 16):
                self.assertNotIn(private_body[start:start + 16], shown)
            self.assertNotIn("private", view)
            self.assertEqual((view["hostname"], view["state"], view["record"], view["type"]),
                             (f"{key.selector}._domainkey.example.com", NEXT, key.public_record,
                              key.algorithm))
            spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            public = serialization.load_pem_public_key(view["public"].encode())
            private = serialization.load_pem_private_key(key.private_key, None)
            self.assertEqual(public.public_bytes(*spki), private.public_key().public_bytes(*spki))
        self.assertEqual([public_view(k)["algorithm"] for k in keys], ["sha256", "ed25519-sha256"])
        # Read from the public record: a key as storage lists it (not opened) shows the same.
        for key, row in zip(keys, await self.storage.dkim_key_rows("example.com"), strict=True):
            self.assertEqual(public_view(row.key), public_view(key))

    async def test_signing_keys(self) -> None:
        now = self.clock.seconds()
        made = await self.keystore.setup_new_domain(self.account, "example.com", ("rsa", "ed25519"))
        everything = {"zero", "zero-ed", "one", "one-ed", "custom", "custom-ed"}
        # NEXT keys never sign, published or not.
        self.assertEqual(await self.keystore.signing_keys("example.com", self.account, everything, now), [])
        for key in made:
            await self.storage.update_dkim_key("example.com", key.selector, state=ACTIVE, activated=now)
        signing = await self.keystore.signing_keys("Example.com", self.account, everything, now)
        self.assertEqual([(k.domain, k.selector, k.algorithm) for k in signing],
                         [("example.com", "zero", "rsa"), ("example.com", "zero-ed", "ed25519")])
        self.assertEqual([k.private_key for k in signing], [k.private_key for k in made])
        # Only what the last check saw published.
        signing = await self.keystore.signing_keys("example.com", self.account, {"zero-ed"}, now)
        self.assertEqual([k.selector for k in signing], ["zero-ed"])
        # The keys sign, and what they sign verifies against the published records (dual, RFC 8463).
        records = {f"{k.selector}._domainkey.example.com": k.public_record for k in made}
        signing = await self.keystore.signing_keys("example.com", self.account, everything, now)
        self.assertEqual(verified(sign(MESSAGE, signing), records), [True, True])
        # While both are ACTIVE (mid-rotation), the one activated last signs.
        await self.keystore.create(self.account, "example.com", "rsa", "one", NEXT)
        await self.storage.update_dkim_key("example.com", "one", state=ACTIVE, activated=now + 10)
        signing = await self.keystore.signing_keys("example.com", self.account, everything, now + 20)
        self.assertEqual([k.selector for k in signing], ["one", "zero-ed"])
        # A customer's key signs instead of ours inside its validity, and only then.
        await self.keystore.install(self.account, "example.com", "custom", start=now + 100, end=now + 200)
        for moment, selector in ((now + 99, "one"), (now + 100, "custom"), (now + 199, "custom"),
                                 (now + 200, "one")):
            signing = await self.keystore.signing_keys("example.com", self.account, everything, moment)
            self.assertEqual([k.selector for k in signing], [selector, "zero-ed"], moment)
        signing = await self.keystore.signing_keys("example.com", self.account, everything - {"custom"},
                                                   now + 150)
        self.assertEqual([k.selector for k in signing], ["one", "zero-ed"])
        # Another account asking gets nothing.
        self.assertEqual(await self.keystore.signing_keys("example.com", self.other, everything, now), [])

    async def test_always_keys_of_other_domains_sign_too(self) -> None:
        now = self.clock.seconds()
        await self.storage.add_domain(self.account, "brand.example", approved=True)
        await self.storage.add_domain(self.account, "pending.example")
        brand = await self.keystore.install(self.account, "brand.example", "all", always=True)
        await self.keystore.install(self.account, "brand.example", "own")  # not "always": brand's own mail
        await self.keystore.install(self.account, "pending.example", "all", always=True)
        # Until a check of brand.example saw its key, it signs nothing.
        self.assertEqual(await self.keystore.signing_keys("example.com", self.account, set(), now), [])
        for domain in ("brand.example", "pending.example"):
            await self.storage.record_domain_status(DomainStatus(domain, {}, {}, ("all", "own"), now))
        signing = await self.keystore.signing_keys("example.com", self.account, set(), now)
        # Only the approved domain's: a domain not proven ours never signs.
        self.assertEqual([(k.domain, k.selector) for k in signing], [("brand.example", "all")])
        records = {"all._domainkey.brand.example": brand.public_record}
        self.assertEqual(verified(sign(MESSAGE, signing), records), [True])
        signing = await self.keystore.signing_keys("brand.example", self.account, {"all", "own"}, now)
        self.assertEqual(len(signing), 1)  # one per algorithm for the domain itself
        self.assertEqual(await self.keystore.signing_keys("example.com", self.other, set(), now), [])

    async def test_rotation_applied_to_stored_keys(self) -> None:
        algorithms = ("rsa", "ed25519")

        async def check(published: set[str]) -> list[rotation.Action]:
            now = self.clock.seconds()
            keys = await self.keystore.keys("example.com")
            actions = rotation.plan(keys, published, now, 30, 7, algorithms)
            await rotation.apply(self.keystore, self.storage, self.account, "example.com", actions, now)
            # Another node that planned from the same view changes nothing and fails on nothing.
            await rotation.apply(self.keystore, self.storage, self.account, "example.com", actions, now)
            return actions

        async def states() -> dict[str, str]:
            return {k.selector: k.state for k in await self.keystore.keys("example.com")}

        await self.keystore.setup_new_domain(self.account, "example.com", algorithms)
        self.assertEqual(await check(set()), [])
        self.assertEqual(len(await check({"zero", "zero-ed"})), 4)
        self.assertEqual(await states(), {"zero": ACTIVE, "zero-ed": ACTIVE, "one": NEXT, "one-ed": NEXT})
        (zero,) = await self.keystore.keys("example.com", selector="zero")
        self.assertTrue(abs(zero.activated - self.clock.seconds()) < 5)
        self.clock.advance(30 * DAY)
        await check({"zero", "zero-ed", "one", "one-ed"})
        self.assertEqual(await states(), {"zero": RETIRED, "zero-ed": RETIRED, "one": ACTIVE,
                                          "one-ed": ACTIVE, "two": NEXT, "two-ed": NEXT})
        (zero,) = await self.keystore.keys("example.com", selector="zero")
        self.assertTrue(abs(zero.end - (self.clock.seconds() + 7 * DAY)) < 5)
        signing = await self.keystore.signing_keys("example.com", self.account, {"zero", "one", "one-ed"},
                                                   self.clock.seconds())
        self.assertEqual([k.selector for k in signing], ["one", "one-ed"])
        self.clock.advance(7 * DAY + 10)
        self.assertEqual(await check({"one", "one-ed", "two", "two-ed"}),
                         [rotation.Delete("zero"), rotation.Delete("zero-ed")])
        self.clock.advance(30 * DAY)
        await check({"one", "one-ed", "two", "two-ed"})
        self.assertEqual(await states(), {"one": RETIRED, "one-ed": RETIRED, "two": ACTIVE, "two-ed": ACTIVE,
                                          "zero": NEXT, "zero-ed": NEXT})
        # The new zero is a new key, not the old one back.
        (new_zero,) = await self.keystore.keys("example.com", selector="zero")
        self.assertNotEqual(new_zero.private_key, zero.private_key)
