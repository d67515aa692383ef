"""Secrets at rest: DKIM private keys are sealed (AES-256-GCM) before storage sees them.

A sealed value is a version byte, a random 96-bit nonce and the ciphertext with its 16-byte tag.
The caller's ``context`` (for a DKIM key ``b"dkim:" + domain + b"/" + selector``) is bound in as
associated data with the version byte: a sealed key copied into another row, or another domain's
row, does not open. A wrong key, a changed byte or a wrong context all fail the same way, loudly.

The key comes from ``[domains] encryption_key``, or is made once and kept in the data directory
(mode 0600), as the tracking keys are (``smtpeter.links.signing_keys``). Losing it loses every
stored private key: back it up with the database, but not in the same place.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smtpeter.config import Config, ConfigError

_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
KEY_BYTES = 32
KEY_FILE = "encryption.key"


class SealingError(Exception):
    """A sealed value that does not open: another key, tampered with, or sealed for another context."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the sealing key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        # Random nonces: 2**32 seals under one key keep the collision chance negligible, and a
        # key seals a few keys per domain per month.
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, _VERSION + context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES or sealed[:1] != _VERSION:
            raise SealingError("not a sealed value of a version this program knows")
        nonce, ciphertext = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, _VERSION + context)
        except InvalidTag:
            raise SealingError(
                "the sealed value does not open: encrypted with another key ([domains] encryption_key "
                "or the key file changed), altered, or moved from another row") from None


def encryption_key(config: Config) -> bytes:
    """The configured key; without one, the key file in the data directory, made on first start."""
    if config.domains.encryption_key:
        return base64.b64decode(config.domains.encryption_key, validate=True)  # checked by the config
    path = config.data_path / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} does not hold the base64 of a {KEY_BYTES}-byte key")
    return key


def _create_key_file(path: Path) -> None:
    """Write the new key under a temporary name and link it into place: a process starting at the
    same moment either wins with its own complete file or reads ours, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii") + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
