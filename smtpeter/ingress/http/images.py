"""The image proxy (``/i/TOKEN/...``), hosted images (``/hosted/TOKEN/NAME``) and the web version
(``/webversion/TOKEN``, webversion.py), under the path of ``http.public_url``.

The site hands these paths here before Klein's routing (``Hosting.handles``):
an image link's target must be read from the request exactly as it was
signed, percent-encodings and all, which Klein's decoded path would not keep.

* An image link (made by the tracking step, ``tracking_urls.image_url``) is
  checked (a token signed over the exact target URL, kind "image"), counted
  as an open of its recipient's message (``api.hits``, clicks.py, whatever becomes of the
  fetch),
  and answered with the image from the cache or its origin
  (image_fetch.py: public addresses only, capped, cached). A target that is
  one of our own hosted images is served from storage, never fetched.
* A hosted image is checked (kind "hosted", signed over its file name) and
  served from the memory cache, else its ``hosted_images`` row, else found in
  the stored message (and the message's images stored as rows for every later
  load on any node).

Any token that does not verify is a 404; an image we cannot get a 502.
Images go out as their declared image type with ``nosniff`` and a CSP that
lets nothing in them run (an SVG opened on its own is a document of ours).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from smtpeter import dns, hosting, tracking_urls
from smtpeter.ingress.http import webversion
from smtpeter.ingress.http.image_fetch import Fetcher, FetchError, Image, ImageCache, ImageProxy
from smtpeter.ingress.http.routing import DirectResource, error, handled
from smtpeter.links import Link, LinkSigner
from smtpeter.mime import tree
from smtpeter.storage import NotFound, StorageError
from smtpeter.storage.hosted import HostedImage

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

log = Logger()

IMAGE_CSP = b"default-src 'none'; style-src 'unsafe-inline'; sandbox"
_PATHS = (f"/{tracking_urls.IMAGE}/".encode(), hosting.HOSTED_PATH.encode(), hosting.WEBVERSION_PATH.encode())


class Hosting:
    """What the image proxy, hosted images and the web version share."""

    def __init__(self, api: API, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.api = api
        config = api.config
        self.public_url = config.public_url
        self.prefix = urllib.parse.urlsplit(self.public_url).path.rstrip("/").encode("utf-8")
        self.signer: LinkSigner = api.links
        nameservers = [dns.parse_nameserver(n) for n in config.dns.nameservers] or None
        resolver = dns.Resolver(reactor, nameservers, timeout=config.dns.timeout)
        tracking = config.tracking
        fetcher = Fetcher(reactor, resolver, tracking.networks(), tracking.image_max_bytes,
                          tracking.image_timeout)
        self.proxy = ImageProxy(fetcher, ImageCache(tracking.image_cache_bytes), api.clock)
        # The paths of ``handles``, reached from the site before Klein's routing.
        self.resource = DirectResource(api, _dispatch, (b"GET", b"HEAD"))

    def handles(self, path: bytes) -> bool:
        return path.startswith(self.prefix) and path[len(self.prefix):].startswith(_PATHS)

    def webversion_url(self, recipient_id: str) -> str:
        """The web version of a recipient's message (``{$webversion}`` in personalization)."""
        return hosting.webversion_url(self.public_url, self.signer, recipient_id)

    def hosted_url(self, message_id: str, image: hosting.Embedded) -> str:
        return hosting.hosted_url(self.public_url, self.signer, message_id, image)

    async def image(self, url: str) -> Image:
        """The image an image link names: one of our hosted images, or fetched through the proxy."""
        own = self.public_url + hosting.HOSTED_PATH
        if url.startswith(own):
            token, _, name = url[len(own):].partition("/")
            link = hosting.verify_hosted(self.signer, token, urllib.parse.unquote(name))
            if link is None:
                raise FetchError("not a hosted image of ours")
            try:
                return await self.hosted(link)
            except NotFound:
                raise FetchError("the hosted image is gone") from None
        return await self.proxy.image(url)

    async def hosted(self, link: Link) -> Image:
        """A hosted image (``link.recipient_id`` is its message's id); NotFound if it is gone."""
        key = f"hosted/{link.recipient_id}/{link.position}"
        image = self.proxy.cached(key)
        if image is not None:
            return image
        row = await self.api.storage.hosted_image(link.recipient_id, link.position)
        if row is None:
            row = await self._from_message(link.recipient_id, link.position)
        image = Image(row.content_type, row.data)
        self.proxy.keep(key, image)
        return image

    async def _from_message(self, message_id: str, position: int) -> HostedImage:
        """The image found again in its stored message, whose images are kept as rows from now on."""
        message = (await self.api.storage.messages([message_id])).get(message_id)
        if message is None:
            raise NotFound(f"no message {message_id}")
        images = await self.api.in_thread(decoded_images, message.mime)
        try:
            await self.api.storage.store_hosted_images(message_id, images)
        except StorageError as exc:
            log.warn("hosted images of {id} not kept: {exc}", id=message_id, exc=exc)
        found = next((image for image in images if image.position == position), None)
        if found is None:
            raise NotFound(f"no image {position} in {message_id}")
        return found


def decoded_images(mime: bytes) -> list[HostedImage]:
    return [HostedImage(image.position, image.content_type, image.part.decoded())
            for image in hosting.embedded_images(tree.parse(mime))]


def serve_image(request: Any, image: Image, cache_control: bytes) -> bytes:
    request.setHeader(b"content-type", image.content_type.encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-security-policy", IMAGE_CSP)
    request.setHeader(b"cache-control", cache_control)
    request.setHeader(b"referrer-policy", b"no-referrer")
    # Web mail pages that isolate themselves (COEP) may still show it.
    request.setHeader(b"cross-origin-resource-policy", b"cross-origin")
    return image.data


# -- the routes --------------------------------------------------------------------------------------


@handled
async def _dispatch(api: API, request: Any) -> bytes:
    hosting_ = api.hosting
    path = request.path[len(hosting_.prefix):]
    if path.startswith(hosting.WEBVERSION_PATH.encode()):
        return await webversion.page(api, request, path[len(hosting.WEBVERSION_PATH):].decode("latin-1"))
    if path.startswith(hosting.HOSTED_PATH.encode()):
        return await _hosted(api, request, path[len(hosting.HOSTED_PATH):])
    return await _proxied(api, request)


async def _hosted(api: API, request: Any, rest: bytes) -> bytes:
    token, _, name = rest.decode("latin-1").partition("/")
    link = hosting.verify_hosted(api.hosting.signer, token, urllib.parse.unquote(name))
    if link is None:
        raise NotFound()
    # The same bytes for everyone, forever (the message never changes): caches may keep it.
    return serve_image(request, await api.hosting.hosted(link), b"public, max-age=31536000, immutable")


async def _proxied(api: API, request: Any) -> bytes:
    parsed = tracking_urls.parse_image_url(request.uri, api.hosting.prefix)
    if parsed is None:
        raise NotFound()
    token, url = parsed
    link = api.hosting.signer.verify(token, url.encode("utf-8"))
    if link is None or link.kind != "image":
        raise NotFound()
    api.hits.open(request, link, url)
    try:
        image = await api.hosting.image(url)
    except FetchError as exc:
        log.info("image proxy: {url}: {reason}", url=url, reason=exc)
        return error(request, 502, f"The image cannot be loaded: {exc}")
    # Every load by the reader is an open: nothing on the way may answer for us.
    return serve_image(request, image, b"no-store")


