"""The REST API (SMTPeter v1 compatible), Thunderbird autoconfig and /metrics as one Twisted site.

``API`` is what every route shares: the service's storage, submission and configuration, and
authentication. Each route group is a module of its own that registers on the shared Klein app
(routing.py); importing it here is what wires it in. Every /v1 call is scoped to the account of
its token: another account's message ids answer 404, exactly like ids that do not exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import provider

from smtpeter import credentials
from smtpeter.config import Config
from smtpeter.dashboard import account_pages as dashboard_account_pages  # noqa: F401 - and these
from smtpeter.dashboard import pages as dashboard_pages  # noqa: F401 - registers the dashboard's routes
from smtpeter.delivery.dispatcher import Dispatcher
from smtpeter.domains.registry import SenderDomains
from smtpeter.events.bots import BotRules
from smtpeter.events.hits import HitLog
from smtpeter.events.metrics import Metrics

# The route modules: importing one registers its routes on routing.app.
from smtpeter.ingress.http import archive, documents, domains, events, logfiles, routing, send  # noqa: F401
from smtpeter.ingress.http import dmarc as dmarc_routes  # noqa: F401
from smtpeter.ingress.http import metrics as metrics_routes  # noqa: F401
from smtpeter.ingress.http import suppressions as suppression_routes  # noqa: F401
from smtpeter.ingress.http import webhooks as webhook_routes  # noqa: F401
from smtpeter.ingress.http.budget import ByteBudget
from smtpeter.ingress.http.clicks import HitRecorder, Redirector, TrackingChannel, TrackingResource
from smtpeter.ingress.http.fields import BadRequest, decode_body
from smtpeter.ingress.http.images import Hosting
from smtpeter.ingress.http.routing import LARGE_BODY, Unauthorized, body_size, header, query
from smtpeter.ingress.http.unsubscribe import OneClickPages
from smtpeter.ingress.smtp.limits import AuthThrottle
from smtpeter.ingress.submission import Submission
from smtpeter.links import LinkSigner, signing_keys
from smtpeter.storage import Storage
from smtpeter.suppressions.registry import SuppressionList
from smtpeter.webhooks.registry import WebhookRegistry

_TOKEN_CACHE_SECONDS = 10.0
LARGE_BODY_BUDGET = 64 * 1024 * 1024  # of large bodies in work at once (ByteBudget)


class API:
    app = routing.app

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
        # Tracking links: ``links`` verifies them, ``hits.open(request, link)`` and
        # ``hits.click(...)`` record what was followed (clicks.py; ``hit_log`` writes them).
        self.links = LinkSigner(signing_keys(config.tracking.keys, config.data_path))
        rules = BotRules(config.tracking.bot_user_agents, config.tracking.bot_seconds)
        self.hit_log = HitLog(storage, metrics, clock, rules)
        self.hits = HitRecorder(self.hit_log, clock, config.public_url)
        self.redirector = Redirector(self.links, self.hits, config.public_url)
        # Failed dashboard log-ins, limited as SMTP AUTH is (per client address and per login).
        self.dashboard_throttle = AuthThrottle(clock)
        # The image proxy, hosted images and the web version (images.py).
        self.hosting = Hosting(self)
        # Sender domains, their DNS and keys (smtpeter/domains/registry.py; set by the service).
        self.domains: SenderDomains = None  # type: ignore[assignment]
        # Webhooks (smtpeter/webhooks/registry.py; set by the service).
        self.webhooks: WebhookRegistry = None  # type: ignore[assignment]
        # The suppression list (smtpeter/suppressions/registry.py; set by the service).
        self.suppressions: SuppressionList = None  # type: ignore[assignment]
        # Delivery's destinations, for the operator's pause, resume and retry (set by the service).
        self.delivery: Dispatcher | None = None
        # One-click unsubscribe URLs (unsubscribe.py).
        self.oneclick = OneClickPages(self)

    def site(self) -> Site:
        access_log = self.config.http.access_log or str(self.config.data_path / "http-access.log")
        site = APISite(self.app.resource(), send.SendResource(self), self.hosting, self.oneclick,
                       logPath=access_log)
        site.displayTracebacks = False
        LimitedRequest.max_body = self.config.http.max_body_size
        site.requestFactory = LimitedRequest
        site.track(self.redirector)
        return site

    async def in_thread(self, work: Callable[..., Any], *args: Any) -> Any:
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
        offered = header(request, b"authorization")
        if offered.lower().startswith("bearer "):
            return offered[7:].strip()
        return query(request, "access_token") or None

    async def authenticated_body(self, request: Any) -> tuple[str, dict[str, Any]]:
        """The account, then the body: a token in the header or URL is checked before a
        byte of the body is parsed; only without one may the body carry it."""
        if self._offered_token(request) is not None:
            account = await self.account(request)
            return account, await self._body(request)
        body = await self._body(request)
        return await self.account(request, body), body

    async def account(self, request: Any, body: dict[str, Any] | None = None) -> str:
        """The account of the request's token; Unauthorized without a valid one."""
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

    def forget_tokens(self) -> None:
        """A token was revoked here: check every token again on its next use."""
        self._tokens.clear()

    async def _body(self, request: Any) -> dict[str, Any]:
        if getattr(request, "too_big", False):
            raise BadRequest(f"request body larger than {self.config.http.max_body_size} bytes", 413)
        content_type = header(request, b"content-type").strip()
        if body_size(request) < LARGE_BODY:
            return decode_body(content_type, request.content)
        return await self.in_thread(decode_body, content_type, request.content)  # not on the reactor


class LimitedRequest(Request):
    """A request whose body stops being kept past ``max_body`` bytes (the handler answers 413)."""

    max_body = 64 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # We read bodies ourselves (fields.decode_body); Twisted's own form parsing
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


_TOKEN_IN_LOG = re.compile(r"(access_token=)[^&\s\"]*")


@provider(IAccessLogFormatter)
def _access_log_line(timestamp: str, request: Any) -> str:
    """Combined log format, with tokens in URLs (and referrers) blanked out."""
    return _TOKEN_IN_LOG.sub(r"\1-", combinedLogFormatter(timestamp, request))


class APISite(Site):
    _redirector: Redirector | None = None
    _tracking: Resource | None = None

    def __init__(self, resource: Any, send: Resource, hosting: Hosting, oneclick: OneClickPages,
                 **kwargs: Any) -> None:
        super().__init__(resource, logFormatter=_access_log_line, **kwargs)
        self._send = send
        self._hosting = hosting
        self._oneclick = oneclick

    def _openLogFile(self, path: str | bytes) -> Any:
        # Client addresses and paths with message ids: for the operator only.
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", 1, newline="\n")

    def track(self, redirector: Redirector) -> None:
        """Answer the redirector and the pixel (clicks.py): on a connection's first requests before
        Twisted's machinery (TrackingChannel), after them past Klein (as /v1/send)."""
        self._redirector = redirector
        self._tracking = TrackingResource(redirector)
        self.protocol = lambda: TrackingChannel(redirector)

    def log(self, request: Any) -> None:
        if self._redirector is None or not self._redirector.ours(request.path):
            super().log(request)  # hits on tracking links are events (clicks, opens), not log lines

    def getResourceFor(self, request: Any) -> Any:
        if self._redirector is not None and self._redirector.ours(request.path):
            request.site = self
            request.sitepath = request.prepath[:]
            return self._tracking
        # /v1/send's fast path (send.SendResource): past Klein's dispatch.
        if request.path == b"/v1/send":
            request.site = self
            request.sitepath = request.prepath[:]
            return self._send
        # One-click unsubscribe URLs, on http.public_url's path or a tracking host (unsubscribe.py).
        if self._oneclick.token(request.path) is not None:
            request.site = self
            request.sitepath = request.prepath[:]
            return self._oneclick.resource
        # Images and web versions read their raw request target (images.py).
        if self._hosting.handles(request.path):
            request.site = self
            request.sitepath = request.prepath[:]
            return self._hosting.resource
        return super().getResourceFor(request)
