"""What the outbound pipeline works on.

A ``PreparedMessage`` is a stored message after the steps that do not depend
on the recipient (done once, however many recipients it has). An
``OutboundJob`` is what one transaction will carry: the envelope (sender and
recipients, which a step may change, as VERP does) and the exact bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from smtpeter.envelope import Envelope, Recipient
from smtpeter.outbound.dkim import SigningKey
from smtpeter.storage.models import StoredMessage


@dataclass(frozen=True)
class StepSettings:
    """What steps need beyond the job, the same for every job (it goes to the workers with it)."""

    public_url: str  # the base of tracking links (http.public_url)
    link_keys: tuple[bytes, ...]  # signing keys of tracking links, the first signs


@dataclass(frozen=True)
class SenderAuth:
    """How a message's sender domain authenticates it: looked up once per message (the sender
    domain's settings, keys and last DNS check), it goes to the workers with the job."""

    domain: str  # the approved sender domain the From address belongs to
    signing_keys: tuple[SigningKey, ...] = ()  # DKIM keys that sign now (published, valid)
    bounce_domain: str | None = None  # the VERP return path's domain, when its MX points to us
    tracking_base: str | None = None  # tracking links' base URL on the domain's tracking host


@dataclass(frozen=True)
class PreparedMessage:
    message: StoredMessage
    content: bytes  # after the per-message steps
    warnings: tuple[str, ...] = ()  # steps that failed and were skipped
    auth: SenderAuth | None = None  # the message's sender authentication, looked up once with it


@dataclass(frozen=True)
class OutboundJob:
    message: StoredMessage
    envelope: Envelope  # the outbound envelope: its sender is the MAIL FROM, its recipients the RCPTs
    content: bytes
    recipient_ids: tuple[str, ...] = ()  # the public message id of each recipient, in order
    auth: SenderAuth | None = None  # None: no approved sender domain (no signing, no VERP)

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        return self.envelope.recipients

    def with_content(self, content: bytes) -> OutboundJob:
        return replace(self, content=content)
