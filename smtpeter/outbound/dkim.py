"""DKIM signing (RFC 6376, RFC 8463): the last step, over the exact bytes the receiver gets.

dkimpy canonicalises and builds the signature; its RSA is pure Python (about
12 ms a signature on the 2-core VM), so the RSA step is done by OpenSSL
through ``cryptography`` instead (about 1.4 ms, the same signature). ed25519
goes through PyNaCl, as dkimpy does it.

Each key of the sender domain signs (RSA and ed25519: dual-signed, RFC 8463,
so receivers that know ed25519 check it and the others the RSA one). The
signature covers the fields of ``SIGNED_HEADERS`` the message has, each as
often as it occurs, and From once more (over-signing: a From added on the
way breaks the signature, RFC 6376 §8.15).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import canonicalization

# Relaxed/relaxed survives the re-folding and white space changes relays make.
CANONICALIZE = (b"relaxed", b"relaxed")
# What the signature covers where present; From once more than present (over-signing).
SIGNED_HEADERS = (b"from", b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"mime-version", b"content-type", b"content-transfer-encoding", b"list-unsubscribe",
                  b"list-unsubscribe-post", b"feedback-id")
ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs for ``domain`` under ``selector``."""

    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private_key: bytes  # PEM (PKCS#8), as ``new_key`` makes it

    def dkimpy_key(self) -> bytes:
        """The key as dkimpy takes it: PEM for RSA, the base64 raw 32-byte seed for ed25519."""
        if self.algorithm == "rsa":
            return self.private_key
        seed = _ED25519_SEEDS.get(self.private_key)
        if seed is None:
            key = serialization.load_pem_private_key(self.private_key, password=None)
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
            if len(_ED25519_SEEDS) > 1000:
                _ED25519_SEEDS.clear()
            seed = _ED25519_SEEDS[self.private_key] = base64.b64encode(raw)
        return seed


# PEM -> dkimpy's form, kept per worker process: loading a PEM costs more than signing with ed25519.
_ED25519_SEEDS: dict[bytes, bytes] = {}


def new_key(algorithm: str) -> bytes:
    """A new private key in PEM: RSA-2048 or ed25519."""
    if algorithm == "rsa":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM key algorithm {algorithm!r}")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def dns_record(algorithm: str, private_key: bytes) -> str:
    """The TXT record that publishes the public half: ``v=DKIM1; k=...; p=...``."""
    key = serialization.load_pem_private_key(private_key, password=None)
    if algorithm == "rsa":
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode("ascii")


def signed_headers(names: Sequence[bytes]) -> list[bytes]:
    """The h= list for a header with fields ``names``: those of SIGNED_HEADERS it has, each as often
    as it has it, and From once more."""
    present = [name.lower() for name in names]
    wanted = []
    for name in dict.fromkeys(SIGNED_HEADERS):
        count = present.count(name)
        wanted += [name] * (count + 1 if name == b"from" else count)
    return wanted


def signature(content: bytes, key: SigningKey) -> bytes:
    """The DKIM-Signature field (with its CRLF) to put in front of ``content``."""
    return _signatures(_parsed(content), [key])[0]


def sign(content: bytes, keys: Sequence[SigningKey]) -> bytes:
    """``content`` with a signature by each key in front (RSA and ed25519: dual-signed, RFC 8463)."""
    fields = _signatures(_parsed(content), keys)
    return b"".join(fields) + content


def sign_each(content: bytes, keys: Sequence[SigningKey]) -> tuple[bytes, list[str]]:
    """``content`` signed by each key that can sign it, and why the others could not.

    A key that fails (a broken key) leaves the others' signatures; a message dkimpy cannot parse
    raises (no key can sign it).
    """
    parsed = _parsed(content)
    fields, failed = [], []
    for key in keys:
        try:
            fields += _signatures(parsed, [key])
        except Exception as exc:
            failed.append(f"{key.algorithm} key {key.selector}._domainkey.{key.domain}: {exc!r}")
    return b"".join(fields) + content, failed


def _parsed(content: bytes) -> dkim.DKIM:
    # One parse of the message for every key (dkimpy's module-level sign parses it each time).
    parsed = dkim.DKIM(None, linesep=b"\r\n")
    parsed.headers, parsed.body = rfc822_parse(content)
    return parsed


def rfc822_parse(content: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's ``rfc822_parse``: (header fields, body with CRLF line ends); without splitting the body
    into lines when it has CRLF line ends already, as the last step's input has (that split was a
    third of the signing time of a 50 KB message)."""
    if content.count(b"\n") != content.count(b"\r\n") or content.startswith(b"\r\n"):
        return dkim.rfc822_parse(content)  # bare LFs, or no header: dkimpy's own way
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return dkim.rfc822_parse(content)
    headers, _ = dkim.rfc822_parse(content[:end + 2])
    return headers, content[end + 4:]


def _signatures(parsed: dkim.DKIM, keys: Sequence[SigningKey]) -> list[bytes]:
    headers = signed_headers([name for name, _ in parsed.headers])
    return [parsed.sign(key.selector.encode("ascii"), key.domain.encode("idna"), key.dkimpy_key(),
                        signature_algorithm=ALGORITHMS[key.algorithm], canonicalize=CANONICALIZE,
                        include_headers=headers)
            for key in keys]


# -- dkimpy's RSA step, done by OpenSSL ------------------------------------------------------------

_RSA_KEYS: dict[int, rsa.RSAPrivateKey] = {}
# We sign with rsa-sha256 only; dkimpy's sign also knows rsa-sha1, which verifiers still take.
_HASHES = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # noqa: S303


def _openssl_rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign``, with the key it parsed, by OpenSSL."""
    key = _RSA_KEYS.get(private_key["modulus"])
    if key is None:
        if len(_RSA_KEYS) > 1000:
            _RSA_KEYS.clear()
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
        key = rsa.RSAPrivateNumbers(
            p=private_key["prime1"], q=private_key["prime2"], d=private_key["privateExponent"],
            dmp1=private_key["exponent1"], dmq1=private_key["exponent2"], iqmp=private_key["coefficient"],
            public_numbers=public).private_key()
        _RSA_KEYS[private_key["modulus"]] = key
    algorithm = _HASHES[digest.name]
    return key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))


dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign

# dkimpy parses the PEM (in Python) for every signature; the parsed key is the same each time.
_PARSED_PEMS: dict[bytes, dict[str, int]] = {}
DKIMPY_PARSE_PEM = dkim.parse_pem_private_key


def _parse_pem_once(pem: bytes) -> dict[str, int]:
    parsed = _PARSED_PEMS.get(pem)
    if parsed is None:
        if len(_PARSED_PEMS) > 1000:
            _PARSED_PEMS.clear()
        parsed = _PARSED_PEMS[pem] = DKIMPY_PARSE_PEM(pem)
    return parsed


dkim.parse_pem_private_key = _parse_pem_once


# -- dkimpy's relaxed body canonicalisation, the same bytes, faster ----------------------------------
#
# dkimpy replaces every run of white space, single spaces too, with regular expressions: 2.6 ms
# for a 50 KB body, most of the signing time, and done again for the second key. The same result
# with bytes.replace (C speed, no match per space): tabs become spaces, runs of spaces are halved
# until none is left, then the one space left before a line end goes. The result is kept for the
# next key over the same body. tests/test_dkim.py compares it with dkimpy's.

DKIMPY_RELAXED_BODY = canonicalization.Relaxed.canonicalize_body
# The body dkimpy gave last and its canonical form: one tuple, swapped whole (steps may run in threads).
_last_body: tuple[bytes, bytes] = (b"", b"")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 as dkimpy's ``Relaxed.canonicalize_body`` does it (on its CRLF body)."""
    global _last_body
    last = _last_body
    if body is last[0]:  # the same bytes object: the next key of one message
        return last[1]
    canonical = body.replace(b"\t", b" ")
    while b"  " in canonical:  # each pass halves every run: log2 of the longest run passes
        canonical = canonical.replace(b"  ", b" ")
    canonical = canonical.replace(b" \r\n", b"\r\n")  # white space at a line end (one space by now)
    canonical = canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(canonical))
    _last_body = (body, canonical)
    return canonical


canonicalization.Relaxed.canonicalize_body = staticmethod(relaxed_body)
