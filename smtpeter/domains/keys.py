"""DKIM keys of sender domains: made or installed, sealed into storage, opened to sign.

Private keys exist in the clear only here and in the signing step: ``KeyStore`` seals a key
before storage sees it and opens it when it is read back (``smtpeter.domains.sealing``; the
context ``dkim:DOMAIN/SELECTOR`` ties a sealed key to its row). ``public_view`` is what any API,
CLI output or log may show of a key.

Managed keys live under the three selectors of their algorithm (``model.SELECTORS``) and rotate
through them (``smtpeter.domains.rotation``); keys a customer installs take any other selector.
"""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet.threads import deferToThread

from smtpeter.domains.model import ACTIVE, ALGORITHMS, NEXT, RETIRED, SELECTORS, DkimKey
from smtpeter.domains.sealing import Sealer
from smtpeter.outbound.dkim import SigningKey, dns_record, new_key
from smtpeter.storage.domains import StoredDkimKey

# RFC 8301 §3.2: signers use at least 1024 bits (2048 recommended); verifiers must handle 1024 to
# 4096, so a larger key may fail at some of them.
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 4096
MANAGED_SELECTORS = frozenset(selector for selectors in SELECTORS.values() for selector in selectors)
# RFC 6376 §3.1: a selector is one or more dot-separated labels (letters, digits, inner hyphens).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")


class DkimKeyError(ValueError):
    """A key that cannot be made or installed as asked (the API answers 400 with its text)."""


def context(domain: str, selector: str) -> bytes:
    """What a key is sealed for: a sealed key opens only in the row of this domain and selector."""
    return b"dkim:" + domain.encode("utf-8") + b"/" + selector.encode("utf-8")


def check_selector(selector: str) -> str:
    """``selector`` in lower case (DNS names are compared without case); DkimKeyError if it is none."""
    name = selector.lower()
    if len(name) > 200 or not _SELECTOR.match(name):
        raise DkimKeyError(
            f"{selector!r} is not a DKIM selector (letters, digits, hyphens; labels split by dots)")
    return name


def load_private_key(pem: bytes | str, algorithm: str | None = None) -> tuple[str, bytes]:
    """An installed private key as (its algorithm, PKCS#8 PEM), as ``new_key`` makes them;
    DkimKeyError saying what is wrong with it. ``algorithm``, if given, must be the key's."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key: Any = serialization.load_pem_private_key(data.strip() + b"\n", password=None)
    except TypeError:
        raise DkimKeyError("the private key is encrypted; install it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError("the private key is not a PEM private key (-----BEGIN PRIVATE KEY----- or "
                           "-----BEGIN RSA PRIVATE KEY-----)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        found = "rsa"
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise DkimKeyError(f"the RSA key has {key.key_size} bits; DKIM verifiers take {MIN_RSA_BITS} "
                               f"to {MAX_RSA_BITS} (2048 recommended)")
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        found = "ed25519"
    else:
        raise DkimKeyError("the private key is neither RSA nor ed25519, the two DKIM signs with")
    if algorithm is not None and algorithm != found:
        raise DkimKeyError(f"the private key is {found}, not {algorithm}")
    return found, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())


def public_key_pem(key: DkimKey) -> str:
    """The public key in PEM, read from the key's DNS record (so a key need not be opened for it)."""
    tags = dict(tag.strip().partition("=")[::2] for tag in key.public_record.split(";") if "=" in tag)
    data = base64.b64decode("".join(tags["p"].split()))
    public: Any = (serialization.load_der_public_key(data) if key.algorithm == "rsa"
                   else ed25519.Ed25519PublicKey.from_public_bytes(data))
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii").strip()


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def public_view(key: DkimKey) -> dict[str, Any]:
    """Everything about ``key`` that may be shown (SMTPeter's /v1/dkimkeys fields; UTC times):
    never its private key."""
    return {
        "domain": key.domain, "selector": key.selector, "hostname": f"{key.selector}._domainkey.{key.domain}",
        # SMTPeter names RSA keys by their hash; ed25519 by its signature algorithm (RFC 8463).
        "algorithm": "sha256" if key.algorithm == "rsa" else "ed25519-sha256", "type": key.algorithm,
        "managed": key.managed, "state": key.state, "always": key.always,
        "created": _time(key.created), "start": _time(key.start), "end": _time(key.end),
        "activated": _time(key.activated), "public": public_key_pem(key), "record": key.public_record,
    }


class KeyStore:
    """DKIM keys in the clear for the code that needs them, sealed in ``storage``."""

    def __init__(self, storage: Any, sealer: Sealer) -> None:
        self.storage = storage
        self.sealer = sealer

    async def create(self, account_id: str, domain: str, algorithm: str, selector: str, state: str,
                     managed: bool = True, always: bool = False, private_key: bytes | str | None = None,
                     start: float | None = None, end: float | None = None) -> DkimKey:
        """Make a key (or take ``private_key``, PEM) for the account's ``domain`` and keep it.

        DkimKeyError for a key or selector that cannot be used; storage's NotFound if the domain is
        not the account's, Conflict if the selector is taken.
        """
        if algorithm not in ALGORITHMS:
            raise DkimKeyError(f"unknown DKIM key algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
        if state not in (NEXT, ACTIVE, RETIRED):
            raise DkimKeyError(f"unknown DKIM key state {state!r}")
        selector = check_selector(selector)
        if managed and selector not in SELECTORS[algorithm]:
            raise DkimKeyError(
                f"managed {algorithm} keys use the selectors {', '.join(SELECTORS[algorithm])}")
        if not managed and selector in MANAGED_SELECTORS:
            raise DkimKeyError(f"the selector {selector!r} is one of our rotating ones "
                               f"({', '.join(sorted(MANAGED_SELECTORS))}); choose another")
        if private_key is None:
            # RSA-2048 takes tens of milliseconds of CPU: not on the reactor.
            pem = await deferToThread(new_key, algorithm)
        else:
            _, pem = load_private_key(private_key, algorithm)
        domain = domain.lower()
        now = self.storage.now()
        key = DkimKey(domain=domain, selector=selector, algorithm=algorithm, private_key=pem,
                      public_record=dns_record(algorithm, pem), managed=managed, state=state, always=always,
                      created=now, start=start, end=end, activated=now if state == ACTIVE else None)
        await self.storage.add_dkim_key(account_id, replace(key, private_key=b""),
                                        self.sealer.seal(pem, context(domain, selector)))
        return key

    async def install(self, account_id: str, domain: str, selector: str,
                      private_key: bytes | str | None = None, always: bool = False,
                      start: float | None = None, end: float | None = None) -> DkimKey:
        """A customer's key (POST /v1/dkimkey/DOMAIN/SELECTOR): theirs, or made by us (RSA) when
        they give none; it signs while published and inside ``start``..``end``."""
        algorithm = "rsa" if private_key is None else load_private_key(private_key)[0]
        return await self.create(account_id, domain, algorithm, selector, ACTIVE, managed=False,
                                 always=always, private_key=private_key, start=start, end=end)

    def _open(self, stored: StoredDkimKey) -> DkimKey:
        key = stored.key
        return replace(key, private_key=self.sealer.open(stored.sealed_private_key,
                                                         context(key.domain, key.selector)))

    async def keys(self, domain: str | None = None, account_id: str | None = None,
                   selector: str | None = None) -> list[DkimKey]:
        """The keys matching every filter given, private keys opened (SealingError if one does not
        open: the encryption key changed, or the row was tampered with)."""
        rows = await self.storage.dkim_key_rows(domain, account_id=account_id, selector=selector)
        return [self._open(row) for row in rows]

    async def signing_keys(self, domain: str, account_id: str, published: Collection[str],
                           now: float) -> list[SigningKey]:
        """What signs the account's mail from ``domain`` now: per algorithm one key whose selector
        the last DNS check saw ``published`` exactly as ours, a customer's key inside its validity
        before our ACTIVE managed one; then, per other approved domain of the account, the same for
        its customer keys marked ``always`` (checked against that domain's own last status)."""
        domain = domain.lower()
        rows = {(row.key.domain, row.key.selector): row
                for row in await self.storage.dkim_key_rows(account_id=account_id)}
        chosen = _pick([row.key for row in rows.values() if row.key.domain == domain], published, now)
        others: dict[str, list[DkimKey]] = {}
        for row in rows.values():
            if row.key.always and not row.key.managed and row.key.domain != domain:
                others.setdefault(row.key.domain, []).append(row.key)
        for other, keys in sorted(others.items()):
            settings = await self.storage.sender_domain(other)
            status = await self.storage.domain_status(other)
            if settings is None or not settings.approved or status is None:
                continue
            chosen += _pick(keys, status.published_selectors, now)
        signing = []
        for key in chosen:
            opened = self._open(rows[key.domain, key.selector])
            signing.append(SigningKey(opened.domain, opened.selector, opened.algorithm, opened.private_key))
        return signing

    async def setup_new_domain(self, account_id: str, domain: str,
                               algorithms: Sequence[str]) -> list[DkimKey]:
        """The first managed key of each algorithm the domain has none of yet, under the first
        selector, NEXT: it signs once a DNS check sees it published (rotation.plan)."""
        have = {row.key.algorithm for row in await self.storage.dkim_key_rows(domain, account_id=account_id)
                if row.key.managed}
        return [await self.create(account_id, domain, algorithm, SELECTORS[algorithm][0], NEXT)
                for algorithm in algorithms if algorithm not in have]


def _pick(keys: Sequence[DkimKey], published: Collection[str], now: float) -> list[DkimKey]:
    """Per algorithm (in ALGORITHMS' order) the key that signs: the newest customer key inside its
    validity, else the most recently activated ACTIVE managed key; published ones only."""
    picked = []
    for algorithm in ALGORITHMS:
        usable = [k for k in keys if k.algorithm == algorithm and k.selector in published]
        customer = [k for k in usable if not k.managed and (k.start is None or k.start <= now)
                    and (k.end is None or now < k.end)]
        managed = [k for k in usable if k.managed and k.state == ACTIVE]
        if customer:
            picked.append(max(customer, key=lambda k: k.created))
        elif managed:
            picked.append(max(managed, key=lambda k: k.activated or k.created))
    return picked
