"""What a returned message leads to: its events and whether it is forwarded.

Pure functions over a classified report (``classify``) and the message it is
about; the processor (``processor.py``) commits what they return.

Events, as SMTPeter records them (smtpeter-api.md §4.5):

* every bounce (DSN or not, also unrecognised mail to a VERP address) is a
  ``bounce`` event carrying the received MIME, its reason and hard/soft;
* a recognised failure report (a DSN or non-standard bounce saying the
  recipient failed) is also a ``failure`` event with state ``bounce``, so the
  failure log and webhook see asynchronous failures as they see synchronous
  ones;
* an auto-reply is a ``response`` event, a complaint an ``abuse`` event.

Forwarding (the envelope x trackbounces matrix): a message sent with
``trackbounces`` went out with our VERP return path; what comes back to it is
forwarded to the customer's own envelope sender when the message had one,
from the null sender (a forward of a bounce must never cause another). A
recognised DSN is forwarded only as the recipient's DSN NOTIFY asks (FAILURE
by default; NEVER forwards only what we could not recognise and auto-replies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtpeter.bounces.pipeline import RecipientResult, Report
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.events.model import ABUSE, BOUNCE, FAILURE, RESPONSE, accept
from smtpeter.storage.models import NewEvent, NewMessage, QueuedRecipient, StoredMessage

# The received MIME an event carries (for the log files and webhooks); the whole message stays
# in storage, reachable by the event's "inbound" id.
EVENT_MIME_LIMIT = 256 * 1024
# Reasons that say nothing failed: no failure event for them.
_NOT_FAILURES = {"delivered", "undefined", "feedback", "vacation"}
# RFC 3464 actions and the NOTIFY condition (RFC 3461) that asks to hear of each.
_NOTIFY_FOR = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS", "relayed": "SUCCESS",
               "expanded": "SUCCESS"}
# A forwarded report is plain mail to the customer: nothing of ours is done to it.
_FORWARD_OPTIONS = MessageOptions(inlinecss=False, trackclicks=False, trackopens=False, trackbounces=False,
                                  preventscam=False)


@dataclass(frozen=True)
class Returned:
    """What one received message means for one of our recipients."""

    events: list[NewEvent]
    forward: NewMessage | None


def mime_text(mime: bytes) -> str:
    """The received message as event data carries it (capped; undecodable bytes replaced)."""
    return mime[:EVENT_MIME_LIMIT].decode("utf-8", "replace")


def result_for(report: Report, address: str) -> RecipientResult | None:
    """The report's result about ``address`` (the one a VERP address named), else its only or
    first one: a report that names another address (a forward, an alias) is still about ours."""
    wanted = address.lower()
    for result in report.recipients:
        if result.recipient.lower() == wanted:
            return result
    return report.recipients[0] if report.recipients else None


def returned(report: Report, inbound_id: str, mime: bytes, to: str, recipient: QueuedRecipient,
             message: StoredMessage) -> Returned:
    """The events and the forward that ``report`` (received at ``to``, stored as ``inbound_id``)
    makes of ``recipient`` of ``message``."""
    result = result_for(report, recipient.address)
    common: dict[str, Any] = {"recipient": recipient.address, "envelope": to, "tags": message.tags,
                              "inbound": inbound_id, "from": report.sender, "subject": report.subject}
    account, rid, address = message.account_id, recipient.id, recipient.address
    events: list[NewEvent] = []
    if report.kind == "response":
        events.append(NewEvent(account, rid, address, RESPONSE, {**common, "mime": mime_text(mime)}))
    elif report.kind == "abuse":
        events.append(NewEvent(account, rid, address, ABUSE, {
            **common, "emailfrom": address, "feedbacktype": result.feedbacktype if result else "",
            "mime": mime_text(mime)}))
    else:
        details = _details(result)
        events.append(NewEvent(account, rid, address, BOUNCE, {**common, **details, "mime": mime_text(mime)}))
        if result is not None and is_failure(result):
            events.append(NewEvent(account, rid, address, FAILURE, {
                "recipient": address, "envelope": message.envelope.sender or "", "attempt": "",
                "from": "", "to": "", "type": "failed", "code": _code(result.replycode),
                "status": result.status, "description": result.diagnostic, "state": "bounce",
                "reason": result.reason, "hardbounce": result.hardbounce, "tags": message.tags,
                "inbound": inbound_id}))
    return Returned(events, _forward(report, result, mime, recipient, message))


def is_failure(result: RecipientResult) -> bool:
    """Whether a bounce result says the recipient failed for good (not a delay or a success)."""
    return (result.reason not in _NOT_FAILURES and result.action in ("failed", "")
            and result.status[:1] == "5")


def _details(result: RecipientResult | None) -> dict[str, Any]:
    if result is None:
        return {"reason": "undefined", "hardbounce": False, "status": "", "replycode": "", "diagnostic": "",
                "command": "", "action": "", "feedbacktype": ""}
    return {"reason": result.reason, "hardbounce": result.hardbounce, "status": result.status,
            "replycode": result.replycode, "diagnostic": result.diagnostic, "command": result.command,
            "action": result.action, "feedbacktype": result.feedbacktype, "remote_mta": result.remote_mta}


def _code(replycode: str) -> int | str:
    return int(replycode) if replycode.isdigit() else ""


def _forward(report: Report, result: RecipientResult | None, mime: bytes, recipient: QueuedRecipient,
             message: StoredMessage) -> NewMessage | None:
    to = message.envelope.sender
    if not to or not message.options.trackbounces:
        return None  # no envelope of the customer's: bounces are intercepted, logged, not forwarded
    recognised_dsn = report.kind == "bounce" and result is not None and result.reason != "undefined"
    if recognised_dsn:
        condition = _NOTIFY_FOR.get(result.action or "failed", "FAILURE")
        if not recipient.recipient.wants(condition):
            return None
    envelope = Envelope("", (Recipient(to),), smtputf8=not to.isascii())
    return accept(NewMessage(message.account_id, "forward", envelope, mime, options=_FORWARD_OPTIONS,
                             tags=list(message.tags)))
