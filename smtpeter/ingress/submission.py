"""What every ingress path does with a message before it is queued.

SMTP and the REST API both end here: the sender domain rule, the
``x-smtpeter-*`` option headers, trace and identity headers, then the durable
enqueue. Nothing is queued unless every check passes.
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smtpeter.address import domain_key
from smtpeter.envelope import OPTION_NAMES, Envelope, MessageOptions, OptionError, Recipient, parse_tag
from smtpeter.events.metrics import Metrics
from smtpeter.events.model import accept
from smtpeter.ids import new_id
from smtpeter.mime import header as msg
from smtpeter.mime.lines import foldable
from smtpeter.storage import Storage
from smtpeter.storage.models import NewMessage, StoredMessage

_HEADER_PREFIX = "x-smtpeter-"
_DOMAIN_CACHE_SECONDS = 10.0
# Postfix keeps 100 KB of header; a message with more is refused, not truncated.
MAX_HEADER_SIZE = 256 * 1024


class Refused(Exception):
    """The message breaks a rule; nothing was stored."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.code, self.status, self.text = code, status, text


def options_from_headers(fields: list[msg.Field]) -> tuple[MessageOptions, list[str] | None]:
    """The options and tags that ``x-smtpeter-*`` headers set (RFC 5322 allows any case)."""
    values: dict[str, str] = {}
    tags: list[str] | None = None
    for field in fields:
        if not field.name.startswith(_HEADER_PREFIX):
            continue
        name = field.name[len(_HEADER_PREFIX):]
        if name == "tags":
            try:
                tags = [parse_tag(t) for t in field.value.split(",") if t.strip()]
            except ValueError as exc:
                raise Refused(550, "5.6.0", f"Invalid {field.name}: {exc}") from None
        elif name in OPTION_NAMES:
            values[name] = field.value
    try:
        return MessageOptions.parse(values), tags
    except OptionError as exc:
        raise Refused(550, "5.6.0", f"Invalid {_HEADER_PREFIX}{exc.name} value {values[exc.name]!r}: "
                                    f"{exc.message}") from None


# Fields that say who sent the message (RFC 5322 §3.6.2, §3.6.6): every
# address in them, and the envelope sender, must be the account's own.
_SENDER_FIELDS = {"from": "From", "sender": "Sender", "resent-from": "Resent-From",
                  "resent-sender": "Resent-Sender"}
# Something a reader takes for an address, in a display name.
_ADDRESS_CHAR = r'[^\s@<>"(),;:\[\]]'
_SHOWN_ADDRESS = re.compile(rf"{_ADDRESS_CHAR}+@({_ADDRESS_CHAR}+\.{_ADDRESS_CHAR}+)")


@dataclass(frozen=True)
class Identity:
    """One address the message claims to be from, and the domains a reader would see in it."""

    where: str  # "MAIL FROM", "From", "Sender", ...
    address: str
    domain: str
    shown_domains: tuple[str, ...] = ()  # of addresses written into its display name


def sender_identities(envelope: str | None, fields: list[msg.Field]) -> list[Identity]:
    """The envelope sender and every address of the From, Sender and Resent-* fields."""
    froms = [f for f in fields if f.name == "from"]
    if not froms:
        raise Refused(550, "5.6.0", "Message refused: it has no From header")
    if len(froms) > 1:
        # RFC 5322 §3.6 allows one; a second is how a forged sender hides behind an approved one.
        raise Refused(550, "5.6.0", "Message refused: more than one From header")
    if sum(1 for f in fields if f.name == "sender") > 1:
        raise Refused(550, "5.6.0", "Message refused: more than one Sender header")
    found = []
    if envelope:
        found.append(Identity("MAIL FROM", envelope, domain_key(envelope.rpartition("@")[2])))
    for field in fields:
        where = _SENDER_FIELDS.get(field.name)
        if where is not None:
            found += [Identity(where, address, domain, shown)
                      for address, domain, shown in _mailboxes(where, field.value)]
    return found


@functools.lru_cache(maxsize=4096)
def _mailboxes(where: str, value: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(address, its domain, domains shown in its display name) for one field value; cached, as
    applications send the same From again and again."""
    try:
        pairs = email.utils.getaddresses([value])
    except RecursionError:
        raise Refused(550, "5.6.0", f"Message refused: the {where} header cannot be parsed") from None
    found = []
    for display, address in pairs:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            raise Refused(550, "5.6.0", f"Message refused: the {where} header holds no valid address")
        found.append((address, domain_key(domain), _shown_domains(display)))
    if not found:
        raise Refused(550, "5.6.0", f"Message refused: the {where} header holds no valid address")
    return tuple(found)


def _shown_domains(display: str) -> tuple[str, ...]:
    """Domains of the addresses a reader would see in a display name, encoded-words and
    look-alike characters (a full-width @) included."""
    if not display:
        return ()
    if "=?" in display:
        try:
            display = str(email.header.make_header(email.header.decode_header(display)))
        except (ValueError, LookupError, UnicodeError, email.errors.MessageError):
            pass  # not decodable: a reader sees it as it is
    display = unicodedata.normalize("NFKC", display)
    return tuple(domain_key(match.group(1)) for match in _SHOWN_ADDRESS.finditer(display))


def _separator(data: bytes, body_start: int) -> bytes:
    """The empty line the body must start with, when it is missing.

    Our header ends at the first line that is not a header field; a receiver
    that reads on past such a line would see header fields we never checked
    (a second From). With the empty line put in, as Postfix's cleanup does,
    every reader ends the header where we did.
    """
    missing = body_start < len(data) and not data.startswith(b"\r\n", body_start)
    return b"\r\n" if missing else b""


@dataclass(frozen=True)
class Sender:
    """The account a message is submitted for, and the defaults that come with the login."""

    account_id: str
    defaults: MessageOptions


class Submission:
    def __init__(self, storage: Storage, hostname: str, metrics: Metrics | None = None,
                 allow_foreign_display_names: bool = False) -> None:
        self.storage = storage
        self.hostname = hostname
        self.metrics = metrics or Metrics()
        # Whether a display name may show an address of a domain the account does not own.
        self.allow_foreign_display_names = allow_foreign_display_names
        self._domains: dict[str, tuple[float, set[str]]] = {}
        # Told after each message is stored, so delivery starts without polling delay.
        self.queued: Callable[[], None] = lambda: None

    async def _approved(self, account_id: str, refresh: bool = False) -> set[str]:
        now = self.storage.now()
        cached = self._domains.get(account_id)
        if cached and cached[0] > now and not refresh:
            return cached[1]
        domains = {domain_key(d) for d in await self.storage.approved_domains(account_id)}
        self._domains[account_id] = (now + _DOMAIN_CACHE_SECONDS, domains)
        return domains

    async def check_sender(self, account_id: str, envelope: str | None, fields: list[msg.Field]) -> None:
        """Refuse a message that claims a sender outside the account's approved domains.

        The envelope sender (empty, the null sender, is fine), every address
        in From, Sender and Resent-From/-Sender, and (unless allowed) any
        address shown in their display names.
        """
        identities = sender_identities(envelope, fields)
        wanted = {i.domain for i in identities}
        if not self.allow_foreign_display_names:
            wanted.update(d for i in identities for d in i.shown_domains)
        approved = await self._approved(account_id)
        if not wanted <= approved:
            # The cache may predate a newly approved domain: ask once more.
            approved = await self._approved(account_id, refresh=True)
        for identity in identities:
            claimed = f"{identity.where} <{identity.address}>"
            if identity.domain not in approved:
                raise Refused(550, "5.7.1", f"{claimed}: {identity.domain} is not an approved sender "
                                            "domain of this account")
            if self.allow_foreign_display_names:
                continue
            for shown in identity.shown_domains:
                if shown not in approved:
                    raise Refused(550, "5.7.1", f"{claimed}: its display name shows an address at {shown}, "
                                                "which is not a sender domain of this account")

    def identity_headers(self, fields: list[msg.Field]) -> bytes:
        """Message-ID and Date for a message that lacks them (RFC 6409 §8)."""
        added = b""
        if msg.first(fields, "message-id") is None:
            added += msg.make_field("Message-ID", f"<{new_id()}@{self.hostname}>")
        if msg.first(fields, "date") is None:
            added += msg.make_field("Date", msg.date_now())
        return added

    async def resubmit(self, account_id: str, stored: StoredMessage, recipient: Recipient) -> list[str]:
        """The stored message again, to one of its recipients, as a new message (``/v1/resend``).

        It is a new message: a new Message-ID and Date, so receivers that drop
        duplicates by Message-ID take it, and it sorts where it is read.
        """
        parsed = msg.parse(stored.mime)
        await self.check_sender(account_id, stored.envelope.sender, parsed.fields)
        kept = [f for f in parsed.fields if f.name not in ("message-id", "date")]
        mime = self.identity_headers(kept) + msg.build(kept, memoryview(parsed.raw)[parsed.body_start:])
        message = accept(NewMessage(account_id, "api", stored.envelope.with_recipients([recipient]), mime,
                                    stored.options, stored.tags))
        return (await self.store([message]))[0]

    async def submit(self, sender: Sender, source: str, envelope: Envelope, data: bytes,
                     **kwargs: Any) -> list[str]:
        """Check and store one message; return one message id per recipient (see ``prepare``)."""
        message = await self.prepare(sender, source, envelope, data, **kwargs)
        return (await self.store([message]))[0]

    async def prepare(
        self,
        sender: Sender,
        source: str,
        envelope: Envelope,
        data: bytes,
        trace: bytes = b"",
        options: MessageOptions | None = None,
        tags: list[str] | None = None,
        expires: float | None = None,
        recipient_ids: list[str] | None = None,
    ) -> NewMessage:
        """Check one message and make it ready to store (its recipients' ids and events made).

        ``trace`` is a Received field to prepend; ``recipient_ids`` are ids made for the
        recipients already (a personalized message names its own id). Options come from the login
        defaults, then ``options``, then ``x-smtpeter-*`` headers, which win.
        Raises Refused.
        """
        parsed = msg.parse(data)
        if parsed.body_start > MAX_HEADER_SIZE:
            raise Refused(552, "5.3.4", f"Message refused: header larger than {MAX_HEADER_SIZE} octets")
        for field in parsed.fields:
            if not foldable(field.raw):
                raise Refused(550, "5.6.0", f"Message refused: a {field.name} header line is longer than 998 "
                                            "octets and has no white space to fold it at (RFC 5322 §2.1.1)")
        await self.check_sender(sender.account_id, envelope.sender, parsed.fields)
        header_options, header_tags = options_from_headers(parsed.fields)
        kept = [f for f in parsed.fields if not f.name.startswith(_HEADER_PREFIX)]
        # One copy of what may be 50 MB: the body goes in as a view of ``data``.
        mime = b"".join([trace, self.identity_headers(kept), *(f.raw for f in kept),
                         _separator(data, parsed.body_start), memoryview(data)[parsed.body_start:]])
        return accept(NewMessage(
            account_id=sender.account_id,
            source=source,
            envelope=envelope,
            mime=mime,
            options=sender.defaults.merged(options or MessageOptions(), header_options),
            tags=header_tags if header_tags is not None else list(tags or []),
            expires=expires,
            recipient_ids=list(recipient_ids or []),
        ))

    async def store(self, messages: list[NewMessage]) -> list[list[str]]:
        """Store prepared messages durably, all or none; their recipients' ids, per message.

        Raises StorageUnavailable when they could not be stored.
        """
        groups = await self.storage.enqueue_all(messages)
        self.metrics.count("smtpeter_accepted_total", sum(len(ids) for ids in groups))
        self.queued()
        return groups
