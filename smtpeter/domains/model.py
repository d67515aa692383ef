"""Sender domains as the rest of the program sees them: settings, DKIM keys, DNS status.

A sender domain belongs to one account. Approved (its ownership TXT record
seen, or an operator said so), it may appear in the account's envelopes and
From addresses. Its settings say where bounces go (the VERP return path's
domain), which host serves its tracking links, and the DMARC policy we
publish for it. Its DKIM keys sign its mail; its DNS status (the last live
check) decides whether its keys and bounce domain are used (README: "Sender
domains").
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

POLICIES = ("none", "quarantine", "reject")
ALGORITHMS = ("rsa", "ed25519")
# Managed keys rotate through three selectors per algorithm: the signing one, the next (published
# before it signs) and the retired one (published for mail still in flight).
SELECTORS = {"rsa": ("zero", "one", "two"), "ed25519": ("zero-ed", "one-ed", "two-ed")}
# A key's state: published before it signs, signing, published after it signed.
NEXT, ACTIVE, RETIRED = "next", "active", "retired"
# Items of a DNS status check, in SMTPeter's names.
STATUS_ITEMS = ("validation", "spf", "dkim", "dmarc", "mx", "tracking")
OK, ERROR = "ok", "error"


@dataclass(frozen=True)
class DmarcPolicy:
    """What we publish at _dmarc.DOMAIN: the policy and a percentage ramped from 0 on ``start``
    to ``percentage`` on ``end`` (SMTPeter's automatic ramp, updated daily)."""

    policy: str = "none"
    percentage: int = 100
    start: datetime.date | None = None
    end: datetime.date | None = None
    addresses: tuple[str, ...] = ()  # extra rua report addresses (ours is always there)


@dataclass(frozen=True)
class DomainSettings:
    domain: str
    account_id: str
    approved: bool
    validation_token: str
    created: float
    bounces: str  # the bounce (VERP) domain, default bounces.DOMAIN
    tracking: str  # the tracking host, default clicks.DOMAIN
    https: bool  # tracking links on the tracking host use https
    dmarc: DmarcPolicy = field(default_factory=DmarcPolicy)
    spf_mechanisms: tuple[str, ...] = ()  # extra mechanisms in the hosted SPF record ("ip4:1.2.3.0/24")


@dataclass(frozen=True)
class DkimKey:
    """A DKIM key of a sender domain. ``private_key`` is PEM, decrypted; storage keeps it encrypted
    and nothing outside the signing step ever shows it."""

    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private_key: bytes
    public_record: str  # the TXT value to publish: "v=DKIM1; k=rsa; p=..."
    managed: bool  # made and rotated by us; False: installed by the customer (POST /v1/dkimkey)
    state: str  # NEXT, ACTIVE or RETIRED (customer keys: ACTIVE)
    always: bool  # sign all of the account's mail with it, not only mail from DOMAIN
    created: float
    start: float | None = None  # customer keys: valid from (None: always)
    end: float | None = None  # customer keys: valid until; managed: when it stops being published
    activated: float | None = None  # when it started signing


@dataclass(frozen=True)
class DomainStatus:
    """The last live DNS check of a domain: per item OK or ERROR, a remark per item, when."""

    domain: str
    items: dict[str, str]  # STATUS_ITEMS -> OK or ERROR
    remarks: dict[str, str]  # STATUS_ITEMS -> what was found (for people)
    published_selectors: tuple[str, ...]  # selectors whose key is in DNS exactly as ours
    checked: float

    def ok(self, item: str) -> bool:
        return self.items.get(item) == OK
