"""The events: what can happen to a message, and the record each happening leaves.

Every event belongs to one account and one message id (one recipient), has a
type from the list below and a data object whose keys are SMTPeter's log
columns (``events/logfiles.py`` shapes them for the API and the log files).
Storage keeps them in one durable, ordered feed; webhooks, statistics and
the dashboard read that feed (``events/feed.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from smtpeter.attempt import RecipientResult
from smtpeter.bounces import reason_for
from smtpeter.ids import new_id
from smtpeter.storage.models import DELIVERED, EXPIRED, FAILED, Lease, NewEvent, NewMessage, StoredMessage

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
# A step of the outbound pipeline failed on the message and was skipped; the mail went on.
WARNING = "warning"
# SMTPeter's result state for a recipient on the account's suppression list: failed, never tried.
SUPPRESSION = "suppression"
TYPES = (ATTEMPT, DELIVERY, DEFERRED, FAILURE, BOUNCE, RESPONSE, ABUSE, CLICK, OPEN, UNSUBSCRIBE, WARNING)


def _attempt_data(sender: str | None, recipient: str, properties: list[str],
                  tags: list[str]) -> dict[str, Any]:
    """The data of an ATTEMPT event: the message was accepted for ``recipient``."""
    return {"envelope": sender or "", "recipient": recipient, "properties": ";".join(sorted(properties)),
            "tags": tags}


def accept(message: NewMessage) -> NewMessage:
    """``message`` ready to be queued: a public message id for each recipient (unless it has
    them: personalization makes a recipient's id first, to write it into the message), and the
    ATTEMPT event of each, which storage records in the transaction that stores the message."""
    ids = list(message.recipient_ids) or [new_id() for _ in message.envelope.recipients]
    properties = [name for name, value in message.options.as_dict().items() if value is True]
    events = [NewEvent(message.account_id, rid, rcpt.address, ATTEMPT,
                       _attempt_data(message.envelope.sender, rcpt.address, properties, message.tags))
              for rid, rcpt in zip(ids, message.envelope.recipients, strict=True)]
    return replace(message, recipient_ids=ids, events=events)


def attempt_outcome(message: StoredMessage, lease: Lease, result: RecipientResult, state: str,
                    attempts: int, next_attempt: float) -> tuple[str, dict[str, Any]]:
    """The event one delivery attempt (or an expiry before one) leaves: its type and data, given the
    recipient's ``state`` after it, the ``attempts`` made and when the next is due."""
    peer = result.peer
    data: dict[str, Any] = {
        "recipient": lease.address, "envelope": message.envelope.sender or "", "attempt": attempts,
        "from": peer.local_ip if peer else "", "to": peer.ip if peer else "",
        "mx": peer.mx if peer else "", "code": result.code, "status": result.status,
        "description": result.description, "state": result.state, "tags": message.tags,
    }
    if peer is not None and peer.tls:
        data["tls"] = {"version": peer.tls_version, "cipher": peer.cipher}
    if state == DELIVERED:
        return DELIVERY, data
    if state == FAILED and result.state == SUPPRESSION:
        return FAILURE, {**data, "type": "suppressed", "reason": "suppressed", "hardbounce": False}
    if state == FAILED:
        reason, hard = failure_reason(result)
        return FAILURE, {**data, "type": "failed", "reason": reason, "hardbounce": hard}
    if state == EXPIRED:
        return FAILURE, {**data, "type": "expired", "state": "expired", "smtp_state": result.state,
                         "reason": "expired", "hardbounce": False}
    return DEFERRED, {**data, "retry": next_attempt}


_COMMANDS = {"mailfrom": "MAIL", "rcptto": "RCPT", "data": "DATA", "message": "DATA"}


def failure_reason(result: RecipientResult) -> tuple[str, bool]:
    """Why a recipient failed for good, in the bounce classifier's taxonomy (userunknown,
    mailboxfull, blocked, ...), and whether that is a hard bounce: the same reasons as the
    bounces that come back later."""
    return reason_for(result.status or "", str(result.code or ""), result.description,
                      command=_COMMANDS.get(result.state, ""),
                      remote_host=result.peer.mx if result.peer else "", recipient=result.address)


def warning(message: StoredMessage, lease: Lease, description: str) -> NewEvent:
    """A WARNING event: ``description`` says which step failed on the message, and how."""
    return NewEvent(message.account_id, lease.id, lease.address, WARNING,
                    {"recipient": lease.address, "envelope": message.envelope.sender or "",
                     "description": description, "tags": message.tags})
