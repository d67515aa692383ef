"""POST /v1/send and /v1/resend: a message in, its ids out once it is committed."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from smtpeter.envelope import MessageOptions
from smtpeter.ingress.http import compose, personalize
from smtpeter.ingress.http.fields import BadRequest, SendRequest, parse_send
from smtpeter.ingress.http.routing import LARGE_BODY, DirectResource, app, body_size, handled, json_reply
from smtpeter.ingress.submission import Sender
from smtpeter.storage.models import NewMessage

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

# SMTPeter's documented defaults for /v1/send (rest-send-advanced.md).
API_DEFAULTS = MessageOptions(trackclicks=True, trackopens=True, trackbounces=True, inlinecss=False,
                              preventscam=False)


@app.route("/v1/send", methods=["POST"])
@handled
async def send(api: API, request: Any) -> bytes:
    # A body over the size limit was never kept: it is refused without waiting its turn.
    size = 0 if getattr(request, "too_big", False) else body_size(request)
    if size < LARGE_BODY:
        return await _send(api, request)
    turn = api.large_bodies.acquire(size)
    # A client that goes away while it waits gives its turn up: nothing was stored, and no
    # one is left to answer (CancelledError, which ``handled`` answers with nothing).
    request.notifyFinish().addErrback(lambda _: turn.cancel())
    await turn
    try:
        return await _send(api, request)
    finally:
        api.large_bodies.release(size)


async def _send(api: API, request: Any) -> bytes:
    account, body = await api.authenticated_body(request)
    config = api.config
    sending = parse_send(body, config.http.max_recipients, api.clock.seconds())
    del body  # large strings live on in ``sending`` only; the rest goes now
    if personalize.uses_templates(sending):
        built = await api.in_thread(personalize.personalized, sending, config.http.max_body_size,
                                    api.hosting.webversion_url)
    elif sending.mime is not None:
        built = [(None, *compose.raw(sending.mime), None)]
        sending.mime = None  # the client's copy is not needed any more
    else:
        built = [(None, *await api.in_thread(compose.compose, sending.fields, sending.labels), None)]
        sending.fields.clear()  # the attachments' base64 text, which may be most of the body
    sender = Sender(account, API_DEFAULTS)
    messages = [await _prepare(api, sender, sending, *item) for item in built]
    del built  # each message holds its own prepared copy now
    groups = await api.submission.store(messages)
    return json_reply(request, {i: r.address for message, ids in zip(messages, groups, strict=True)
                                for i, r in zip(ids, message.envelope.recipients, strict=True)})


async def _prepare(api: API, sender: Sender, sending: SendRequest, recipient: str | None, data: bytes,
                   utf8: bool, message_id: str | None) -> NewMessage:
    limit = api.config.smtp.max_message_size
    if len(data) > limit:
        raise BadRequest(f"message larger than {limit} bytes", 413)
    envelope = sending.envelope
    if recipient is not None:  # a personalized message of its own
        envelope = envelope.with_recipients(r for r in envelope.recipients if r.address == recipient)
    addresses = [envelope.sender or "", *(r.address for r in envelope.recipients)]
    envelope = replace(envelope, smtputf8=utf8 or not all(a.isascii() for a in addresses))
    return await api.submission.prepare(sender, "api", envelope, data, options=sending.options,
                                        tags=sending.tags, expires=sending.expires,
                                        recipient_ids=[message_id] if message_id else None)


@app.route("/v1/resend", methods=["POST"])
@handled
async def resend(api: API, request: Any) -> bytes:
    account, body = await api.authenticated_body(request)
    message_id = body.get("message")
    if not isinstance(message_id, str) or not message_id:
        raise BadRequest("'message' (the id of an earlier message) is required")
    entry = await api.storage.recipient(message_id, account_id=account)
    stored = await api.storage.message_content(message_id)
    ids = await api.submission.resubmit(account, stored, entry.recipient)
    return json_reply(request, {ids[0]: entry.address})


class SendResource(DirectResource):
    """/v1/send without Klein's routing: the same handler, reached directly (site.APISite).

    It is the one hot path of the API; Klein's per-request dispatch cost more
    than the rest of the work (bench/api.py).
    """

    def __init__(self, api: API) -> None:
        super().__init__(api, send, (b"POST",))
