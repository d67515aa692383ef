"""Hits on tracking links, recorded as click and open events in batches, off the request path.

The redirector and the pixel answer from the signed token alone and hand the
hit here (``HitLog.add``: an append). Every ``INTERVAL`` the hits at least
``HOLD`` seconds old are written in one transaction: the recipient's account,
address, tags and delivery time are read from storage here (once per
recipient, then cached), each hit is scored by the bot rules (events/bots.py)
beside the recipient's other hits around it (held that long, a burst is seen
whole), and becomes a ``click`` or ``open`` event with SMTPeter's data fields
plus ``bot`` and ``bot_reason``. A recipient id that does not exist (any
more) records nothing; events belong to the recipient's account.

Opens are loads of images: the images of one message that one client loads
together are one open (``OPEN_SECONDS``).
"""

from __future__ import annotations

import time as time_module
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from smtpeter.events.bots import HONEYPOT_SECONDS, BotRules, Seen
from smtpeter.events.metrics import Metrics
from smtpeter.events.model import CLICK, DELIVERY, OPEN
from smtpeter.storage import NotFound, StorageError
from smtpeter.storage.models import NewEvent

log = Logger()

HOLD = 1.0  # seconds a hit waits before it is scored and written (bots.BURST_SECONDS)
INTERVAL = 0.5
OPEN_SECONDS = 10.0
MAX_PENDING = 200_000  # hits waiting at most; past it new ones are dropped (and counted)
MAX_BATCH = 5_000  # hits per transaction
_RECIPIENTS = 20_000  # recipients whose account, tags and delivery time are cached
_UNDELIVERED_SECONDS = 30.0  # a recipient not yet known as delivered is read again after this
_PRIVATE_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})
_MAX_HEADERS = 8192  # characters of request headers kept per hit


@dataclass(frozen=True)
class Hit:
    """One request for a tracking link, as it came."""

    time: float
    kind: str  # CLICK or OPEN
    recipient_id: str
    position: int  # of the link in its message
    method: str  # GET or HEAD
    url: str  # our link, as it was requested
    destination: str  # a click's target; an open's image URL ("" for the pixel)
    ip: str  # the client's address (a local proxy's client: see clicks.client_address)
    head: bytes  # the request's header lines as received (CRLF separated)
    secure: bool  # came over TLS (or public_url is https)


@dataclass(frozen=True)
class _Recipient:
    account_id: str
    address: str
    tags: list[str]
    delivered: float | None
    read_at: float


class HitLog:
    def __init__(self, storage: Any, metrics: Metrics, clock: Any, rules: BotRules) -> None:
        self.storage = storage
        self.metrics = metrics
        self.clock = clock
        self.rules = rules
        self._pending: deque[Hit] = deque()
        self._recent: dict[str, deque[Seen]] = {}  # recipient id -> hits written, for the rules
        self._recipients: OrderedDict[str, _Recipient | None] = OrderedDict()
        self._opens: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._timer: Any = None
        self._writing: defer.Deferred | None = None
        self.dropped = 0
        self.running = False

    # -- in -------------------------------------------------------------------------------

    def add(self, hit: Hit) -> None:
        """Take a hit (on the request path: an append)."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append(hit)
        if self._timer is None and self.running:
            self._timer = self.clock.callLater(INTERVAL, self._tick)

    def start(self) -> None:
        self.running = True
        if self._pending and self._timer is None:
            self._timer = self.clock.callLater(INTERVAL, self._tick)

    async def stop(self) -> None:
        """Write every hit taken, held or not."""
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._writing is not None:
            await self._writing
        try:
            await self.flush(everything=True)
        except Exception:
            log.failure("writing the last click and open events failed")

    def _tick(self) -> None:
        self._timer = None
        if self._writing is None:
            self._writing = defer.Deferred.fromCoroutine(self.flush())
            self._writing.addErrback(lambda f: log.failure("writing click and open events failed", f))
            self._writing.addBoth(self._written)
        elif self.running:
            self._timer = self.clock.callLater(INTERVAL, self._tick)

    def _written(self, _: Any) -> None:
        self._writing = None
        if self._pending and self.running and self._timer is None:
            self._timer = self.clock.callLater(INTERVAL, self._tick)

    # -- out ------------------------------------------------------------------------------

    async def flush(self, everything: bool = False) -> int:
        """Write the hits old enough (all of them with ``everything``); returns how many events."""
        written = 0
        while self._pending:
            limit = self.clock.seconds() - (0 if everything else HOLD)
            batch: list[Hit] = []
            while self._pending and self._pending[0].time <= limit and len(batch) < MAX_BATCH:
                batch.append(self._pending.popleft())
            if not batch:
                break
            try:
                written += await self._write(batch)
            except StorageError as exc:
                log.warn("click and open events wait for storage: {error}", error=exc)
                self._pending.extendleft(reversed(batch))
                break
        return written

    async def _write(self, batch: Sequence[Hit]) -> int:
        recipients = {hit.recipient_id: await self._recipient(hit.recipient_id)
                      for hit in batch if hit.recipient_id}
        context: dict[str, list[Seen]] = {}
        for hit in (*batch, *self._pending):  # what is still held counts as context too
            context.setdefault(hit.recipient_id, []).append(_seen(hit))
        events, counted = [], []
        for hit in batch:
            recipient = recipients.get(hit.recipient_id)
            if recipient is None:
                continue  # not ours (any more): nothing is recorded
            seen = _seen(hit)
            others = [o for o in (*self._recent.get(hit.recipient_id, ()), *context[hit.recipient_id])
                      if o is not seen and o != seen]
            reason = self.rules.reason(seen, recipient.delivered, others)
            if hit.kind == OPEN and self._repeated_open(hit, seen.user_agent):
                continue
            events.append(NewEvent(recipient.account_id, hit.recipient_id, recipient.address, hit.kind,
                                   _data(hit, recipient, reason), time=hit.time))
            counted.append((hit.kind, bool(reason)))
        await self.storage.record_events(events)
        for hit in batch:
            self._remember(hit)
        for kind, bot in counted:
            noun = "clicks" if kind == CLICK else "opens"
            self.metrics.count(f"smtpeter_bot_{noun}_total" if bot else f"smtpeter_{noun}_total")
        return len(events)

    def _repeated_open(self, hit: Hit, user_agent: str) -> bool:
        key = (hit.recipient_id, hit.ip, user_agent)
        last = self._opens.get(key)
        self._opens[key] = hit.time
        self._opens.move_to_end(key)
        while len(self._opens) > _RECIPIENTS:
            self._opens.popitem(last=False)
        return last is not None and 0 <= hit.time - last < OPEN_SECONDS

    def _remember(self, hit: Hit) -> None:
        recent = self._recent.setdefault(hit.recipient_id, deque())
        recent.append(_seen(hit))
        while recent and recent[0].time < hit.time - HONEYPOT_SECONDS:
            recent.popleft()
        if len(self._recent) > _RECIPIENTS:
            horizon = hit.time - HONEYPOT_SECONDS
            self._recent = {rid: seen for rid, seen in self._recent.items()
                            if seen and seen[-1].time >= horizon}

    async def _recipient(self, recipient_id: str) -> _Recipient | None:
        """Account, address, tags and delivery time of a recipient; None if there is none."""
        now = time_module.monotonic()
        if recipient_id in self._recipients:
            known = self._recipients[recipient_id]
            if known is None or known.delivered is not None or now - known.read_at < _UNDELIVERED_SECONDS:
                self._recipients.move_to_end(recipient_id)
                return known
        try:
            entry = await self.storage.recipient(recipient_id)
        except NotFound:
            found = None
        else:
            events = await self.storage.events(recipient_id, account_id=entry.account_id)
            tags: list[str] = []
            delivered = None
            for event in events:
                if event.type == DELIVERY and delivered is None:
                    delivered = event.time
                if not tags and isinstance(event.data.get("tags"), list):
                    tags = event.data["tags"]
            found = _Recipient(entry.account_id, entry.address, tags, delivered, now)
        self._recipients[recipient_id] = found
        self._recipients.move_to_end(recipient_id)
        while len(self._recipients) > _RECIPIENTS:
            self._recipients.popitem(last=False)
        return found


def _seen(hit: Hit) -> Seen:
    return Seen(hit.time, hit.kind, hit.position, hit.method, hit.ip, header_value(hit.head, b"user-agent"))


def header_value(head: bytes, name: bytes) -> str:
    """The value of the first header line called ``name`` (lower case) in a header block."""
    for line in head.split(b"\r\n"):
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


def headers_text(head: bytes) -> str:
    """The request headers as SMTPeter logs them (newline separated), without credentials."""
    lines = []
    for line in head.split(b"\r\n"):
        field, colon, _ = line.partition(b":")
        if colon and field.strip().lower().decode("latin-1") not in _PRIVATE_HEADERS:
            lines.append(line.decode("latin-1"))
    return "\n".join(lines)[:_MAX_HEADERS]


def _data(hit: Hit, recipient: _Recipient, reason: str) -> dict[str, Any]:
    """The event's data: SMTPeter's columns (clicks: url, destination; opens: protocol), what
    its webhooks send (useragent, referer), and the hit itself for scoring it again."""
    data: dict[str, Any] = {
        "recipient": recipient.address, "tags": recipient.tags, "ip": hit.ip,
        "headers": headers_text(hit.head), "useragent": header_value(hit.head, b"user-agent"),
        "referer": header_value(hit.head, b"referer"), "url": hit.url, "position": hit.position,
        "method": hit.method, "bot": bool(reason), "bot_reason": reason,
    }
    if hit.kind == CLICK:
        data["destination"] = hit.destination
    else:
        data["protocol"] = "https" if hit.secure else "http"
        if hit.destination:
            data["image"] = hit.destination
    return data
