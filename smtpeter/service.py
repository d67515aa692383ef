"""Wiring: one reactor, storage first, then every configured listener."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from smtpeter import dns, tls
from smtpeter.bounces import classify
from smtpeter.bounces.processor import InboundProcessor
from smtpeter.config import Config, ConfigError
from smtpeter.delivery.destination import Context
from smtpeter.delivery.dispatcher import Dispatcher
from smtpeter.dmarc import report_handler
from smtpeter.domains.hosted_dns import HostedDNS
from smtpeter.domains.registry import SenderDomains
from smtpeter.events.metrics import Metrics
from smtpeter.events.statistics import Statistics
from smtpeter.ingress.http.redirect_workers import RedirectWorkers, worker_count
from smtpeter.ingress.http.site import API
from smtpeter.ingress.mx.policy import InboundPolicy
from smtpeter.ingress.mx.receiver import BounceDomains, InboundFactory
from smtpeter.ingress.smtp.auth import login_portal
from smtpeter.ingress.smtp.limits import AuthThrottle, ConnectionLimits
from smtpeter.ingress.smtp.server_connection import SMTPServerFactory
from smtpeter.ingress.smtp.server_session import SessionPolicy
from smtpeter.ingress.submission import Submission
from smtpeter.links import signing_keys
from smtpeter.outbound.job import StepSettings
from smtpeter.outbound.pipeline import Pipeline
from smtpeter.outbound.workers import Workers, default_worker_count
from smtpeter.scheduler.scheduler import Scheduler
from smtpeter.storage import NotFound, Storage, StorageError, open_storage
from smtpeter.suppressions.registry import SuppressionService
from smtpeter.verp import VerpSigner
from smtpeter.webhooks.registry import WebhookService

log = Logger()


class StartupError(Exception):
    """The service cannot start; the message says why in one line, for the operator."""


def listen(reactor: Any, description: str, factory: Any, what: str) -> defer.Deferred:
    try:
        d = serverFromString(reactor, description).listen(factory)
    except ValueError as exc:  # a malformed endpoint string
        raise StartupError(f"cannot listen on {description}: {exc}") from exc

    def listening(port: Any) -> Any:
        host = port.getHost()
        log.info("{what} listening on {host}:{port} ({description})",
                 what=what, host=host.host, port=host.port, description=description)
        return port

    def refused(failure: Any) -> Any:
        failure.trap(CannotListenError)
        error = failure.value.socketError
        reason = error.strerror.lower() if isinstance(error, OSError) and error.strerror else error
        raise StartupError(f"cannot listen on {description}: {reason}")

    return d.addCallbacks(listening, refused)


class SmtpeterService(service.Service):
    """Opens storage, then starts the listeners; stops them in reverse order."""

    def __init__(self, config: Config, reactor: Any = None, clock: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        # What "now" is for the queue (tests move it forward to see retries and expiry).
        self.clock = clock or reactor
        self.storage: Storage | None = None
        self.scheduler: Scheduler | None = None
        self.dispatcher: Dispatcher | None = None
        self.submission: Submission | None = None
        self.api: API | None = None
        self.metrics = Metrics()
        self.smtp_connections: ConnectionLimits | None = None
        self.workers: Workers | None = None
        self.domains: SenderDomains | None = None
        self.hosted_dns: HostedDNS | None = None
        self.webhooks: WebhookService | None = None  # webhooks (smtpeter/webhooks/)
        self.statistics: Statistics | None = None  # the dashboard's event counts (events/statistics.py)
        self.suppressions: SuppressionService | None = None  # smtpeter/suppressions/
        self.link_keys: tuple[bytes, ...] = ()  # tracking links' and VERP return paths' keys
        self.bounce_domains: BounceDomains | None = None  # mx.listen's (smtpeter/ingress/mx/)
        self.inbound_processor: InboundProcessor | None = None  # what mx.listen received
        self.mx_ports: list[Any] = []
        self.ports: list[Any] = []
        self.redirect_workers: RedirectWorkers | None = None
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = defer.Deferred.fromCoroutine(self._start())

        def failed(failure: Any) -> None:
            if failure.check(StartupError):
                log.critical("smtpeter could not start: {reason}", reason=failure.value)
            else:
                log.failure("smtpeter could not start", failure)
            # Whoever started us decides what a failed start means (twistd: exit non-zero).
            self.ready.errback(failure)

        d.addCallbacks(self.ready.callback, failed)

    async def _start(self) -> SmtpeterService:
        config = self.config
        try:
            config.data_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create data directory {config.data_path}: {exc.strerror}") from exc
        try:
            self.storage = await open_storage(config.storage_url, self.reactor, config.storage.pool_size,
                                              config.delivery.max_deliver_time)
        except StorageError as exc:
            raise StartupError(f"cannot open storage {config.storage_label}: {exc}") from exc
        self.storage.clock = self.clock
        try:
            cert_path, key_path = tls.certificate_files(config)
            context = tls.server_context(cert_path, key_path)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the TLS certificate and key: {exc}") from exc
        trusted_account = None
        if config.smtp.trusted_account:
            try:
                trusted_account = (await self.storage.account(config.smtp.trusted_account)).id
            except NotFound:
                raise StartupError(
                    f"[smtp] trusted_account {config.smtp.trusted_account!r} does not exist; "
                    "create it with: smtpeter account create NAME"
                ) from None
        submission = self.submission = Submission(
            self.storage, config.hostname, self.metrics,
            allow_foreign_display_names=config.smtp.allow_foreign_display_name_addresses)
        self.suppressions = SuppressionService.for_config(self.storage, config, self.clock)
        self.domains = self._sender_domains()
        await self._start_delivery(submission, self.domains)
        policy = SessionPolicy(
            hostname=config.hostname,
            max_message_size=config.smtp.max_message_size,
            max_recipients=config.smtp.max_recipients,
            max_line_length=config.smtp.max_line_length,
            max_errors=config.smtp.max_errors,
        )
        portal = login_portal(self.storage)
        # One set of limits for every submission listener: a client is one client on any port.
        self.smtp_connections = ConnectionLimits(config.smtp.max_connections,
                                                 config.smtp.max_connections_per_client)
        auth_throttle = AuthThrottle(self.reactor, config.smtp.auth_failures_per_client,
                                     config.smtp.auth_failures_per_login, config.smtp.auth_failure_window)

        def factory(implicit_tls: bool) -> SMTPServerFactory:
            return SMTPServerFactory(
                policy, submission, portal, context, self.reactor,
                implicit_tls=implicit_tls,
                trusted_networks=config.smtp.networks(),
                trusted_account=trusted_account,
                limits=self.smtp_connections,
                auth_throttle=auth_throttle,
                timeout=config.smtp.timeout,
                data_timeout=config.smtp.data_timeout,
            )

        async def listen_tls(description: str, plain: Any, what: str) -> Any:
            if not description.startswith("ssl:"):
                plain = TLSMemoryBIOFactory(context, False, plain)
            elif "privateKey=" not in description:
                description += f":privateKey={key_path}:certKey={cert_path}"
            return await listen(self.reactor, description, plain, what)

        starttls_ports, implicit_ports = [], []
        for description in config.smtp.listen:
            port = await listen(self.reactor, description, factory(False), "SMTP submission")
            self.ports.append(port)
            starttls_ports.append(port.getHost().port)
        for description in config.smtp.listen_tls:
            port = await listen_tls(description, factory(True), "SMTP submission (implicit TLS)")
            self.ports.append(port)
            implicit_ports.append(port.getHost().port)
        self.api = API(self.storage, submission, config, self.clock, self.metrics,
                       stats=self.dispatcher.stats, smtp_ports=(starttls_ports, implicit_ports))
        self.api.domains = self.domains
        self.api.delivery = self.dispatcher
        if config.domains.hosted_zone and config.domains.dns_listen:
            keystore = self.domains.keystore
            self.hosted_dns = HostedDNS(self.domains.operator, self.storage.sender_domain,
                                        lambda domain: keystore.keys(domain=domain), self.reactor)
            for description in config.domains.dns_listen:
                try:
                    await self.hosted_dns.listen(description)
                except (CannotListenError, OSError, ValueError) as exc:
                    raise StartupError(f"cannot serve the hosted DNS zone on {description}: {exc}") from exc
        self.domains.start()
        # Webhooks: calls made from the event feed, sent apart from delivery (smtpeter/webhooks/).
        try:
            self.webhooks = WebhookService.for_config(self.storage, config, self.reactor, self.clock)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        self.api.webhooks = self.webhooks.registry
        await self.webhooks.start()
        self.statistics = Statistics(self.storage, self.clock)
        self.statistics.start()
        # The suppression list: rules over the event feed; delivery and the API read it.
        self.api.suppressions = self.suppressions.list
        self.suppressions.start()
        site = self.api.site()
        self.api.hit_log.start()
        plain = [await listen(self.reactor, description, site, "HTTP API")
                 for description in config.http.listen]
        self.ports += plain
        # Clicks and opens on the plain listeners: answered by processes of their own.
        self.redirect_workers = RedirectWorkers(
            self.reactor, worker_count(config.http.redirect_workers),
            signing_keys(config.tracking.keys, config.data_path), config.public_url, site, self.api.hit_log,
            self.clock)
        self.redirect_workers.start(plain)
        for description in config.http.listen_tls:
            self.ports.append(await listen_tls(description, site, "HTTPS API"))
        if config.mx.listen:
            await self._start_receiver(submission, context, listen_tls)
        return self

    async def _start_receiver(self, submission: Submission, context: Any, listen_tls: Any) -> None:
        """mx.listen and the processing of what it receives (smtpeter/ingress/mx/, smtpeter/bounces/)."""
        config = self.config
        verp = VerpSigner(self.link_keys)
        self.bounce_domains = BounceDomains(self.storage, self.clock)
        await self.bounce_domains.start()
        self.domains.listeners.append(self.bounce_domains.changed)
        inbound = InboundPolicy(verp, self.bounce_domains, [config.domains.dmarc_address],
                                [config.domains.mx_host, config.hostname])
        workers = self.workers
        self.inbound_processor = InboundProcessor(
            self.storage, inbound, lambda data: workers.run(classify, data), self.clock,
            owner=self.scheduler.node, reports=report_handler(self.storage),
            queued=lambda: submission.queued(), metrics=self.metrics)
        self.inbound_processor.start()
        mx = config.mx
        policy = SessionPolicy(hostname=config.hostname, max_message_size=mx.max_message_size,
                               max_recipients=mx.max_recipients, max_line_length=config.smtp.max_line_length,
                               max_errors=mx.max_errors, auth_available=False, check_recipient=inbound.check)
        limits = ConnectionLimits(mx.max_connections, mx.max_connections_per_client)
        for description in mx.listen:
            implicit = description.startswith("ssl:")
            factory = InboundFactory(policy, inbound, self.storage, self.inbound_processor.wake, context,
                                     self.reactor, implicit_tls=implicit, limits=limits, timeout=mx.timeout,
                                     data_timeout=mx.data_timeout, metrics=self.metrics)
            if implicit:
                port = await listen_tls(description, factory, "SMTP receiver (implicit TLS)")
            else:
                port = await listen(self.reactor, description, factory, "SMTP receiver")
            self.ports.append(port)
            self.mx_ports.append(port)

    def _sender_domains(self) -> SenderDomains:
        try:
            return SenderDomains.for_config(self.storage, self.config, self.reactor, self.clock)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc

    async def _start_delivery(self, submission: Submission, domains: SenderDomains) -> None:
        config = self.config
        nameservers = [dns.parse_nameserver(n) for n in config.dns.nameservers] or None
        resolver = dns.Resolver(self.reactor, nameservers, timeout=config.dns.timeout, clock=self.clock)
        workers = config.delivery.transform_workers
        self.workers = Workers(self.reactor, default_worker_count() if workers is None else workers)
        link_keys = self.link_keys = tuple(signing_keys(config.tracking.keys, config.data_path))
        pipeline = Pipeline(self.workers, StepSettings(config.public_url, link_keys),
                            authority=domains.authority)
        context = Context.for_config(config.delivery, self.reactor, self.clock, resolver,
                                     config.delivery.helo_name or config.hostname, for_peer=pipeline.for_peer)
        self.dispatcher = Dispatcher(config.delivery, context, config.hostname)
        self.scheduler = Scheduler(self.storage, self.dispatcher, config.delivery, config.hostname,
                                   self.clock, config.delivery.node or None, self.metrics, pipeline=pipeline,
                                   suppressions=self.suppressions.list)
        if config.delivery.hold:
            log.info("delivery is on hold ([delivery] hold = true): mail stays queued")
            return
        await self.scheduler.start()
        submission.queued = self.scheduler.wake

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.redirect_workers is not None:  # first: they accept on the ports, and hold hits
            yield defer.Deferred.fromCoroutine(self.redirect_workers.stop())
            self.redirect_workers = None
        for port in self.ports:
            yield port.stopListening()
        self.ports.clear()
        self.mx_ports.clear()
        if self.domains is not None:
            yield self.domains.stop()
        if self.hosted_dns is not None:
            yield defer.Deferred.fromCoroutine(self.hosted_dns.stop())
            self.hosted_dns = None
        if self.bounce_domains is not None:
            self.bounce_domains.stop()
            self.bounce_domains = None
        if self.inbound_processor is not None:  # the batch in hand is committed (or left due)
            yield defer.Deferred.fromCoroutine(self.inbound_processor.stop())
            self.inbound_processor = None
        if self.suppressions is not None:
            yield defer.Deferred.fromCoroutine(self.suppressions.stop())
            self.suppressions = None
        if self.webhooks is not None:  # calls in flight get a moment to finish and be recorded
            yield defer.Deferred.fromCoroutine(self.webhooks.stop())
            self.webhooks = None
        if self.statistics is not None:
            yield defer.Deferred.fromCoroutine(self.statistics.stop())
            self.statistics = None
        if self.api is not None:  # the clicks and opens taken so far are written before storage closes
            yield defer.Deferred.fromCoroutine(self.api.hit_log.stop())
        if self.scheduler is not None:
            # No new work; idle sessions QUIT and queued work is handed back. Work in
            # progress gets a grace period, then is cut: it keeps its lease, and the
            # restart makes it due at once.
            jobs = self.scheduler.stop()
            sessions = self.dispatcher.close()
            if not (yield _within(jobs, self.config.delivery.shutdown_grace, self.reactor)):
                self.scheduler.cancel()
                self.dispatcher.abort()
            yield _within(sessions, 5, self.reactor)
            self.scheduler = None
        if self.workers is not None:  # their processes and pipes end before we say we stopped
            yield _within(self.workers.stop(), 10, self.reactor)
            self.workers = None
        if self.storage is not None:
            yield defer.Deferred.fromCoroutine(self.storage.close())
            self.storage = None


def _within(d: defer.Deferred, seconds: float, clock: Any) -> defer.Deferred:
    """Fires True once ``d`` fires, or False after ``seconds``; never cancels ``d``."""
    result: defer.Deferred = defer.Deferred()
    timer = clock.callLater(seconds, lambda: result.called or result.callback(False))

    def done(value: Any) -> Any:
        if not result.called:
            timer.cancel()
            result.callback(True)
        return value

    d.addBoth(done)
    return result
