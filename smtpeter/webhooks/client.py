"""One HTTP request to a webhook receiver, never into our own network (SSRF).

The address checks and the pinned connection are the image proxy's (``ingress/http/image_fetch.py``):
the URL's host is resolved here (``smtpeter.dns``, so ``dns.nameservers`` applies), every address
is checked (``allowed_address``: a public unicast address, or one inside ``webhooks.allow_networks``)
and the connection goes to the checked address itself, the URL's name staying in the Host header
and TLS's SNI and certificate check: a name that resolves elsewhere a moment later (DNS rebinding)
gains nothing. Redirects are not followed (a receiver answers; it does not send us elsewhere), and
a request with its answer takes at most ``timeout`` seconds.
"""

from __future__ import annotations

import email.utils
import io
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from smtpeter.dns import DNSError, Resolver

# The image proxy's SSRF rules, reused as they are: the address check, the URL's parsing (http and
# https only, no credentials, IDNA host) and the connection pinned to a checked address.
from smtpeter.ingress.http.image_fetch import (
    CappedBody,
    FetchError,
    Network,
    PinnedAddress,
    allowed_address,
    parse_target,
)

USER_AGENT = b"smtpeter-webhooks/1"
MAX_URL_LENGTH = 2000


class CallError(Exception):
    """No answer could be had: the URL, its addresses, the connection or the time; the text says why."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # its first bytes, as many as the request asked to read
    retry_after: float | None  # seconds the receiver asked us to wait (Retry-After)


def inside(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (an IPv4-mapped IPv6 one as its IPv4 form) lies in one of ``networks``."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)


def checked_url(url: str) -> str:
    """``url`` as requests use it (IDNA host); CallError if it is no http or https URL we would call."""
    if len(url) > MAX_URL_LENGTH:
        raise CallError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if "#" in url:
        raise CallError("the URL holds a fragment")
    try:
        return parse_target(url).url.decode("ascii")
    except FetchError as exc:
        raise CallError(str(exc)) from None


def retry_after(headers: Headers, now: float) -> float | None:
    """The seconds a Retry-After header asks for (a number or an HTTP date); None without a usable one."""
    values = headers.getRawHeaders(b"retry-after")
    if not values:
        return None
    text = values[0].decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class WebhookClient:
    """Requests to receivers at public addresses, or inside ``allow_networks``."""

    def __init__(self, reactor: Any, resolver: Resolver, allow_networks: Sequence[Network], timeout: float,
                 wall: Callable[[], float] = time.time) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.allow_networks = list(allow_networks)
        self.timeout = timeout
        self.wall = wall  # for Retry-After dates, which are wall-clock times

    async def addresses(self, url: str, inside_only: bool = False) -> list[str]:
        """The addresses a request to ``url`` may go to (with ``inside_only``, only those inside
        ``allow_networks``); CallError if there are none."""
        host = parse_target(checked_url(url)).host
        try:
            found = await self.resolver.addresses(host)
        except DNSError as exc:
            raise CallError(f"cannot resolve {host}: {exc}") from None
        if inside_only:
            usable = [address for address in found if inside(address, self.allow_networks)]
            if not usable:
                raise CallError(f"{host} is no longer inside webhooks.allow_networks" if found
                                else f"{host} has no address")
            return usable
        usable = [address for address in found if allowed_address(address, self.allow_networks)]
        if not usable:
            raise CallError(f"{host} has no public address" if found else f"{host} has no address")
        return usable

    async def request(self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None = None,
                      *, inside_only: bool = False, read: int = 1024) -> Answer:
        """Send one request and read the first ``read`` bytes of the answer; CallError without one."""
        work = defer.Deferred.fromCoroutine(self._request(method, url, headers, body, inside_only, read))
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            work.cancel()

        # Not addTimeout: a cancelled request can fail as Twisted's ResponseNeverReceived, not as a
        # cancellation, and would then not read as the timeout it is.
        timer = self.reactor.callLater(self.timeout, expire)
        try:
            return await work
        except (CallError, defer.CancelledError):
            if expired:
                raise CallError(f"no answer within {self.timeout:g} s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _request(self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None,
                       inside_only: bool, read: int) -> Answer:
        target = parse_target(checked_url(url))
        sent = Headers({b"user-agent": [USER_AGENT]})
        for name, value in headers.items():
            sent.setRawHeaders(name, [value])
        problem = "no address"
        for address in await self.addresses(url, inside_only):
            pinned = PinnedAddress(self.reactor, address, self.timeout)
            agent = Agent.usingEndpointFactory(self.reactor, pinned)
            producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
            try:
                response = await agent.request(method, target.url, sent, producer)
            except (ConnectError, DNSLookupError) as exc:
                problem = f"cannot connect to {target.host} ({address}): {exc.__class__.__name__}"
                continue
            except defer.CancelledError:
                raise
            except Exception as exc:
                raise CallError(f"{target.host}: {exc.__class__.__name__}: {exc}") from None
            reader = CappedBody(read, keep_first=True)
            response.deliverBody(reader)
            try:
                first = await reader.done
            except FetchError as exc:
                raise CallError(f"the answer broke off: {exc}") from None
            return Answer(response.code, first, retry_after(response.headers, self.wall()))
        raise CallError(problem)

