"""The REST API (SMTPeter v1 compatible), Thunderbird autoconfig and /metrics, on Klein.

Every /v1 call is scoped to the account of its token: another account's
message ids answer 404, exactly like ids that do not exist. Errors are JSON,
``{"error": "text"}`` (the shape SMTPeter's official PHP client documents and
prints), with the HTTP status that fits.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from klein import Klein
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from zope.interface import provider

from smtpeter import credentials
from smtpeter.config import Config, incoming_server
from smtpeter.envelope import MessageOptions
from smtpeter.events import logfiles
from smtpeter.events.metrics import Metrics, render
from smtpeter.ingress.http import archive, autoconfig, compose, personalize
from smtpeter.ingress.http.budget import ByteBudget
from smtpeter.ingress.http.openapi import document
from smtpeter.ingress.http.request import BadRequest, SendRequest, decode_body, parse_send
from smtpeter.ingress.submission import Refused, Sender, Submission
from smtpeter.storage import EVENTS_LIMIT, NotFound, Storage, StorageError, StorageUnavailable
from smtpeter.storage.models import NewMessage, StoredMessage

log = Logger()

_TOKEN_CACHE_SECONDS = 10.0
LARGE_BODY = 1024 * 1024  # bodies from this size on are decoded off the reactor and wait their turn
LARGE_BODY_BUDGET = 64 * 1024 * 1024  # of large bodies in work at once (ByteBudget)
MAX_TAG_FILTER = 20  # tags one events query may name
# SMTPeter's documented defaults for /v1/send (rest-send-advanced.md).
API_DEFAULTS = MessageOptions(trackclicks=True, trackopens=True, trackbounces=True, inlinecss=False,
                              preventscam=False)


class Unauthorized(Exception):
    pass


class LimitedRequest(Request):
    """A request whose body stops being kept past ``max_body`` bytes (the handler answers 413)."""

    max_body = 64 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # We read bodies ourselves (request.decode_body); Twisted's own form parsing
        # would only cost time (its content-type parsing alone was 18% of a /v1/send).
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        self.too_big = False
        self.body_seen = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.body_seen += len(data)
        if self.body_seen > self.max_body:
            if not self.too_big:
                self.content.seek(0)
                self.content.truncate()  # it is answered 413 unread: give its disk space back now
            self.too_big = True
            return
        super().handleContentChunk(data)


def _query(request: Any, name: str) -> str | None:
    """The first value of a URL query parameter.

    Not ``request.args``: Twisted splits the query at ";" as well as "&", and
    SMTPeter's ``tags=T1;T2`` would lose all but its first tag.
    """
    parsed = getattr(request, "_smtpeter_query", None)
    if parsed is None:
        query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
        try:
            parsed = urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=100)
        except ValueError:
            raise BadRequest("the URL has too many query parameters") from None
        request._smtpeter_query = parsed
    values = parsed.get(name)
    return values[0] if values else None


def _header(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


def _json(request: Any, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode()


def _error(request: Any, status: int, message: str) -> bytes:
    return _json(request, {"error": message}, status)


def _text(request: Any, value: str, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    request.setHeader(b"content-type", content_type)
    return value.encode("utf-8")


def api(handler: Callable) -> Callable:
    """Turn our exceptions into JSON errors with the right status; nothing else escapes."""

    @functools.wraps(handler)
    async def wrapped(self: API, request: Any, *args: Any, **kwargs: Any) -> bytes:
        # Archived content (attachments, HTML) is the sender's, not ours: a browser
        # must neither guess its type nor run it on our origin.
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        try:
            return await handler(self, request, *args, **kwargs)
        except Unauthorized:
            return _error(request, 401, "Invalid access token")
        except BadRequest as exc:
            return _error(request, exc.status, exc.message)
        except Refused as exc:
            status = 403 if exc.status == "5.7.1" else 413 if exc.code == 552 else 400
            return _error(request, status, exc.text)
        except NotFound:
            return _error(request, 404, "Not found")
        except StorageUnavailable:
            request.setHeader(b"retry-after", b"30")
            return _error(request, 503, "Storage is temporarily unavailable; nothing was stored. Try again.")
        except StorageError:
            return _error(request, 400, "The request holds data that cannot be stored")
        except defer.CancelledError:
            return b""  # the client went away; Klein cancelled us
        except Exception:
            log.failure("API request {path} failed", path=request.path)
            return _error(request, 500, "Internal error")

    return wrapped


class _SendResource(Resource):
    """/v1/send without Klein's routing: the same handler, reached directly.

    It is the one hot path of the API; Klein's per-request dispatch cost more
    than the rest of the work (bench/api.py).
    """

    isLeaf = True

    def __init__(self, api: API) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> Any:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return _error(request, 405, "Method not allowed")

        def respond(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("POST /v1/send failed", failure)
            respond(_error(request, 500, "Internal error"))

        defer.Deferred.fromCoroutine(self.api.send(request)).addCallback(respond).addErrback(failed)
        return NOT_DONE_YET


_TOKEN_IN_LOG = re.compile(r"(access_token=)[^&\s\"]*")


@provider(IAccessLogFormatter)
def _access_log_line(timestamp: str, request: Any) -> str:
    """Combined log format, with tokens in URLs (and referrers) blanked out."""
    return _TOKEN_IN_LOG.sub(r"\1-", combinedLogFormatter(timestamp, request))


class APISite(Site):
    def __init__(self, resource: Any, send: Resource, **kwargs: Any) -> None:
        super().__init__(resource, logFormatter=_access_log_line, **kwargs)
        self._send = send

    def _openLogFile(self, path: str | bytes) -> Any:
        # Client addresses and paths with message ids: for the operator only.
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", 1, newline="\n")

    def getResourceFor(self, request: Any) -> Any:
        if request.path == b"/v1/send":
            request.site = self
            request.sitepath = request.prepath[:]
            return self._send
        return super().getResourceFor(request)


class API:
    app = Klein()

    def __init__(self, storage: Storage, submission: Submission, config: Config, clock: Any,
                 metrics: Metrics, stats: Callable[[], dict[str, Any]] | None = None,
                 smtp_ports: tuple[list[int], list[int]] = ([], [])) -> None:
        self.storage = storage
        self.submission = submission
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.stats = stats or dict
        self.smtp_ports = smtp_ports  # (STARTTLS ports, implicit-TLS ports)
        self._tokens: dict[str, tuple[float, str | None]] = {}
        # MIME building and parsing run in threads, a few at a time.
        self._heavy = defer.DeferredSemaphore(4)
        # Large bodies are decoded, composed and stored a budget's worth at a time; the rest
        # wait (holding only their spooled body file), so memory stays bounded (budget.py).
        self.large_bodies = ByteBudget(LARGE_BODY_BUDGET)

    def site(self) -> Site:
        access_log = self.config.http.access_log or str(self.config.data_path / "http-access.log")
        site = APISite(self.app.resource(), _SendResource(self), logPath=access_log)
        site.displayTracebacks = False
        LimitedRequest.max_body = self.config.http.max_body_size
        site.requestFactory = LimitedRequest
        return site

    async def _in_thread(self, work: Callable[..., Any], *args: Any) -> Any:
        """MIME building and parsing: the email package is slow on big input, so not on
        the reactor thread, and a few at a time."""
        try:
            return await self._heavy.run(deferToThread, work, *args)
        except RecursionError:
            raise BadRequest("the message is nested too deeply to handle", 422) from None
        except MemoryError:
            raise BadRequest("the message is too large to handle", 413) from None

    # -- authentication --------------------------------------------------------------

    @staticmethod
    def _offered_token(request: Any) -> str | None:
        header = _header(request, b"authorization")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return _query(request, "access_token") or None

    async def _authenticated_body(self, request: Any) -> tuple[str, dict[str, Any]]:
        """The account, then the body: a token in the header or URL is checked before a
        byte of the body is parsed; only without one may the body carry it."""
        if self._offered_token(request) is not None:
            account = await self._account(request)
            return account, await self._body(request)
        body = await self._body(request)
        return await self._account(request, body), body

    async def _account(self, request: Any, body: dict[str, Any] | None = None) -> str:
        token = self._offered_token(request)
        if token is None and body and isinstance(body.get("access_token"), str):
            token = body["access_token"]
        if not token:
            raise Unauthorized()
        key = credentials.hash_token(token)
        now = self.clock.seconds()
        cached = self._tokens.get(key)
        if cached and cached[0] > now:
            account = cached[1]
        else:
            account = await self.storage.account_for_token(token)
            if len(self._tokens) > 10000:
                self._tokens.clear()
            self._tokens[key] = (now + _TOKEN_CACHE_SECONDS, account)
        if account is None:
            raise Unauthorized()
        return account

    async def _body(self, request: Any) -> dict[str, Any]:
        if getattr(request, "too_big", False):
            raise BadRequest(f"request body larger than {self.config.http.max_body_size} bytes", 413)
        content_type = _header(request, b"content-type").strip()
        if _body_size(request) < LARGE_BODY:
            return decode_body(content_type, request.content)
        return await self._in_thread(decode_body, content_type, request.content)  # not on the reactor

    # -- sending -------------------------------------------------------------------------

    @app.route("/v1/send", methods=["POST"])
    @api
    async def send(self, request: Any) -> bytes:
        # A body over the size limit was never kept: it is refused without waiting its turn.
        size = 0 if getattr(request, "too_big", False) else _body_size(request)
        if size < LARGE_BODY:
            return await self._send(request)
        turn = self.large_bodies.acquire(size)
        # A client that goes away while it waits gives its turn up: nothing was stored, and no
        # one is left to answer (CancelledError, which the api wrapper answers with nothing).
        request.notifyFinish().addErrback(lambda _: turn.cancel())
        await turn
        try:
            return await self._send(request)
        finally:
            self.large_bodies.release(size)

    async def _send(self, request: Any) -> bytes:
        account, body = await self._authenticated_body(request)
        send = parse_send(body, self.config.http.max_recipients, self.clock.seconds())
        del body  # large strings live on in ``send`` only; the rest goes now
        if personalize.uses_templates(send):
            built = await self._in_thread(personalize.personalized, send, self.config.http.max_body_size)
        elif send.mime is not None:
            built = [(None, *compose.raw(send.mime))]
            send.mime = None  # the client's copy is not needed any more
        else:
            built = [(None, *await self._in_thread(compose.compose, send.fields, send.labels))]
            send.fields.clear()  # the attachments' base64 text, which may be most of the body
        sender = Sender(account, API_DEFAULTS)
        messages = [await self._prepare(sender, send, *item) for item in built]
        del built  # each message holds its own prepared copy now
        groups = await self.submission.store(messages)
        return _json(request, {i: r.address for message, ids in zip(messages, groups, strict=True)
                               for i, r in zip(ids, message.envelope.recipients, strict=True)})

    async def _prepare(self, sender: Sender, send: SendRequest, recipient: str | None, data: bytes,
                       utf8: bool) -> NewMessage:
        if len(data) > self.config.smtp.max_message_size:
            raise BadRequest(f"message larger than {self.config.smtp.max_message_size} bytes", 413)
        envelope = send.envelope
        if recipient is not None:  # a personalized message of its own
            envelope = envelope.with_recipients(r for r in envelope.recipients if r.address == recipient)
        addresses = [envelope.sender or "", *(r.address for r in envelope.recipients)]
        envelope = replace(envelope, smtputf8=utf8 or not all(a.isascii() for a in addresses))
        return await self.submission.prepare(sender, "api", envelope, data, options=send.options,
                                             tags=send.tags, expires=send.expires)

    @app.route("/v1/resend", methods=["POST"])
    @api
    async def resend(self, request: Any) -> bytes:
        account, body = await self._authenticated_body(request)
        message_id = body.get("message")
        if not isinstance(message_id, str) or not message_id:
            raise BadRequest("'message' (the id of an earlier message) is required")
        entry = await self.storage.recipient(message_id, account_id=account)
        stored = await self.storage.message_content(message_id)
        ids = await self.submission.resubmit(account, stored, entry.recipient)
        return _json(request, {ids[0]: entry.address})

    # -- events and log files --------------------------------------------------------

    def _window(self, request: Any, anchor: float | None = None) -> tuple[float, float]:
        """SMTPeter's rules: a month at most, from start, up to end, or the last month."""
        start = self._date_arg(request, "start")
        end = self._date_arg(request, "end")
        if start is not None and end is not None:
            if end <= start:
                raise BadRequest("'end' must be after 'start'")
            return start, min(end, _add_months(start, 1))
        if start is not None:
            return start, _add_months(start, 1)
        if end is not None:
            return _add_months(end, -1), end
        if anchor is not None:
            return anchor, _add_months(anchor, 1)
        now = self.clock.seconds()
        return _add_months(now, -1), now + 1

    @staticmethod
    def _date_arg(request: Any, name: str) -> float | None:
        text = _query(request, name)
        if not text:
            return None
        day = logfiles.parse_day(text)
        if day is None:
            raise BadRequest(f"'{name}' must be a date, yyyy-mm-dd")
        return float(day * logfiles.DAY)

    def _tag_filter(self, request: Any, *more: str) -> set[str]:
        tags = set((_query(request, "tags") or "").split(";")) | set(more)
        tags -= {""}
        if len(tags) > MAX_TAG_FILTER:
            raise BadRequest(f"name at most {MAX_TAG_FILTER} tags")
        return tags

    def _events_reply(self, request: Any, events: list, tags: set[str] = frozenset()) -> bytes:
        if len(events) >= EVENTS_LIMIT:
            # SMTPeter's API has no paging: say that a narrower window would show more.
            request.setHeader(b"x-smtpeter-truncated", str(EVENTS_LIMIT).encode())
        if tags:
            events = [e for e in events if tags <= set(e.data.get("tags") or [])]
        return _json(request, [logfiles.api_event(e) for e in events])

    @app.route("/v1/events/messageid/<message_id>", methods=["GET"])
    @api
    async def events_by_message(self, request: Any, message_id: str) -> bytes:
        account = await self._account(request)
        entry = await self.storage.recipient(message_id, account_id=account)
        since, until = self._window(request, anchor=entry.created)
        events = [e for e in await self.storage.events(message_id, account_id=account)
                  if since <= e.time < until]
        return self._events_reply(request, events, self._tag_filter(request))

    @app.route("/v1/events/email/<path:address>", methods=["GET"])
    @api
    async def events_by_address(self, request: Any, address: str) -> bytes:
        account = await self._account(request)
        since, until = self._window(request)
        tags = self._tag_filter(request)
        events = await self.storage.account_events(account, since, until, recipient=address,
                                                   tags=sorted(tags))
        return self._events_reply(request, events, tags)

    @app.route("/v1/events/tags/<path:tags>", methods=["GET"])
    @api
    async def events_by_tags(self, request: Any, tags: str) -> bytes:
        account = await self._account(request)
        wanted = self._tag_filter(request, *tags.replace("/", ";").split(";"))
        if not wanted:
            raise BadRequest("name at least one tag")
        since, until = self._window(request)
        events = await self.storage.account_events(account, since, until, tags=sorted(wanted))
        return self._events_reply(request, events, wanted)

    @app.route("/v1/logfiles", methods=["GET"])
    @api
    async def logfile_days(self, request: Any) -> bytes:
        account = await self._account(request)
        return _json(request, [logfiles.day_text(d) for d in await self.storage.event_days(account)])

    @app.route("/v1/logfiles/<item>", methods=["GET"])
    @api
    async def logfile(self, request: Any, item: str) -> bytes:
        return await self._logfile(request, item, "csv")

    @app.route("/v1/logfiles/<item>/<path:form>", methods=["GET"])
    @api
    async def logfile_as(self, request: Any, item: str, form: str) -> bytes:
        forms = {"header": "header", "json": "json", "xml": "xml", "csv": "csv", "csv/header": "header"}
        if form not in forms:
            raise NotFound()
        return await self._logfile(request, item, forms[form])

    async def _logfile(self, request: Any, item: str, form: str) -> bytes:
        account = await self._account(request)
        day = logfiles.parse_day(item)
        if day is not None and form == "csv":
            present = {logfiles.EVENT_LOG[t] for t in await self.storage.event_types_on(account, day)
                       if t in logfiles.EVENT_LOG}
            return _json(request, [f"{name}.{item}.log" for name in sorted(present)])
        match = logfiles.FILE_NAME.fullmatch(item)
        if not match or match.group(1) not in logfiles.COLUMNS or logfiles.parse_day(match.group(2)) is None:
            raise NotFound()
        name, day = match.group(1), logfiles.parse_day(match.group(2))
        events = await self.storage.events_on(account, day, logfiles.LOG_EVENTS[name])
        content, content_type = logfiles.render(name, events, form)
        request.setHeader(b"content-type", content_type.encode())
        return content

    # -- the message archive ---------------------------------------------------------

    async def _archived(self, request: Any, message_id: str) -> tuple[Any, StoredMessage]:
        account = await self._account(request)
        entry = await self.storage.recipient(message_id, account_id=account)
        return entry, await self.storage.message_content(message_id)

    @app.route("/v1/recipient/<message_id>", methods=["GET"])
    @api
    async def recipient(self, request: Any, message_id: str) -> bytes:
        entry, _ = await self._archived(request, message_id)
        return _text(request, entry.address)

    @app.route("/v1/envelope/<message_id>", methods=["GET"])
    @api
    async def envelope(self, request: Any, message_id: str) -> bytes:
        _, content = await self._archived(request, message_id)
        return _text(request, content.envelope.sender or "")

    @app.route("/v1/headers/<message_id>", methods=["GET"])
    @app.route("/v1/header/<message_id>", methods=["GET"])
    @api
    async def headers(self, request: Any, message_id: str) -> bytes:
        _, content = await self._archived(request, message_id)
        return _text(request, archive.headers(content.mime))

    @app.route("/v1/text/<message_id>", methods=["GET"])
    @api
    async def text(self, request: Any, message_id: str) -> bytes:
        return await self._body_part(request, message_id, "plain")

    @app.route("/v1/html/<message_id>", methods=["GET"])
    @api
    async def html(self, request: Any, message_id: str) -> bytes:
        return await self._body_part(request, message_id, "html")

    async def _body_part(self, request: Any, message_id: str, subtype: str) -> bytes:
        _, content = await self._archived(request, message_id)
        part = await self._in_thread(archive.body, content.mime, subtype)
        if part is None:
            return _error(request, 404, f"the message has no text/{subtype} part")
        return _text(request, part)

    @app.route("/v1/attachments/<message_id>", methods=["GET"])
    @app.route("/v1/embeds/<message_id>", methods=["GET"])
    @api
    async def part_list(self, request: Any, message_id: str) -> bytes:
        _, content = await self._archived(request, message_id)
        parts = await self._parts(request, content.mime)
        return _json(request, [{"name": p.name, "rank": p.rank, "type": p.type, "size": p.size}
                               for p in parts])

    @app.route("/v1/attachments/<message_id>/<path:item>", methods=["GET"])
    @app.route("/v1/embeds/<message_id>/<path:item>", methods=["GET"])
    @api
    async def part(self, request: Any, message_id: str, item: str) -> bytes:
        _, content = await self._archived(request, message_id)
        found = archive.pick(await self._parts(request, content.mime), item)
        if found is None:
            raise NotFound()
        request.setHeader(b"content-type", found.type.encode("ascii", "replace"))
        quoted = json.dumps(found.name.encode("ascii", "replace").decode())
        request.setHeader(b"content-disposition", f"attachment; filename={quoted}".encode())
        return found.content

    async def _parts(self, request: Any, mime: bytes) -> list[archive.Part]:
        embeds = request.path.startswith(b"/v1/embeds/")
        return await self._in_thread(archive.embeds if embeds else archive.attachments, mime)

    # -- documents without a token ---------------------------------------------------

    @app.route("/v1/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> bytes:
        return _json(request, document(self.config.public_url))

    @app.route("/.well-known/autoconfig/mail/config-v1.1.xml", methods=["GET"])
    @app.route("/mail/config-v1.1.xml", methods=["GET"])
    def autoconfig(self, request: Any) -> bytes:
        address = _query(request, "emailaddress") or ""
        domain = address.rpartition("@")[2] if "@" in address else ""
        starttls, implicit = self.smtp_ports
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        incoming = [incoming_server(url) for url in self.config.http.autoconfig_incoming]
        return autoconfig.config_xml(self.config.hostname, domain, implicit, starttls, incoming)

    @app.route("/metrics", methods=["GET"])
    @api
    async def metrics_page(self, request: Any) -> bytes:
        if not self._may_see_metrics(request):
            return _error(request, 403, "metrics are for localhost, or for the metrics token")
        gauges: list[tuple[str, dict[str, str], float]] = [
            ("smtpeter_queue_depth", {}, await self.storage.queue_depth())]
        for key, stats in sorted(self.stats().items()):
            gauges.append(("smtpeter_destination_connections", {"destination": key}, stats["sessions"]))
            gauges.append(("smtpeter_destination_queued", {"destination": key}, stats["queued"]))
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return render(self.metrics.counters, gauges).encode()

    def _may_see_metrics(self, request: Any) -> bool:
        token = self.config.http.metrics_token
        header = _header(request, b"authorization")
        if token and header.lower().startswith("bearer ") and credentials.equal(header[7:].strip(), token):
            return True
        if request.getHeader(b"x-forwarded-for") or request.getHeader(b"forwarded"):
            return False  # a proxy on this host passing on someone else's request
        host = getattr(request.getClientAddress(), "host", "")
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    # -- everything else ----------------------------------------------------------------

    @app.handle_errors(HTTPException)
    def routing_error(self, request: Any, failure: Any) -> bytes:
        """Routing's own answers (no such path, wrong method, ...) as JSON errors too."""
        error = failure.value
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"allow", ", ".join(error.valid_methods).encode())
        messages = {404: "Not found", 405: "Method not allowed"}
        return _error(request, error.code or 400, messages.get(error.code, error.name))


def _body_size(request: Any) -> int:
    """Bytes in the request's body (Twisted keeps a body over 100 KB in a temporary file)."""
    size = request.content.seek(0, os.SEEK_END)
    request.content.seek(0)
    return size


def _add_months(timestamp: float, months: int) -> float:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day).timestamp()

