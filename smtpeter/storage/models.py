"""Plain records passed in and out of storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.storage import event_json

# Delivery states of a recipient.
QUEUED, DELIVERED, FAILED, EXPIRED = "queued", "delivered", "failed", "expired"


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
    options: MessageOptions  # the defaults of mail sent with this login
    disabled: bool


@dataclass(frozen=True)
class SenderDomain:
    domain: str
    account_id: str
    approved: bool
    validation_token: str
    created: float


@dataclass(frozen=True)
class NewEvent:
    """An event to record about one message id (one recipient); storage stamps its time unless
    it happened earlier (a click is written a moment after it was made)."""

    account_id: str
    message_id: str
    address: str
    type: str
    data: dict[str, object]
    time: float | None = None


@dataclass
class NewMessage:
    """A message accepted for delivery, not yet stored: its envelope holds its recipients.

    ``recipient_ids`` (the public message id of each envelope recipient, in
    order) and ``events`` (recorded in the same transaction) are made before
    storage, by ``smtpeter.events.model.accept``.
    """

    account_id: str
    source: str  # "smtp", "api" or "dsn"
    envelope: Envelope
    mime: bytes
    options: MessageOptions = field(default_factory=MessageOptions)
    tags: list[str] = field(default_factory=list)
    expires: float | None = None  # absolute time after which delivery stops
    recipient_ids: list[str] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)


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

    @property
    def recipient(self) -> Recipient:
        return Recipient(self.address, self.notify, self.orcpt)


class Position(NamedTuple):
    """Where an event stands in the feed; the feed is read in this order.

    ``xid`` is the id of the transaction that wrote the event on PostgreSQL
    (0 on SQLite, where one writer commits events in ``id`` order).
    """

    xid: int
    id: int


FEED_START = Position(0, 0)


class Event:
    """A recorded event. ``data`` may be given as its JSON text (as read back from storage): it is
    decoded when first asked for. A feed consumer skips most events by type and account, and a
    bounce's data carries the returned message: decoding every one was most of a consumer's work."""

    __slots__ = ("_data", "_json", "account_id", "id", "message_id", "position", "recipient", "time", "type")

    def __init__(self, id: int, account_id: str, message_id: str | None, recipient: str | None,
                 type: str, time: float, data: dict[str, object] | str, position: Position) -> None:
        self.id = id
        self.account_id = account_id
        self.message_id = message_id
        self.recipient = recipient
        self.type = type
        self.time = time
        self.position = position
        self._data, self._json = (None, data) if isinstance(data, str) else (data, None)

    @property
    def data(self) -> dict[str, object]:
        if self._data is None:
            self._data = event_json.decode(self._json)
        return self._data

    def _fields(self) -> tuple:
        return (self.id, self.account_id, self.message_id, self.recipient, self.type, self.time, self.data,
                self.position)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and its data is a dict

    def __repr__(self) -> str:
        return ("Event(id={!r}, account_id={!r}, message_id={!r}, recipient={!r}, type={!r}, time={!r}, "
                "data={!r}, position={!r})".format(*self._fields()))


@dataclass(frozen=True)
class Lease:
    """A recipient this node has claimed for a delivery attempt."""

    id: str
    message_id: str
    account_id: str
    recipient: Recipient
    domain: str
    attempts: int
    delay_notified: bool
    created: float

    @property
    def address(self) -> str:
        return self.recipient.address


@dataclass(frozen=True)
class StoredMessage:
    """A stored message; its envelope holds no recipients (each is a row of its own)."""

    id: str
    account_id: str
    source: str
    envelope: Envelope
    mime: bytes
    options: MessageOptions
    tags: list[str]
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
