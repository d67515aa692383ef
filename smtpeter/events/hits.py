"""Hits on tracking links, recorded as click and open events in batches, off the request path.

The redirector and the pixel answer from the signed token alone and hand the
hit here (``HitLog.add``: an append, and a click is noted in its recipient's
``ClickWindow``). Every ``INTERVAL`` the hits at least ``HOLD`` seconds old
are written in one transaction: the recipient's account, address, tags and
delivery time are read from storage here (once per recipient, then cached),
each hit is scored by the bot rules (events/bots.py) beside the recipient's
other clicks around it (held that long, a burst is seen whole; the window
holds the clicks written before and those still held), and becomes a
``click`` or ``open`` event with SMTPeter's data fields plus ``bot`` and
``bot_reason``. A batch is scored ``SLICE`` hits at a time, the reactor
serving requests in between. A recipient id that does not exist (any more)
records nothing; events belong to the recipient's account.

At most ``MAX_PENDING`` hits wait; past that (storage down or too slow) new
ones are dropped, counted on /metrics (``smtpeter_hits_dropped_total``) and
logged now and then.

Opens are loads of images: the images of one message that one client loads
together are one open (``OPEN_SECONDS``).
"""

from __future__ import annotations

import math
import time as time_module
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted.internet import defer, task
from twisted.logger import Logger

from smtpeter.events.bots import HONEYPOT_SECONDS, BotRules, ClickWindow, Seen
from smtpeter.events.metrics import Metrics
from smtpeter.events.model import CLICK, DELIVERY, OPEN, TYPES
from smtpeter.storage import NotFound, StorageError
from smtpeter.storage.events import event_row

log = Logger()

HOLD = 1.0  # seconds a hit waits before it is scored and written (bots.BURST_SECONDS)
INTERVAL = 0.5
OPEN_SECONDS = 10.0
MAX_PENDING = 200_000  # hits waiting at most; past it new ones are dropped (and counted)
# Hits per transaction. A transaction writes every index page it touched, and clicks land all over
# the message and recipient indexes: measured on SQLite (300,000 events, clicks of 1,000 recipients),
# 10,000 rows in one took 11% less time a row than 5,000 (20,000: 16% less). More would hold the one
# writer longer from the messages being submitted (10,000: a fifth of a second under a click flood).
MAX_BATCH = 10_000
SLICE = 100  # hits scored between two turns of the reactor (a millisecond or so)
DROPPED_LOG_SECONDS = 60.0  # dropped hits are logged at most this often
_RECIPIENTS = 20_000  # recipients whose account, tags and delivery time are cached
_UNDELIVERED_SECONDS = 30.0  # a recipient not yet known as delivered is read again after this
_READS_AT_ONCE = 8  # recipients read from storage at the same time (a batch of new ones)
# The clicks a hit is scored beside are kept this much longer than the rules look, for a clock
# that steps back a little (hits are stamped with the wall clock).
_CLOCK_SLACK = 5.0
# What a recipient's account, tags and delivery time are read from: not its clicks and opens,
# which grow with every hit and say nothing of either.
_RECIPIENT_EVENT_TYPES = tuple(t for t in TYPES if t not in (CLICK, OPEN))
_OpenKey = tuple[str, str, str]  # recipient id, client address, user agent
_PRIVATE_HEADERS = frozenset({b"cookie", b"authorization", b"proxy-authorization"})
_MAX_HEADERS = 8192  # characters of request headers kept per hit
_HEADS_KEPT = 4096  # header blocks remembered as read (then it starts again)


class Hit(NamedTuple):
    """One request for a tracking link, as it came (a NamedTuple: cheap to make on the request path)."""

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


_RawHit = tuple  # a Hit's fields, in order (HitLog._pending)
_TIME, _KIND, _RECIPIENT_ID, _POSITION, _IP = map(
    Hit._fields.index, ("time", "kind", "recipient_id", "position", "ip"))


@dataclass(frozen=True)
class _Recipient:
    account_id: str
    address: str
    tags: list[str]
    delivered: float | None
    read_at: float


class Head(NamedTuple):
    """What an event keeps of a hit's request headers, read in one pass."""

    text: str  # the header lines as SMTPeter logs them (newline separated), without credentials
    user_agent: str
    referer: str


class HitLog:
    def __init__(self, storage: Any, metrics: Metrics, clock: Any, rules: BotRules) -> None:
        self.storage = storage
        self.metrics = metrics
        self.clock = clock
        self.rules = rules
        # The hits taken, oldest first, as plain tuples of Hit's fields: the garbage collector
        # stops tracking those (all strings and numbers), not NamedTuples, and tens of thousands
        # wait at once: tracked, they would each second bring on a full collection (60 ms or so).
        self._pending: deque[_RawHit] = deque()
        # Recipient id -> its clicks held and written lately (the honeypot and burst rules look
        # at them), the recipient that clicked last at the end.
        self._clicks: OrderedDict[str, ClickWindow] = OrderedDict()
        self._recipients: OrderedDict[str, _Recipient | None] = OrderedDict()
        self._opens: OrderedDict[_OpenKey, float] = OrderedDict()  # -> when it last opened
        # Header blocks as events keep them: a browser of one version and language sends the same
        # block for every click (no cookies of ours), so most are read once.
        self._heads: dict[bytes, Head] = {}
        self._timer: Any = None
        self._writing: defer.Deferred | None = None
        self.dropped = 0
        self.storage_failing = False  # the last write failed: hits wait (and past MAX_PENDING, drop)
        self._dropped_logged = 0  # of ``dropped``, how many a log line told of
        self._dropped_logged_at = -math.inf  # monotonic time of that line
        self.running = False

    # -- in -------------------------------------------------------------------------------

    def add(self, hit: Hit) -> None:
        """Take a hit (on the request path: an append)."""
        self.add_raw(tuple(hit))

    def add_raw(self, raw: _RawHit) -> None:
        """``add`` for a hit as a plain tuple of Hit's fields (as redirect workers send them)."""
        if len(self._pending) >= MAX_PENDING:
            self.drop()
            return
        self._pending.append(raw)
        if raw[_KIND] == CLICK:
            recipient_id = raw[_RECIPIENT_ID]
            window = self._clicks.get(recipient_id)
            if window is None:
                window = self._clicks[recipient_id] = ClickWindow()
            else:
                self._clicks.move_to_end(recipient_id)
            window.add(raw[_TIME], raw[_POSITION], raw[_IP])
        if self._timer is None and self.running:
            self._timer = self.clock.callLater(INTERVAL, self._tick)

    @property
    def waiting(self) -> int:
        """Hits taken and not written yet."""
        return len(self._pending)

    def drop(self, count: int = 1) -> None:
        """Count hits not recorded (here, or by a redirect worker that could not send them)."""
        self.dropped += count
        self.metrics.count("smtpeter_hits_dropped_total", count)
        if time_module.monotonic() - self._dropped_logged_at >= DROPPED_LOG_SECONDS:
            self._log_dropped()

    def _log_dropped(self) -> None:
        log.warn("{count} click and open hits not recorded: {pending} are waiting to be written, the most "
                 "kept (is storage slow or down?); {total} dropped since start",
                 count=self.dropped - self._dropped_logged, pending=len(self._pending), total=self.dropped)
        self._dropped_logged = self.dropped
        self._dropped_logged_at = time_module.monotonic()

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
        if self.dropped > self._dropped_logged:
            self._log_dropped()

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
            batch: list[_RawHit] = []
            while self._pending and self._pending[0][_TIME] <= limit and len(batch) < MAX_BATCH:
                batch.append(self._pending.popleft())
            if not batch:
                break
            try:
                written += await self._write(batch)
            except StorageError as exc:
                log.warn("click and open events wait for storage: {error}", error=exc)
                self.storage_failing = True
                self._pending.extendleft(reversed(batch))
                break
            self.storage_failing = False
        return written

    async def _write(self, batch: Sequence[_RawHit]) -> int:
        recipients = await self._recipients_of({raw[_RECIPIENT_ID] for raw in batch})
        self._forget_clicks_before(batch[0][_TIME] - HONEYPOT_SECONDS - _CLOCK_SLACK)
        rows: list[tuple] = []  # storage.events.event_row: the JSON is made here, a slice at a time
        counted: list[tuple[str, bool]] = []
        opens: dict[_OpenKey, float] = {}  # this batch's, kept once it is written
        no_clicks = ClickWindow()
        heads = self._heads
        for start in range(0, len(batch), SLICE):
            if start:
                await task.deferLater(self.clock, 0)  # let the reactor answer requests in between
            for hit in map(Hit._make, batch[start:start + SLICE]):  # each gone by the next
                recipient = recipients.get(hit.recipient_id)
                if recipient is None:
                    continue  # not ours (any more): nothing is recorded
                head = heads.get(hit.head)
                if head is None:
                    if len(heads) >= _HEADS_KEPT:
                        heads.clear()
                    head = heads[hit.head] = read_head(hit.head)
                if hit.kind == OPEN and self._repeated_open(hit, head.user_agent, opens):
                    continue
                clicks = self._clicks.get(hit.recipient_id, no_clicks)
                clicks.forget_before(hit.time - _CLOCK_SLACK)
                seen = Seen(hit.time, hit.kind, hit.position, hit.method, hit.ip, head.user_agent)
                reason = self.rules.reason(seen, recipient.delivered, clicks)
                rows.append(event_row(recipient.account_id, hit.recipient_id, recipient.address, hit.kind,
                                      hit.time, _data(hit, recipient, reason, head)))
                counted.append((hit.kind, bool(reason)))
        # Not flushed to disk at commit: hits wait in memory for a second or more before this anyway,
        # and under a flood of clicks the flushes were 5% of this process's time (perf). A crash of
        # this process loses none written; of the machine (or of PostgreSQL), those that no durable
        # commit flushed since: the feed's consumers save their positions durably every quarter second
        # under load (events/feed.py SERVICE_PACE), which flushes the log written before.
        await self.storage.record_event_rows(rows, durable=False)
        self._remember_opens(opens)
        for (kind, bot), count in Counter(counted).items():
            noun = "clicks" if kind == CLICK else "opens"
            self.metrics.count(f"smtpeter_bot_{noun}_total" if bot else f"smtpeter_{noun}_total", count)
        return len(rows)

    def _forget_clicks_before(self, horizon: float) -> None:
        """Drop the windows of recipients who clicked last before ``horizon`` (none of their
        clicks can be near a hit still to score)."""
        while self._clicks:
            recipient_id, window = next(iter(self._clicks.items()))
            if window.latest >= horizon:
                break
            del self._clicks[recipient_id]

    def _repeated_open(self, hit: Hit, user_agent: str, batch_opens: dict[_OpenKey, float]) -> bool:
        """Whether ``hit`` loads an image of a message the same client opened moments before; notes it in
        ``batch_opens`` (kept only once the batch is written: written again, it is no repeat)."""
        key = (hit.recipient_id, hit.ip, user_agent)
        last = batch_opens.get(key)
        if last is None:
            last = self._opens.get(key)
        batch_opens[key] = hit.time
        return last is not None and 0 <= hit.time - last < OPEN_SECONDS

    def _remember_opens(self, batch_opens: dict[_OpenKey, float]) -> None:
        for key, time in batch_opens.items():
            self._opens[key] = time
            self._opens.move_to_end(key)
        while len(self._opens) > _RECIPIENTS:
            self._opens.popitem(last=False)

    async def _recipients_of(self, recipient_ids: Iterable[str]) -> dict[str, _Recipient | None]:
        """Recipients: from the cache, else read (a few at once)."""
        recipients: dict[str, _Recipient | None] = {}
        unread = []
        now = time_module.monotonic()
        for recipient_id in recipient_ids:
            if not recipient_id:
                continue
            if recipient_id in self._recipients:
                known = self._recipients[recipient_id]
                if known is None or known.delivered is not None or now - known.read_at < _UNDELIVERED_SECONDS:
                    self._recipients.move_to_end(recipient_id)
                    recipients[recipient_id] = known
                    continue
            unread.append(recipient_id)
        for start in range(0, len(unread), _READS_AT_ONCE):
            group = unread[start:start + _READS_AT_ONCE]
            try:
                found = await defer.gatherResults(
                    [defer.Deferred.fromCoroutine(self._read_recipient(rid, now)) for rid in group],
                    consumeErrors=True)
            except defer.FirstError as error:
                error.subFailure.raiseException()  # the StorageError itself: the batch waits
            recipients.update(zip(group, found, strict=True))
        return recipients

    async def _read_recipient(self, recipient_id: str, now: float) -> _Recipient | None:
        """Account, address, tags and delivery time of a recipient from storage (and cached);
        None if there is none."""
        try:
            entry = await self.storage.recipient(recipient_id)
        except NotFound:
            found = None
        else:
            events = await self.storage.events(recipient_id, account_id=entry.account_id,
                                               types=_RECIPIENT_EVENT_TYPES)
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


def read_head(head: bytes) -> Head:
    """A hit's header block (CRLF separated lines) as its event keeps it: the lines without credentials
    (at most _MAX_HEADERS characters), and the first User-Agent and Referer values."""
    kept = []
    user_agent = referer = None
    for line in head.split(b"\r\n"):
        field, colon, value = line.partition(b":")
        if not colon:
            continue
        name = field.strip().lower()
        if name in _PRIVATE_HEADERS:
            continue
        kept.append(line)
        if name == b"user-agent":
            if user_agent is None:
                user_agent = value.strip().decode("latin-1")
        elif name == b"referer" and referer is None:
            referer = value.strip().decode("latin-1")
    return Head(b"\n".join(kept).decode("latin-1")[:_MAX_HEADERS], user_agent or "", referer or "")


def _data(hit: Hit, recipient: _Recipient, reason: str, head: Head) -> dict[str, Any]:
    """The event's data: SMTPeter's columns (clicks: url, destination; opens: protocol), what
    its webhooks send (useragent, referer), and the hit itself for scoring it again."""
    data: dict[str, Any] = {
        "recipient": recipient.address, "tags": recipient.tags, "ip": hit.ip, "headers": head.text,
        "useragent": head.user_agent, "referer": head.referer, "url": hit.url, "position": hit.position,
        "method": hit.method, "bot": bool(reason), "bot_reason": reason,
    }
    if hit.kind == CLICK:
        data["destination"] = hit.destination
    else:
        data["protocol"] = "https" if hit.secure else "http"
        if hit.destination:
            data["image"] = hit.destination
    return data
