"""Hook types, the events each one gets, and the body of a call.

The body is a JSON object with SMTPeter's webhook fields for the type (``smtpeter-api.md`` §2.8):
``id`` (the message id), ``type``, ``timestamp`` (UTC ``YYYY-MM-DD hh:mm:ss``), ``time`` (Unix
seconds), ``recipient``, ``tags`` (``;``-separated, as our REST events give them), then per type:

* delivery: ``code``, ``extended`` (the enhanced status), ``description``;
* failure: ``action`` (``failure`` for an attempt that will be retried, ``failed`` for the last),
  ``state`` (the SMTP state), ``code``, ``extended``, ``description``, ``result`` (``deferred``,
  ``failed`` or ``expired``);
* click: ``ip``, ``original`` (the link's target), ``useragent``, ``referer``, ``url`` (our link);
* open: ``ip``, ``useragent``, ``referer``;
* bounce and response: ``envelope``, ``mime``; abuse: ``emailfrom``, ``mime``;

and after those every other field the event records, under the names our REST events and log
files use (``envelope``, ``attempt``, ``from``, ``to``, ``bot``, ``bot_reason``, ...).
"""

from __future__ import annotations

import json
from typing import Any

from smtpeter.events.logfiles import time_text
from smtpeter.events.model import (
    ABUSE,
    BOUNCE,
    CLICK,
    DEFERRED,
    DELIVERY,
    FAILURE,
    OPEN,
    RESPONSE,
    UNSUBSCRIBE,
)
from smtpeter.storage.models import FEED_START, Event

TYPES = ("delivery", "failure", "bounce", "response", "click", "open", "abuse", "unsubscribe")
# SMTPeter called complaints' webhooks feedback loops.
ALIASES = {"feedbackloop": "abuse", "feedbackloops": "abuse"}
# The stored event types each hook type gets; a deferral is a failure with action "failure".
HOOK_TYPE = {DELIVERY: "delivery", FAILURE: "failure", DEFERRED: "failure", BOUNCE: "bounce",
             RESPONSE: "response", CLICK: "click", OPEN: "open", ABUSE: "abuse", UNSUBSCRIBE: "unsubscribe"}


def hook_type(name: str) -> str | None:
    """The hook type ``name`` means (old names too), None if it is none."""
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in TYPES else None


def payload(event: Event) -> dict[str, Any]:
    """The body of the call that tells a hook of ``event`` (one whose type is in HOOK_TYPE)."""
    kind = HOOK_TYPE[event.type]
    data = dict(event.data)
    tags = data.pop("tags", None) or []
    body: dict[str, Any] = {
        "id": event.message_id or "", "type": kind, "timestamp": time_text(event.time),
        "time": int(event.time),
        "recipient": data.pop("recipient", None) or event.recipient or "",
        "tags": ";".join(str(tag) for tag in tags) if isinstance(tags, list) else str(tags),
    }
    if kind in ("delivery", "failure"):
        body["code"] = data.pop("code", None)
        body["extended"] = data.pop("status", None) or ""
        body["description"] = data.pop("description", None) or ""
    if kind == "failure":
        body["action"] = "failure" if event.type == DEFERRED else "failed"
        body["state"] = data.pop("state", None) or ""
        # The stored "type" (failed, expired) would clash with the hook's type.
        body["result"] = "deferred" if event.type == DEFERRED else data.pop("type", None) or "failed"
        data.pop("type", None)
    elif kind == "click":
        body["original"] = data.pop("destination", None) or ""
    if kind == "abuse" and "emailfrom" not in data:
        body["emailfrom"] = data.get("from") or ""
    body.update((key, value) for key, value in data.items() if key not in body)
    return body


# The stored event type a test call of each hook type pretends to be.
_TEST_EVENT = {kind: event_type for event_type, kind in reversed(HOOK_TYPE.items())}
TEST_RECIPIENT = "test@example.com"


def test_payload(kind: str, account_id: str, now: float) -> dict[str, Any]:
    """The body of a test call to a hook of ``kind``: the fields a real event of the type gives,
    about no message (``id`` empty) and ``test: true``."""
    return payload(Event(0, account_id, "", TEST_RECIPIENT, _TEST_EVENT[kind], now,
                         {"recipient": TEST_RECIPIENT, "test": True}, FEED_START))


def body_text(value: dict[str, Any]) -> str:
    """A call's body as stored and sent (compact JSON, UTF-8 when encoded)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
