"""The REST API (SMTPeter v1 compatible), Thunderbird autoconfig and /metrics, on Klein.

Every /v1 call is scoped to the account of its token: another account's
message ids answer 404, exactly like ids that do not exist. Errors are JSON,
``{"error": {"message": ...}}``, with the HTTP status that fits.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from smtpeter import credentials
from smtpeter.config import Config
from smtpeter.events.metrics import Metrics, render
from smtpeter.ingress.http import archive, autoconfig, logfiles
from smtpeter.ingress.http.compose import compose
from smtpeter.ingress.http.openapi import document
from smtpeter.ingress.http.request import BadRequest, decode_body, parse_send
from smtpeter.ingress.submission import Refused, Sender, Submission
from smtpeter.storage import NotFound, Storage, StorageError, StorageUnavailable
from smtpeter.storage.models import NewRecipient

log = Logger()

_TOKEN_CACHE_SECONDS = 10.0
# SMTPeter's documented defaults for /v1/send (rest-send-advanced.md).
API_DEFAULTS: dict[str, Any] = {"trackclicks": True, "trackopens": True, "trackbounces": True,
                                "inlinecss": False, "preventscam": False}


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
            self.too_big = True
            return
        super().handleContentChunk(data)


def _header(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


def _json(request: Any, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, ensure_ascii=False).encode()


def _error(request: Any, status: int, message: str) -> bytes:
    return _json(request, {"error": {"message": message}}, status)


def _text(request: Any, value: str, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    request.setHeader(b"content-type", content_type)
    return value.encode("utf-8")


def api(handler: Callable) -> Callable:
    """Turn our exceptions into JSON errors with the right status; nothing else escapes."""

    @functools.wraps(handler)
    async def wrapped(self: API, request: Any, *args: Any, **kwargs: Any) -> bytes:
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
        except StorageError as exc:
            return _error(request, 400, f"Refused by storage: {exc}")
        except Exception:
            log.failure("API request {uri} failed", uri=request.uri)
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

        defer.Deferred.fromCoroutine(self.api.send(request)).addCallback(respond).addErrback(
            lambda f: log.failure("POST /v1/send failed", f))
        return NOT_DONE_YET


class APISite(Site):
    def __init__(self, resource: Any, send: Resource, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self._send = send

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

    def site(self) -> Site:
        access_log = self.config.http.access_log or str(self.config.data_path / "http-access.log")
        site = APISite(self.app.resource(), _SendResource(self), logPath=access_log)
        site.displayTracebacks = False
        LimitedRequest.max_body = self.config.http.max_body_size
        site.requestFactory = LimitedRequest
        return site

    # -- authentication --------------------------------------------------------------

    async def _account(self, request: Any, body: dict[str, Any] | None = None) -> str:
        token = None
        header = _header(request, b"authorization")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif request.args.get(b"access_token"):
            token = request.args[b"access_token"][0].decode("utf-8", "replace")
        elif body and isinstance(body.get("access_token"), str):
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
        return decode_body(content_type, request.content.read())

    # -- sending -------------------------------------------------------------------------

    @app.route("/v1/send", methods=["POST"])
    @api
    async def send(self, request: Any) -> bytes:
        body = await self._body(request)
        account = await self._account(request, body)
        send = parse_send(body, self.config.http.max_recipients, self.clock.seconds())
        if send.mime is not None:
            data = _crlf(send.mime)
            end = data.find(b"\r\n\r\n")
            # Raw UTF-8 in the header (RFC 6532) can only travel with SMTPUTF8.
            smtputf8 = not (data if end < 0 else data[:end]).isascii()
        else:
            data, smtputf8 = compose(send.fields)
        smtputf8 = smtputf8 or any(not r.isascii() for r in [*send.recipients, send.envelope or ""])
        if len(data) > self.config.smtp.max_message_size:
            raise BadRequest(f"message larger than {self.config.smtp.max_message_size} bytes", 413)
        ids = await self.submission.submit(
            Sender(account, dict(API_DEFAULTS)), "api", send.envelope,
            [NewRecipient(r, send.dsn.orcpt if len(send.recipients) == 1 else None, send.dsn.notify)
             for r in send.recipients],
            data, options=send.options, tags=send.tags, expires=send.expires, smtputf8=smtputf8,
            dsn_ret=send.dsn.ret, dsn_envid=send.dsn.envid,
        )
        return _json(request, dict(zip(ids, send.recipients, strict=True)))

    @app.route("/v1/resend", methods=["POST"])
    @api
    async def resend(self, request: Any) -> bytes:
        body = await self._body(request)
        account = await self._account(request, body)
        message_id = body.get("message")
        if not isinstance(message_id, str) or not message_id:
            raise BadRequest("'message' (the id of an earlier message) is required")
        entry = await self.storage.recipient(message_id, account_id=account)
        content = await self.storage.message_content(message_id)
        ids = await self.submission.resubmit(account, content, entry.address)
        return _json(request, {ids[0]: entry.address})

    # -- events and log files --------------------------------------------------------

    def _window(self, request: Any, anchor: float | None = None) -> tuple[float, float]:
        """SMTPeter's rules: a month at most, from start, up to end, or the last month."""
        start = self._date_arg(request, b"start")
        end = self._date_arg(request, b"end")
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
    def _date_arg(request: Any, name: bytes) -> float | None:
        values = request.args.get(name)
        if not values:
            return None
        text = values[0].decode("utf-8", "replace")
        day = logfiles.parse_day(text)
        if day is None:
            raise BadRequest(f"'{name.decode()}' must be a date, yyyy-mm-dd")
        return float(day * logfiles.DAY)

    def _tag_filter(self, request: Any) -> set[str]:
        values = request.args.get(b"tags")
        return set(values[0].decode("utf-8", "replace").split(";")) - {""} if values else set()

    def _events_reply(self, request: Any, events: list, tags: set[str] = frozenset()) -> bytes:
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
        events = await self.storage.account_events(account, since, until, recipient=address.lower())
        return self._events_reply(request, events, self._tag_filter(request))

    @app.route("/v1/events/tags/<path:tags>", methods=["GET"])
    @api
    async def events_by_tags(self, request: Any, tags: str) -> bytes:
        account = await self._account(request)
        wanted = {t for t in tags.replace("/", ";").split(";") if t} | self._tag_filter(request)
        if not wanted:
            raise BadRequest("name at least one tag")
        since, until = self._window(request)
        return self._events_reply(request, await self.storage.account_events(account, since, until), wanted)

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

    async def _archived(self, request: Any, message_id: str) -> tuple[Any, dict[str, Any]]:
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
        return _text(request, content["envelope"] or "")

    @app.route("/v1/headers/<message_id>", methods=["GET"])
    @app.route("/v1/header/<message_id>", methods=["GET"])
    @api
    async def headers(self, request: Any, message_id: str) -> bytes:
        _, content = await self._archived(request, message_id)
        return _text(request, archive.headers(content["mime"]))

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
        part = archive.body(content["mime"], subtype)
        if part is None:
            return _error(request, 404, f"the message has no text/{subtype} part")
        return _text(request, part)

    @app.route("/v1/attachments/<message_id>", methods=["GET"])
    @app.route("/v1/embeds/<message_id>", methods=["GET"])
    @api
    async def part_list(self, request: Any, message_id: str) -> bytes:
        _, content = await self._archived(request, message_id)
        parts = self._parts(request, content["mime"])
        return _json(request, [{"name": p.name, "rank": p.rank, "type": p.type, "size": p.size}
                               for p in parts])

    @app.route("/v1/attachments/<message_id>/<path:item>", methods=["GET"])
    @app.route("/v1/embeds/<message_id>/<path:item>", methods=["GET"])
    @api
    async def part(self, request: Any, message_id: str, item: str) -> bytes:
        _, content = await self._archived(request, message_id)
        found = archive.pick(self._parts(request, content["mime"]), item)
        if found is None:
            raise NotFound()
        request.setHeader(b"content-type", found.type.encode("ascii", "replace"))
        quoted = json.dumps(found.name.encode("ascii", "replace").decode())
        request.setHeader(b"content-disposition", f"attachment; filename={quoted}".encode())
        return found.content

    @staticmethod
    def _parts(request: Any, mime: bytes) -> list[archive.Part]:
        return archive.embeds(mime) if request.path.startswith(b"/v1/embeds/") else archive.attachments(mime)

    # -- documents without a token ---------------------------------------------------

    @app.route("/v1/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> bytes:
        return _json(request, document(self.config.public_url))

    @app.route("/.well-known/autoconfig/mail/config-v1.1.xml", methods=["GET"])
    @app.route("/mail/config-v1.1.xml", methods=["GET"])
    def autoconfig(self, request: Any) -> bytes:
        address = (request.args.get(b"emailaddress") or [b""])[0].decode("utf-8", "replace")
        domain = address.rpartition("@")[2] if "@" in address else ""
        starttls, implicit = self.smtp_ports
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return autoconfig.config_xml(self.config.hostname, domain, implicit, starttls)

    @app.route("/metrics", methods=["GET"])
    @api
    async def metrics_page(self, request: Any) -> bytes:
        if not self._may_see_metrics(request):
            return _error(request, 403, "metrics are for localhost, or for the metrics token")
        counts = await self.storage.queue_counts()
        gauges = [("smtpeter_queue_depth", {"state": state}, counts.get(state, 0))
                  for state in ("queued", "delivered", "failed", "expired")]
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
        host = getattr(request.getClientAddress(), "host", "")
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    # -- everything else ----------------------------------------------------------------

    @app.handle_errors(RouteNotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return _error(request, 404, "Not found")

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: Any, failure: Any) -> bytes:
        return _error(request, 405, "Method not allowed")


def _crlf(data: bytes) -> bytes:
    """Line ends as they must be stored: CRLF everywhere (JSON clients often send LF)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _add_months(timestamp: float, months: int) -> float:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day).timestamp()

