"""Plain records passed in and out of storage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    created: float


@dataclass(frozen=True)
class SMTPLogin:
    id: str
    account_id: str
    username: str
    password_hash: str
    options: dict[str, object]
    disabled: bool


@dataclass(frozen=True)
class SenderDomain:
    domain: str
    account_id: str
    approved: bool
    validation_token: str
    created: float


@dataclass
class NewRecipient:
    address: str
    # DSN parameters (RFC 3461) as given on RCPT: ORCPT as "type;address", NOTIFY as a list.
    orcpt: str | None = None
    notify: str | None = None


@dataclass
class NewMessage:
    """A message accepted for delivery, not yet stored."""

    account_id: str
    source: str  # "smtp" or "api"
    envelope: str | None  # MAIL FROM; "" is the null sender, None means none given
    mime: bytes
    recipients: list[NewRecipient]
    options: dict[str, object] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    body: str | None = None  # BODY= parameter: 7BIT or 8BITMIME
    smtputf8: bool = False
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    expires: float | None = None  # absolute time after which delivery stops


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient of one stored message; ``id`` is the public message id."""

    id: str
    message_id: str
    account_id: str
    address: str
    state: str
    attempts: int
    next_attempt: float
    created: float
    envelope: str | None
    size: int
    last_code: int | None
    last_status: str | None
    last_description: str | None
    last_state: str | None
    orcpt: str | None = None  # DSN parameters given with RCPT TO
    notify: str | None = None


@dataclass(frozen=True)
class Event:
    id: int
    account_id: str
    message_id: str | None
    recipient: str | None
    type: str
    time: float
    data: dict[str, object]


@dataclass(frozen=True)
class Lease:
    """A recipient this node has claimed for a delivery attempt."""

    id: str
    message_id: str
    account_id: str
    address: str
    domain: str
    orcpt: str | None
    notify: str | None
    attempts: int
    delay_notified: bool
    created: float


@dataclass(frozen=True)
class StoredMessage:
    id: str
    account_id: str
    source: str
    envelope: str | None
    mime: bytes
    options: dict[str, object]
    tags: list[str]
    body: str | None
    smtputf8: bool
    dsn_ret: str | None
    dsn_envid: str | None
    created: float
    expires: float


@dataclass
class Outcome:
    """What became of one leased recipient after an attempt, and the event that says so."""

    recipient_id: str
    account_id: str
    address: str
    state: str  # queued (to retry), delivered, failed or expired
    attempts: int
    next_attempt: float
    event_type: str
    event: dict[str, object]
    code: int | None = None
    status: str | None = None
    description: str | None = None
    smtp_state: str | None = None
    delay_notified: bool = False
