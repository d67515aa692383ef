"""The image proxy's way to the origin: public addresses only, capped in size and time, cached.

A customer's HTML names the URLs, so a fetch must never become a request into
our own network (SSRF). The name is resolved here (``smtpeter.dns``, the
resolver delivery uses, so ``dns.nameservers`` applies) and every address is
checked: loopback, private, link-local, multicast, reserved and other
non-public addresses are refused unless they lie in ``tracking.allow_networks``.
The connection then goes to the checked address itself (the URL's name stays
in the Host header and TLS's SNI and certificate check), so a name that
resolves differently a moment later (DNS rebinding) cannot send it anywhere
else. Redirects are followed by hand, each target checked the same way.

An image is at most ``image_max_bytes`` (a larger Content-Length is refused
before the body, a longer body is cut off), one fetch with its redirects
takes at most ``image_timeout`` seconds, only ``image/*`` content types
are taken, and at most ``FETCHES`` fetches run at once (one per URL: the
loads that come meanwhile wait for it). ``ImageCache`` keeps images in memory, at most
``image_cache_bytes``, least recently used first out, as fresh as the
origin's Cache-Control or Expires says (``no-store`` and ``private`` are not
kept; a stale image with a validator is asked for again conditionally, and
served stale for a while when its origin fails); failures are remembered for
a minute, so a broken image in a mass mailing does not hammer its origin.
"""

from __future__ import annotations

import email.utils
import ipaddress
import math
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from smtpeter.dns import DNSError, Resolver

log = Logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_REDIRECTS = 5
FAILURE_SECONDS = 60.0  # how long a failed fetch is remembered
DEFAULT_FRESHNESS = 3600.0  # an image whose origin says nothing about caching
MAX_FRESHNESS = 7 * 86400.0
STALE_IF_ERROR = 86400.0  # a stale image is served this much longer while its origin fails
FETCHES = 32  # origin fetches at once (each holds up to image_max_bytes); the others wait their turn
_REDIRECTS = (301, 302, 303, 307, 308)
_IMAGE_TYPE = re.compile(r"image/[a-z0-9][a-z0-9.+-]*")
_USER_AGENT = b"smtpeter-image-proxy/1"


class FetchError(Exception):
    """The image cannot be had; the text says why."""


@dataclass(frozen=True)
class Image:
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Fetched:
    """An origin's answer: an image (``image`` None: 304 Not Modified) and its caching headers."""

    image: Image | None
    headers: Headers


def allowed_address(address: str, allowed: Sequence[Network] = ()) -> bool:
    """Whether the proxy may connect to ``address``: a public unicast address, or one in ``allowed``."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None and not allowed_address(str(ip.sixtofour)):
            return False
    if any(ip.version == network.version and ip in network for network in allowed):
        return True
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class _Target:
    url: bytes  # with the host in ASCII (IDNA)
    scheme: str
    host: str
    port: int


def parse_target(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"not a usable URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"not an http or https URL: {scheme or 'no scheme'}")
    if parts.username is not None or parts.password is not None:
        raise FetchError("the URL holds credentials")
    host = parts.hostname or ""
    if not host:
        raise FetchError("the URL names no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
        except UnicodeError:
            raise FetchError(f"not a valid host name: {host!r}") from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = parts.path or "/"
    rebuilt = urllib.parse.urlunsplit((scheme, netloc, path, parts.query, ""))
    try:
        encoded = rebuilt.encode("ascii")
    except UnicodeEncodeError:
        encoded = urllib.parse.quote(rebuilt, safe=":/?#[]@!$&'()*+,;=%~").encode("ascii")
    return _Target(encoded, scheme, host, port or (443 if scheme == "https" else 80))


@implementer(IAgentEndpointFactory)
class PinnedAddress:
    """Connections to one checked address, whatever the URL's name resolves to by then."""

    def __init__(self, reactor: Any, address: str, timeout: float) -> None:
        self.reactor, self.address, self.timeout = reactor, address, timeout

    def endpointForURI(self, uri: URI) -> Any:
        kind = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        endpoint = kind(self.reactor, self.address, uri.port, timeout=self.timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(optionsForClientTLS(uri.host.decode("ascii")), endpoint)
        return endpoint


class CappedBody(Protocol):
    """Reads a body of at most ``limit`` bytes. A longer one is refused (FetchError), or with
    ``keep_first`` its first ``limit`` bytes are the answer and the rest is not read."""

    def __init__(self, limit: int, keep_first: bool = False) -> None:
        self.limit = limit
        self.keep_first = keep_first
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            if self.keep_first:
                self.chunks.append(data)
                self.done.callback(b"".join(self.chunks)[:self.limit])
            else:
                self.done.errback(FetchError(f"the body is larger than {self.limit} bytes"))
            self._stop()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        ended = reason is None or reason.check(ResponseDone, PotentialDataLoss)
        if ended or (self.keep_first and self.chunks):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(FetchError(f"the connection broke: {reason.getErrorMessage()}"))


class _Discard(Protocol):
    """For a body nobody wants: the connection is closed at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _discard(response: Any) -> None:
    response.deliverBody(_Discard())


class Fetcher:
    """One image from its origin, by the rules above (no cache)."""

    def __init__(self, reactor: Any, resolver: Resolver, allowed: Sequence[Network], max_bytes: int,
                 timeout: float) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.allowed = list(allowed)
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def fetch(self, url: str, validators: Headers | None = None) -> Fetched:
        """The image at ``url`` (or, given ``validators``, perhaps that it has not changed);
        FetchError when it cannot be had."""
        work = defer.Deferred.fromCoroutine(self._fetch(url, validators))
        work.addTimeout(self.timeout, self.reactor)
        try:
            return await work
        except defer.TimeoutError:
            raise FetchError(f"the image took longer than {self.timeout:g} s") from None

    async def _fetch(self, url: str, validators: Headers | None) -> Fetched:
        for _ in range(MAX_REDIRECTS + 1):
            target = parse_target(url)
            response = await self._request(target, validators)
            if response.code in _REDIRECTS:
                location = response.headers.getRawHeaders(b"location")
                _discard(response)
                if not location:
                    raise FetchError(f"a redirect ({response.code}) without a Location")
                url = urllib.parse.urljoin(target.url.decode("ascii"), location[0].decode("latin-1"))
                continue
            if response.code == 304 and validators is not None:
                _discard(response)
                return Fetched(None, response.headers)
            if response.code != 200:
                _discard(response)
                raise FetchError(f"the image's server answered {response.code}")
            return Fetched(await self._body(response), response.headers)
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    async def _addresses(self, host: str) -> list[str]:
        try:
            found = await self.resolver.addresses(host)
        except DNSError as exc:
            raise FetchError(f"cannot resolve {host}: {exc}") from None
        usable = [address for address in found if allowed_address(address, self.allowed)]
        if not usable:
            raise FetchError(f"{host} has no public address" if found else f"{host} has no address")
        return usable

    async def _request(self, target: _Target, validators: Headers | None) -> Any:
        # The bytes as stored: we pass them on as they come, with the type alone.
        headers = Headers({b"user-agent": [_USER_AGENT], b"accept": [b"image/*"],
                           b"accept-encoding": [b"identity"]})
        for name, values in (validators.getAllRawHeaders() if validators is not None else ()):
            headers.setRawHeaders(name, values)
        problem = "no address"
        for address in await self._addresses(target.host):
            pinned = PinnedAddress(self.reactor, address, self.timeout)
            agent = Agent.usingEndpointFactory(self.reactor, pinned)
            try:
                return await agent.request(b"GET", target.url, headers)
            except (ConnectError, DNSLookupError) as exc:
                problem = f"cannot connect to {target.host}: {exc.__class__.__name__}"
            except defer.CancelledError:
                raise
            except Exception as exc:
                raise FetchError(f"{target.host}: {exc.__class__.__name__}") from None
        raise FetchError(problem)

    async def _body(self, response: Any) -> Image:
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
        content_type = content_type.partition(";")[0].strip().lower()
        if not _IMAGE_TYPE.fullmatch(content_type):
            _discard(response)
            raise FetchError(f"not an image: {content_type or 'no content type'}")
        if isinstance(response.length, int) and response.length > self.max_bytes:
            _discard(response)
            raise FetchError(f"the image is larger than {self.max_bytes} bytes")
        reader = CappedBody(self.max_bytes)
        response.deliverBody(reader)
        return Image(content_type, await reader.done)


# -- the cache ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    image: Image | None  # None: a failure, remembered for a while
    error: str
    fresh_until: float
    validators: Headers | None = None

    @property
    def size(self) -> int:
        return 256 + (len(self.image.data) if self.image else len(self.error))


class ImageCache:
    """Entries by key, at most ``max_bytes`` of them, the least recently used going first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: _Entry) -> None:
        self.drop(key)
        if entry.size > self.max_bytes:
            return
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            self.drop(next(iter(self._entries)))

    def drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size


def freshness(headers: Headers, now: float) -> float | None:
    """How long an answer stays fresh in a shared cache (RFC 9111); None: it must not be kept."""
    directives: dict[str, str] = {}
    for value in headers.getRawHeaders(b"cache-control") or []:
        for item in value.decode("latin-1").split(","):
            name, _, argument = item.strip().partition("=")
            directives[name.strip().lower()] = argument.strip().strip('"')
    if "no-store" in directives or "private" in directives:
        return None
    if "no-cache" in directives:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                return min(max(0.0, float(int(directives[name]))), MAX_FRESHNESS)
            except ValueError:
                return 0.0
    date = _http_date(headers, b"date") or now
    expires = _http_date(headers, b"expires")
    if headers.hasHeader(b"expires"):
        return min(max(0.0, expires - date), MAX_FRESHNESS) if expires is not None else 0.0
    modified = _http_date(headers, b"last-modified")
    if modified is not None and modified < date:
        return min((date - modified) / 10, 86400.0)  # RFC 9111 §4.2.2's heuristic
    return DEFAULT_FRESHNESS


def _http_date(headers: Headers, name: bytes) -> float | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    try:
        return email.utils.parsedate_to_datetime(values[0].decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _validators(headers: Headers) -> Headers | None:
    found = Headers()
    for theirs, ours in ((b"etag", b"if-none-match"), (b"last-modified", b"if-modified-since")):
        value = headers.getRawHeaders(theirs)
        if value:
            found.setRawHeaders(ours, value[:1])
    return found if list(found.getAllRawHeaders()) else None


class ImageProxy:
    """Images by URL: from the cache while fresh, else from the origin, one fetch per URL at a time."""

    def __init__(self, fetcher: Fetcher, cache: ImageCache, clock: Any) -> None:
        self.fetcher = fetcher
        self.cache = cache
        self.clock = clock
        self._waiting: dict[str, list[defer.Deferred[Image]]] = {}
        self._fetches = defer.DeferredSemaphore(FETCHES)

    def cached(self, key: str) -> Image | None:
        """An image kept under ``key`` (by ``keep``, or a URL's while fresh), else None."""
        entry = self.cache.get(key)
        if entry is not None and self.clock.seconds() < entry.fresh_until:
            return entry.image
        return None

    def keep(self, key: str, image: Image) -> None:
        """Keep an image that never changes (a hosted image) under a key of its own."""
        self.cache.put(key, _Entry(image, "", math.inf))

    async def image(self, url: str) -> Image:
        entry = self.cache.get(url)
        if entry is not None and self.clock.seconds() < entry.fresh_until:
            if entry.image is None:
                raise FetchError(entry.error)
            return entry.image
        waiter: defer.Deferred[Image] = defer.Deferred()
        if url in self._waiting:
            self._waiting[url].append(waiter)
        else:
            self._waiting[url] = [waiter]
            defer.Deferred.fromCoroutine(self._refresh(url, entry)).addBoth(self._landed, url)
        return await waiter

    def _landed(self, result: Image | Failure, url: str) -> None:
        for waiter in self._waiting.pop(url, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _refresh(self, url: str, stale: _Entry | None) -> Image:
        known = stale if stale is not None and stale.image is not None else None
        try:
            fetched = await self._fetches.run(defer.Deferred.fromCoroutine,
                                              self.fetcher.fetch(url, known.validators if known else None))
        except FetchError as exc:
            now = self.clock.seconds()
            if known is not None and now < known.fresh_until + STALE_IF_ERROR:
                log.info("image proxy: {url} served stale: {error}", url=url, error=exc)
                return known.image  # type: ignore[return-value]
            self.cache.put(url, _Entry(None, str(exc), now + FAILURE_SECONDS))
            raise
        now = self.clock.seconds()
        image = fetched.image if fetched.image is not None else known.image  # type: ignore[union-attr]
        lifetime = freshness(fetched.headers, now)
        if lifetime is None:
            self.cache.drop(url)
        else:
            validators = _validators(fetched.headers) if fetched.image is not None else known.validators  # type: ignore[union-attr]
            self.cache.put(url, _Entry(image, "", now + lifetime, validators))
        return image
