"""Webhooks at work: what the REST API does with an account's hooks, and the whole put together
for the service (``WebhookService.for_config``).

A hook is made ``pending`` with a new secret (shown once, in the answer that makes it, and again
only when it is rotated) and a token for its ownership file; right away, and on every
``POST /v1/webhook/ID/verify``, its owner's control of the URL is checked (``ownership.py``).
Proven, it is ``active`` and gets the events from then on. Secrets are sealed at rest with the
key that seals DKIM keys (``smtpeter.domains.sealing``), bound to their hook.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpeter import dns
from smtpeter.config import Config
from smtpeter.domains.sealing import Sealer, encryption_key
from smtpeter.ids import new_id
from smtpeter.storage import Storage
from smtpeter.storage.webhooks import ACTIVE, PENDING, NewWebhookCall, StoredWebhook, WebhookAttempt
from smtpeter.webhooks.client import CallError, WebhookClient, checked_url
from smtpeter.webhooks.model import TYPES, body_text, hook_type, test_payload
from smtpeter.webhooks.ownership import new_token, prove
from smtpeter.webhooks.sender import SenderSettings, WebhookSender
from smtpeter.webhooks.signing import new_secret

log = Logger()

# After a rotation the old secret signs too for this long, so receivers can switch without a gap.
OLD_SECRET_SECONDS = 86400.0
MAX_HOOKS = 100  # per account
CHECKS = 8  # ownership checks at once that ``create`` starts (each may wait for a timeout)


class WebhookError(ValueError):
    """A hook that cannot be made as asked; the text says why."""


class WebhookRegistry:
    def __init__(self, storage: Storage, sealer: Sealer, client: WebhookClient, clock: IReactorTime,
                 wall: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.sealer = sealer
        self.client = client
        self.clock = clock
        self.wall = wall
        self._checks: set[defer.Deferred] = set()  # ownership checks started by ``create``
        self._check_slots = defer.DeferredSemaphore(CHECKS)
        # Called when calls were made here (the service wakes its sender with it).
        self.calls_made: Callable[[], None] = lambda: None

    # -- secrets ---------------------------------------------------------------------------------

    def _seal(self, hook_id: str, secret: str) -> bytes:
        return self.sealer.seal(secret.encode("ascii"), b"webhook:" + hook_id.encode("ascii"))

    def signing_secrets(self, hook: StoredWebhook) -> list[str]:
        """The secrets that sign a call to ``hook``: its own, and the one before while that still signs."""
        context = b"webhook:" + hook.id.encode("ascii")
        found = [self.sealer.open(hook.sealed_secret, context).decode("ascii")]
        if hook.sealed_old_secret is not None and (hook.old_secret_until or 0) > self.clock.seconds():
            found.append(self.sealer.open(hook.sealed_old_secret, context).decode("ascii"))
        return found

    # -- hooks -----------------------------------------------------------------------------------

    async def create(self, account_id: str, kind: str, url: str) -> tuple[StoredWebhook, str]:
        """A new pending hook of ``kind`` on ``url`` and its secret; its ownership is checked at once,
        in the background (``verify`` says how that went)."""
        hook_kind = hook_type(kind)
        if hook_kind is None:
            raise WebhookError(f"type must be one of {', '.join(TYPES)}, not {kind[:40]!r}")
        try:
            url = checked_url(url)
        except CallError as exc:
            raise WebhookError(f"url: {exc}") from None
        if len(await self.storage.webhooks(account_id)) >= MAX_HOOKS:
            raise WebhookError(f"an account has at most {MAX_HOOKS} webhooks")
        hook_id, secret, now = new_id(), new_secret(), self.clock.seconds()
        hook = StoredWebhook(hook_id, account_id, hook_kind, url, PENDING, None, new_token(),
                             "ownership not checked yet", self._seal(hook_id, secret), None, None, None,
                             now, now)
        await self.storage.add_webhook(hook)
        check = self._check_slots.run(lambda: defer.Deferred.fromCoroutine(self._check(hook)))
        self._checks.add(check)
        check.addErrback(lambda failure: failure.check(defer.CancelledError) or log.failure(
            "webhooks: checking webhook {hook} failed", failure, hook=hook_id))
        check.addBoth(lambda _: self._checks.discard(check))
        return hook, secret

    async def verify(self, account_id: str, hook_id: str) -> StoredWebhook:
        """Check a pending hook's ownership now; the hook as it is then (others as they are)."""
        hook = await self.storage.webhook(account_id, hook_id)
        if hook.state != PENDING:
            return hook
        await self._check(hook)
        return await self.storage.webhook(account_id, hook_id)

    async def _check(self, hook: StoredWebhook) -> None:
        proof = await prove(self.client, hook.id, hook.url, hook.token, self.signing_secrets(hook), self.wall)
        if proof.method is not None:
            await self.storage.webhook_proven(hook.id, proof.method, self.clock.seconds())
        else:
            await self.storage.webhook_unproven(hook.id, proof.problem, self.clock.seconds())

    async def enable(self, account_id: str, hook_id: str) -> StoredWebhook:
        return await self.storage.enable_webhook(account_id, hook_id, self.clock.seconds())

    async def send_test(self, account_id: str, hook_id: str) -> str:
        """Make a call of a test event to an active hook (signed, sent and recorded as the others
        are); its call id. WebhookError for a hook that is not active: only those get calls."""
        hook = await self.storage.webhook(account_id, hook_id)
        if hook.state != ACTIVE:
            raise WebhookError(f"the hook is {hook.state}: only an active hook gets calls")
        now = self.clock.seconds()
        # No event behind it: a negative event id, never a real one's, and a new one each time (a
        # hook gets one call per event id).
        call = NewWebhookCall("msg_" + new_id(), hook.id, -1 - secrets.randbits(62), hook.type,
                              body_text(test_payload(hook.type, account_id, self.wall())))
        if not await self.storage.add_webhook_calls([call], now):
            raise WebhookError("the hook is not active any more")
        self.calls_made()
        return call.id

    async def rotate_secret(self, account_id: str, hook_id: str) -> tuple[StoredWebhook, str]:
        """A new secret for the hook; the old one signs too for OLD_SECRET_SECONDS."""
        await self.storage.webhook(account_id, hook_id)  # NotFound before anything is made
        secret, now = new_secret(), self.clock.seconds()
        hook = await self.storage.rotate_webhook_secret(account_id, hook_id, self._seal(hook_id, secret),
                                                        now + OLD_SECRET_SECONDS, now)
        return hook, secret

    async def delete(self, account_id: str, hook_id: str) -> None:
        await self.storage.delete_webhook(account_id, hook_id)

    async def get(self, account_id: str, hook_id: str) -> StoredWebhook:
        return await self.storage.webhook(account_id, hook_id)

    async def list(self, account_id: str) -> list[StoredWebhook]:
        return await self.storage.webhooks(account_id)

    async def calls(self, account_id: str, hook_id: str, limit: int) -> list[WebhookAttempt]:
        return await self.storage.webhook_attempts(account_id, hook_id, limit)

    async def stop(self) -> None:
        for check in list(self._checks):
            check.cancel()


class WebhookService:
    """The registry and the sender, as the service runs them."""

    def __init__(self, registry: WebhookRegistry, sender: WebhookSender) -> None:
        self.registry = registry
        self.sender = sender
        registry.calls_made = sender.wake

    @classmethod
    def for_config(cls, storage: Storage, config: Config, reactor: Any, clock: Any = None) -> WebhookService:
        """As the configuration has it: ``[webhooks]``, the resolver on ``dns.nameservers``, secrets
        sealed with the key of ``[domains] encryption_key`` (ConfigError if it cannot be read)."""
        clock = clock or reactor
        settings = config.webhooks
        nameservers = [dns.parse_nameserver(n) for n in config.dns.nameservers] or None
        resolver = dns.Resolver(reactor, nameservers, timeout=config.dns.timeout)
        client = WebhookClient(reactor, resolver, settings.networks(), settings.timeout)
        registry = WebhookRegistry(storage, Sealer(encryption_key(config)), client, clock)
        node = config.delivery.node or f"{config.hostname}/{socket.gethostname()}"
        sender = WebhookSender(storage, client, registry.signing_secrets, clock, SenderSettings(
            tuple(settings.retry_schedule), settings.timeout, settings.max_concurrency_per_endpoint, node))
        return cls(registry, sender)

    async def start(self) -> None:
        await self.sender.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self.registry.stop()
        await self.sender.stop(grace)
