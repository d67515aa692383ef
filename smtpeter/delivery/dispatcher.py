"""From a recipient domain to the destination pool that delivers its mail."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from smtpeter import dns
from smtpeter.attempt import RecipientResult
from smtpeter.config import DeliveryConfig
from smtpeter.delivery.client_session import Transaction
from smtpeter.delivery.destination import Context, Destination, HandBack
from smtpeter.delivery.shaping import profiles, shaping_for

log = Logger()


class Loop(Exception):
    """The domain's MX is this very host."""


# A destination with nothing to do is forgotten after this long.
FORGET_IDLE = 600.0


class Dispatcher:
    """Resolves domains (static route or MX) and hands transactions to destination pools."""

    def __init__(self, config: DeliveryConfig, context: Context, hostname: str = "") -> None:
        self.config = config
        self.context = context
        self.hostname = hostname.lower()
        self.destinations: dict[str, Destination] = {}
        # Called when claiming may find work again for domains held back before.
        self.on_room: Callable[[], None] = lambda: None
        self._profiles = profiles(config)
        self._domains: dict[str, set[str]] = {}  # destination key -> domains seen for it
        self._resolving: Counter[str] = Counter()  # domains whose destination is being looked up
        self._held_resolving: set[str] = set()  # of those, the ones a claim left out
        self._closing = False
        self._last_prune = 0.0

    async def deliver(self, domain: str, transaction: Transaction) -> list[RecipientResult]:
        """Deliver to ``domain``; one result per recipient. May raise HandBack."""
        if self._closing:
            raise HandBack(self.context.clock.seconds(), "shutting down")
        self._resolving[domain] += 1
        try:
            destination = await self.destination(domain)
        except dns.DNSError as exc:
            return self._dns_failure(transaction, domain, exc)
        except Loop as loop:
            return [RecipientResult(r.address, "dns", None, "5.4.6", str(loop), permanent=True)
                    for r in transaction.recipients]
        finally:
            self._resolved(domain)
        return await destination.submit(transaction)

    def _resolved(self, domain: str) -> None:
        self._resolving[domain] -= 1
        if self._resolving[domain]:
            return
        del self._resolving[domain]
        if domain in self._held_resolving:
            self._held_resolving.discard(domain)
            self.on_room()

    async def destination(self, domain: str) -> Destination:
        route = self.config.route(domain)
        if route is not None:
            host, port = route
            key = f"route:{host}:{port}"
            hosts, mx_names, implicit = [(host, port)], [host], False
        else:
            result = await self.context.resolver.mx(domain)
            mx_names = sorted(h.host for h in result.hosts)
            if self.hostname and self.hostname in mx_names:
                raise Loop(f"mail for {domain} loops back to myself ({self.hostname} is its MX)")
            # MX rollup: every domain served by the same MX hosts shares one pool.
            key = "mx:" + ",".join(mx_names)
            hosts = [(h.host, self.config.port) for h in result.hosts]
            implicit = result.implicit
        self._prune()
        self._domains.setdefault(key, set()).add(domain)
        destination = self.destinations.get(key)
        if destination is None:
            shaping = shaping_for(mx_names, self.config, self._profiles)
            destination = Destination(key, hosts, shaping, self.context, implicit_mx=implicit,
                                      on_room=lambda: self.on_room())
            self.destinations[key] = destination
            log.info("new destination {key} (profile {profile})", key=key, profile=shaping.name)
        else:
            # Keep the newest MX order (equal preferences are shuffled per lookup).
            destination.hosts = hosts
        return destination

    def _prune(self) -> None:
        """Forget destinations that have been idle a while, so memory follows the traffic."""
        now = self.context.clock.seconds()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        for key in [k for k, d in self.destinations.items() if d.idle_for > FORGET_IDLE]:
            self.destinations.pop(key).close()  # nothing runs there; this ends its timers
            self._domains.pop(key, None)

    def close(self) -> defer.Deferred:
        """End every destination's sessions (idle ones QUIT at once)."""
        self._closing = True
        return defer.DeferredList([d.close() for d in self.destinations.values()])

    def abort(self) -> None:
        for destination in self.destinations.values():
            destination.abort()

    @property
    def claim_limit(self) -> int:
        """Recipients one claim may lease (a destination that is not busy has room for them)."""
        return self.context.claim_limit

    def held_domains(self) -> list[str]:
        """Domains the scheduler leaves queued: their destination is paused or busy, or not
        known yet (its lookup is under way: a second claim could overfill it)."""
        held = [domain for key, destination in self.destinations.items()
                if destination.paused or destination.busy for domain in self._domains.get(key, ())]
        self._held_resolving.update(self._resolving)
        return list(dict.fromkeys([*held, *self._resolving]))

    @staticmethod
    def _dns_failure(transaction: Transaction, domain: str, exc: dns.DNSError) -> list[RecipientResult]:
        if isinstance(exc, dns.NullMX):
            status, text = "5.1.10", f"{domain} does not accept mail (null MX, RFC 7505)"
        elif isinstance(exc, dns.NoSuchDomain):
            status, text = "5.1.2", f"{domain}: no such domain (NXDOMAIN)"
        else:
            status, text = "4.4.3", f"DNS lookup for {domain} failed: {exc}"
        return [RecipientResult(r.address, "dns", None, status, text, permanent=not exc.temporary)
                for r in transaction.recipients]

    def stats(self) -> dict[str, Any]:
        """Each destination's figures and its domains: what /metrics exports and the operator's
        dashboard shows."""
        return {key: {**d.figures(), "domains": sorted(self._domains.get(key, ()))}
                for key, d in self.destinations.items()}

    # -- the operator's controls (the dashboard): by destination key, or a domain -----------

    async def pause(self, target: str) -> Destination:
        """Hold a destination until ``resume``: one known by its key, or the one a domain's mail
        goes to (looked up now: a queue's domain whose destination was forgotten, or never
        seen). Held in this process only: a restart, or another node, delivers."""
        destination = self.destinations.get(target)
        if destination is None:
            destination = await self.destination(target)
        destination.hold()
        return destination

    def resume(self, target: str) -> None:
        destination = self.destinations.get(target)
        if destination is not None:
            destination.resume()

    def domains_of(self, target: str) -> list[str]:
        """The domains whose mail goes to destination ``target``, or the domain ``target``."""
        if target in self.destinations:
            return sorted(self._domains.get(target, ()))
        return [target]

    def retry_now(self, target: str) -> None:
        """After the queue made ``domains_of(target)`` due: connect at once (even while resting
        after failed connections) and have the scheduler claim now."""
        destination = self.destinations.get(target)
        if destination is not None:
            destination.retry_now()
        self.on_room()
