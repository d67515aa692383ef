"""The events: what can happen to a message, and the record each happening leaves.

Every event belongs to one account and one message id (one recipient), has a
type from the list below and a data object whose keys are SMTPeter's log
columns (``events/logfiles.py`` shapes them for the API and the log files).
Storage keeps them in one durable, ordered feed; webhooks, statistics and
the dashboard read that feed (``events/feed.py``).
"""

from __future__ import annotations

from typing import Any

from smtpeter.delivery.client_connection import RecipientResult
from smtpeter.scheduler.retry import Verdict
from smtpeter.storage.models import Lease, StoredMessage
from smtpeter.storage.store import DELIVERED, EXPIRED, FAILED

# Accepted for delivery (SMTPeter calls it an attempt: the log of what was sent).
ATTEMPT = "attempt"
DELIVERY = "delivery"
# A delivery attempt that will be retried; the API shows it as a failure with action "failure".
DEFERRED = "deferred"
# Given up on: data["type"] says "failed" (a permanent error) or "expired" (out of time).
FAILURE = "failure"
# What comes back and what recipients do (the features that record them come later).
BOUNCE = "bounce"
RESPONSE = "response"  # an auto-reply
ABUSE = "abuse"  # a complaint (feedback loop)
CLICK = "click"
OPEN = "open"
UNSUBSCRIBE = "unsubscribe"
TYPES = (ATTEMPT, DELIVERY, DEFERRED, FAILURE, BOUNCE, RESPONSE, ABUSE, CLICK, OPEN, UNSUBSCRIBE)


def accepted(sender: str | None, recipient: str, properties: list[str], tags: list[str]) -> dict[str, Any]:
    """The data of an ATTEMPT event: the message was accepted for ``recipient``."""
    return {"envelope": sender or "", "recipient": recipient, "properties": ";".join(sorted(properties)),
            "tags": tags}


def attempt_outcome(message: StoredMessage, lease: Lease, result: RecipientResult,
                    verdict: Verdict) -> tuple[str, dict[str, Any]]:
    """The event one delivery attempt (or an expiry before one) leaves: its type and data."""
    peer = result.peer
    data: dict[str, Any] = {
        "recipient": lease.address, "envelope": message.envelope.sender or "", "attempt": verdict.attempts,
        "from": peer.local_ip if peer else "", "to": peer.ip if peer else "",
        "mx": peer.mx if peer else "", "code": result.code, "status": result.status,
        "description": result.description, "state": result.state, "tags": message.tags,
    }
    if peer is not None and peer.tls:
        data["tls"] = {"version": peer.tls_version, "cipher": peer.cipher}
    if verdict.state == DELIVERED:
        return DELIVERY, data
    if verdict.state == FAILED:
        return FAILURE, {**data, "type": "failed"}
    if verdict.state == EXPIRED:
        return FAILURE, {**data, "type": "expired", "state": "expired", "smtp_state": result.state}
    return DEFERRED, {**data, "retry": verdict.next_attempt}
