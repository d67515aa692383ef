"""Webhooks over REST: /v1/webhook(s), and SMTPeter's older /v1/feedbackloop(s).

The work is smtpeter/webhooks/registry.py's; this module reads requests and shapes answers. A
hook's secret leaves only in the answer that makes it and in a rotation's; another account's
hook is a 404, like one that does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtpeter.events.logfiles import time_text
from smtpeter.ingress.http.fields import BadRequest
from smtpeter.ingress.http.routing import app, handled, json_reply, query
from smtpeter.storage.webhooks import PENDING, StoredWebhook, WebhookAttempt
from smtpeter.webhooks.ownership import token_file_url
from smtpeter.webhooks.registry import WebhookError

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

_FIELDS = ("type", "url")
DEFAULT_CALLS, MAX_CALLS = 100, 1000


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else time_text(seconds)


def hook_shape(hook: StoredWebhook) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "id": hook.id, "type": hook.type, "url": hook.url, "state": hook.state, "proof": hook.proof,
        "problem": hook.problem, "created": _time(hook.created), "active_since": _time(hook.active_since),
    }
    if hook.state == PENDING:
        # How to prove control of the URL: this file at its origin, or answering the verification call.
        shape["verification"] = {"file": token_file_url(hook.url, hook.token), "token": hook.token}
    return shape


def attempt_shape(attempt: WebhookAttempt) -> dict[str, Any]:
    return {"time": time_text(attempt.time), "status": attempt.status, "duration": round(attempt.duration, 3),
            "error": attempt.error, "call": attempt.call_id, "event": attempt.event_type,
            "attempt": attempt.attempt, "state": attempt.call_state, "next": _time(attempt.next_attempt)}


@app.route("/v1/webhook", methods=["POST"])
@app.route("/v1/feedbackloop", methods=["POST"])
@handled
async def create_webhook(api: API, request: Any) -> bytes:
    """Make a hook: {"type", "url"} answers {"id", "secret", ...}; it is pending until its URL is proven."""
    account, body = await api.authenticated_body(request)
    body.pop("access_token", None)
    for name in body:
        if name not in _FIELDS:
            raise BadRequest(f"unknown field {name[:40]!r}: a webhook has {' and '.join(_FIELDS)}")
    for name in _FIELDS:
        if not isinstance(body.get(name), str) or not body[name]:
            raise BadRequest(f"{name} is required, as a string")
    try:
        hook, secret = await api.webhooks.create(account, body["type"], body["url"])
    except WebhookError as exc:
        raise BadRequest(str(exc)) from None
    return json_reply(request, {**hook_shape(hook), "secret": secret})


@app.route("/v1/webhooks", methods=["GET"])
@app.route("/v1/feedbackloops", methods=["GET"])
@handled
async def list_webhooks(api: API, request: Any) -> bytes:
    account = await api.account(request)
    return json_reply(request, [hook_shape(hook) for hook in await api.webhooks.list(account)])


@app.route("/v1/webhook/<hook_id>", methods=["GET"])
@handled
async def get_webhook(api: API, request: Any, hook_id: str) -> bytes:
    account = await api.account(request)
    hook = await api.webhooks.get(account, hook_id)
    counts = await api.storage.webhook_call_counts(hook.id)
    return json_reply(request, {**hook_shape(hook), "calls": counts})


@app.route("/v1/webhook/<hook_id>", methods=["DELETE"])
@handled
async def delete_webhook(api: API, request: Any, hook_id: str) -> bytes:
    account = await api.account(request)
    await api.webhooks.delete(account, hook_id)
    return json_reply(request, True)


@app.route("/v1/webhook/<hook_id>/verify", methods=["POST"])
@handled
async def verify_webhook(api: API, request: Any, hook_id: str) -> bytes:
    """Check a pending hook's ownership now (the file, then the verification call)."""
    account = await api.account(request)
    return json_reply(request, hook_shape(await api.webhooks.verify(account, hook_id)))


@app.route("/v1/webhook/<hook_id>/enable", methods=["POST"])
@handled
async def enable_webhook(api: API, request: Any, hook_id: str) -> bytes:
    """A hook disabled by a 410 Gone gets the events from now on again."""
    account = await api.account(request)
    return json_reply(request, hook_shape(await api.webhooks.enable(account, hook_id)))


@app.route("/v1/webhook/<hook_id>/secret", methods=["POST"])
@handled
async def rotate_secret(api: API, request: Any, hook_id: str) -> bytes:
    """A new secret; for a day calls carry a signature with the old one too."""
    account = await api.account(request)
    hook, secret = await api.webhooks.rotate_secret(account, hook_id)
    return json_reply(request, {**hook_shape(hook), "secret": secret})


@app.route("/v1/webhook/<hook_id>/calls", methods=["GET"])
@handled
async def webhook_calls(api: API, request: Any, hook_id: str) -> bytes:
    """The hook's latest attempts, newest first."""
    account = await api.account(request)
    text = query(request, "limit")
    limit = DEFAULT_CALLS
    if text is not None:
        if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_CALLS):
            raise BadRequest(f"limit must be a number from 1 to {MAX_CALLS}")
        limit = int(text)
    attempts = await api.webhooks.calls(account, hook_id, limit)
    return json_reply(request, [attempt_shape(attempt) for attempt in attempts])
