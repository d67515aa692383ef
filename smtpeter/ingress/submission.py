"""What every ingress path does with a message before it is queued.

SMTP and the REST API both end here: the sender domain rule, the
``x-smtpeter-*`` option headers, trace and identity headers, then the durable
enqueue. Nothing is queued unless every check passes.
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smtpeter import message as msg
from smtpeter.events.metrics import Metrics
from smtpeter.ids import new_id
from smtpeter.storage import Storage
from smtpeter.storage.models import NewMessage, NewRecipient

BOOLEAN_OPTIONS = ("inlinecss", "trackclicks", "trackopens", "trackbounces", "preventscam")
IMAGES_VALUES = ("default", "hosted")
_HEADER_PREFIX = "x-smtpeter-"
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_DOMAIN_CACHE_SECONDS = 10.0
# Postfix keeps 100 KB of header; a message with more is refused, not truncated.
MAX_HEADER_SIZE = 256 * 1024


class Refused(Exception):
    """The message breaks a rule; nothing was stored."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.code, self.status, self.text = code, status, text


def check_tag(tag: str) -> str:
    tag = tag.strip()
    if not tag or not tag.isprintable() or any(c.isspace() or c == ";" for c in tag) or len(tag) > 100:
        raise Refused(550, "5.6.0", f"Invalid tag {tag!r}: tags have no white space or semicolons")
    return tag


def options_from_headers(fields: list[msg.Field]) -> tuple[dict[str, Any], list[str] | None]:
    """Read ``x-smtpeter-*`` headers into option overrides and tags."""
    options: dict[str, Any] = {}
    tags: list[str] | None = None
    for field in fields:
        if not field.name.startswith(_HEADER_PREFIX):
            continue
        name, value = field.name[len(_HEADER_PREFIX):], field.value
        if name in BOOLEAN_OPTIONS:
            lowered = value.lower()
            if lowered not in _TRUE | _FALSE:
                raise Refused(550, "5.6.0", f"Invalid {field.name} value {value!r}: use true or false")
            options[name] = lowered in _TRUE
        elif name == "images":
            if value.lower() not in IMAGES_VALUES:
                raise Refused(550, "5.6.0", f"Invalid {field.name} value {value!r}: use hosted or default")
            options["images"] = value.lower()
        elif name == "tags":
            tags = [check_tag(t) for t in value.split(",") if t.strip()]
    return options, tags


def sender_domains(fields: list[msg.Field]) -> list[str]:
    """Domains of every address in the From header."""
    values = [f.value for f in fields if f.name == "from"]
    if not values:
        raise Refused(550, "5.6.0", "Message refused: it has no From header")
    if len(values) > 1:
        # RFC 5322 §3.6 allows one; a second is how a forged sender hides behind an approved one.
        raise Refused(550, "5.6.0", "Message refused: more than one From header")
    return list(_from_domains(values[0]))


@functools.lru_cache(maxsize=4096)
def _from_domains(value: str) -> tuple[str, ...]:
    """The domains in one From value; cached, as applications send the same From again and again."""
    try:
        addresses = email.utils.getaddresses([value])
    except RecursionError:
        raise Refused(550, "5.6.0", "Message refused: the From header cannot be parsed") from None
    domains = []
    for _, address in addresses:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            raise Refused(550, "5.6.0", "Message refused: the From header holds no valid address")
        domains.append(domain.lower().rstrip("."))
    if not domains:
        raise Refused(550, "5.6.0", "Message refused: the From header holds no valid address")
    return tuple(domains)


@dataclass(frozen=True)
class Sender:
    """The account a message is submitted for, and the defaults that come with the login."""

    account_id: str
    defaults: dict[str, Any]


class Submission:
    def __init__(self, storage: Storage, hostname: str, metrics: Metrics | None = None) -> None:
        self.storage = storage
        self.hostname = hostname
        self.metrics = metrics or Metrics()
        self._domains: dict[str, tuple[float, set[str]]] = {}
        # Told after each message is stored, so delivery starts without polling delay.
        self.queued: Callable[[], None] = lambda: None

    async def _approved(self, account_id: str, refresh: bool = False) -> set[str]:
        now = self.storage.now()
        cached = self._domains.get(account_id)
        if cached and cached[0] > now and not refresh:
            return cached[1]
        domains = await self.storage.approved_domains(account_id)
        self._domains[account_id] = (now + _DOMAIN_CACHE_SECONDS, domains)
        return domains

    async def check_sender_domains(self, account_id: str, domains: list[str]) -> None:
        approved = await self._approved(account_id)
        if not set(domains) <= approved:
            # The cache may predate a newly approved domain: ask once more.
            approved = await self._approved(account_id, refresh=True)
        for domain in domains:
            if domain not in approved:
                raise Refused(550, "5.7.1",
                              f"Sender domain {domain} is not an approved sender domain of this account")

    def identity_headers(self, fields: list[msg.Field]) -> bytes:
        """Message-ID and Date for a message that lacks them (RFC 6409 §8)."""
        added = b""
        if msg.first(fields, "message-id") is None:
            added += msg.make_field("Message-ID", f"<{new_id()}@{self.hostname}>")
        if msg.first(fields, "date") is None:
            added += msg.make_field("Date", msg.date_now())
        return added

    async def resubmit(self, account_id: str, content: dict[str, Any], recipient: NewRecipient) -> list[str]:
        """The stored message again, to one of its recipients, as a new message (``/v1/resend``).

        It is a new message: a new Message-ID and Date, so receivers that drop
        duplicates by Message-ID take it, and it sorts where it is read.
        """
        parsed = msg.parse(content["mime"])
        await self.check_sender_domains(account_id, sender_domains(parsed.fields))
        kept = [f for f in parsed.fields if f.name not in ("message-id", "date")]
        mime = self.identity_headers(kept) + msg.build(kept, parsed.body)
        message = NewMessage(
            account_id=account_id, source="api", envelope=content["envelope"], mime=mime,
            recipients=[recipient], options=content["options"], tags=content["tags"],
            body=content["body"], smtputf8=content["smtputf8"], dsn_ret=content["dsn_ret"],
            dsn_envid=content["dsn_envid"],
        )
        return (await self.store([message]))[0]

    async def submit(self, sender: Sender, source: str, envelope: str | None, recipients: list[NewRecipient],
                     data: bytes, **kwargs: Any) -> list[str]:
        """Check and store one message; return one message id per recipient (see ``prepare``)."""
        message = await self.prepare(sender, source, envelope, recipients, data, **kwargs)
        return (await self.store([message]))[0]

    async def prepare(
        self,
        sender: Sender,
        source: str,
        envelope: str | None,
        recipients: list[NewRecipient],
        data: bytes,
        trace: bytes = b"",
        options: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        **extra: Any,
    ) -> NewMessage:
        """Check one message and make it ready to store.

        ``trace`` is a Received field to prepend. Options come from the login
        defaults, then ``options``, then ``x-smtpeter-*`` headers, which win.
        Raises Refused.
        """
        parsed = msg.parse(data)
        if len(data) - len(parsed.body) > MAX_HEADER_SIZE:
            raise Refused(552, "5.3.4", f"Message refused: header larger than {MAX_HEADER_SIZE} octets")
        await self.check_sender_domains(sender.account_id, sender_domains(parsed.fields))
        header_options, header_tags = options_from_headers(parsed.fields)
        merged = {**sender.defaults, **(options or {}), **header_options}
        kept = [f for f in parsed.fields if not f.name.startswith(_HEADER_PREFIX)]
        mime = trace + self.identity_headers(kept) + msg.build(kept, parsed.body)
        return NewMessage(
            account_id=sender.account_id,
            source=source,
            envelope=envelope,
            mime=mime,
            recipients=recipients,
            options=merged,
            tags=header_tags if header_tags is not None else list(tags or []),
            **extra,
        )

    async def store(self, messages: list[NewMessage]) -> list[list[str]]:
        """Store prepared messages durably, all or none; their recipients' ids, per message.

        Raises StorageUnavailable when they could not be stored.
        """
        groups = await self.storage.enqueue_all(messages)
        self.metrics.count("smtpeter_accepted_total", sum(len(ids) for ids in groups))
        self.queued()
        return groups
