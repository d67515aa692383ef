"""What every route of the REST API shares: the Klein app they register on, reading a request,
and answering in JSON, errors included.

Errors are JSON, ``{"error": "text"}`` (the shape SMTPeter's official PHP client documents and
prints), with the HTTP status that fits; ``handled`` makes sure nothing else escapes a route.
"""

from __future__ import annotations

import functools
import json
import os
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from smtpeter.ingress.http.fields import BadRequest
from smtpeter.ingress.submission import Refused
from smtpeter.storage import NotFound, StorageError, StorageUnavailable

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

log = Logger()

# The route modules register on this one app; site.API carries it, so Klein hands every route
# the API object (storage, configuration, authentication) as its first argument.
app = Klein()

LARGE_BODY = 1024 * 1024  # bodies from this size on are decoded off the reactor and wait their turn


class Unauthorized(Exception):
    pass


def query(request: Any, name: str) -> str | None:
    """The first value of a URL query parameter.

    Not ``request.args``: Twisted splits the query at ";" as well as "&", and
    SMTPeter's ``tags=T1;T2`` would lose all but its first tag.
    """
    parsed = getattr(request, "_smtpeter_query", None)
    if parsed is None:
        text = request.uri.partition(b"?")[2].decode("utf-8", "replace")
        try:
            parsed = urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=100)
        except ValueError:
            raise BadRequest("the URL has too many query parameters") from None
        request._smtpeter_query = parsed
    values = parsed.get(name)
    return values[0] if values else None


def header(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


def body_size(request: Any) -> int:
    """Bytes in the request's body (Twisted keeps a body over 100 KB in a temporary file)."""
    size = request.content.seek(0, os.SEEK_END)
    request.content.seek(0)
    return size


def json_reply(request: Any, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode()


def error(request: Any, status: int, message: str) -> bytes:
    return json_reply(request, {"error": message}, status)


def text(request: Any, value: str, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    request.setHeader(b"content-type", content_type)
    return value.encode("utf-8")


def handled(handler: Callable) -> Callable:
    """Turn our exceptions into JSON errors with the right status; nothing else escapes."""

    @functools.wraps(handler)
    async def wrapped(api: API, request: Any, *args: Any, **kwargs: Any) -> Any:
        # Archived content (attachments, HTML) is the sender's, not ours: a browser
        # must neither guess its type nor run it on our origin.
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        try:
            return await handler(api, request, *args, **kwargs)
        except Unauthorized:
            return error(request, 401, "Invalid access token")
        except BadRequest as exc:
            return error(request, exc.status, exc.message)
        except Refused as exc:
            status = 403 if exc.status == "5.7.1" else 413 if exc.code == 552 else 400
            return error(request, status, exc.text)
        except NotFound:
            return error(request, 404, "Not found")
        except StorageUnavailable:
            request.setHeader(b"retry-after", b"30")
            return error(request, 503, "Storage is temporarily unavailable; nothing was stored. Try again.")
        except StorageError:
            return error(request, 400, "The request holds data that cannot be stored")
        except defer.CancelledError:
            return b""  # the client went away; Klein cancelled us
        except Exception:
            log.failure("API request {path} failed", path=request.path)
            return error(request, 500, "Internal error")

    return wrapped


@app.handle_errors(HTTPException)
def routing_error(api: API, request: Any, failure: Any) -> bytes:
    """Routing's own answers (no such path, wrong method, ...) as JSON errors too."""
    exc = failure.value
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        request.setHeader(b"allow", ", ".join(exc.valid_methods).encode())
    messages = {404: "Not found", 405: "Method not allowed"}
    return error(request, exc.code or 400, messages.get(exc.code, exc.name))


class DirectResource(Resource):
    """A route reached past Klein's dispatch (site.APISite): ``handler(api, request)`` (a ``handled``
    coroutine) answers the ``methods`` it takes."""

    isLeaf = True

    def __init__(self, api: API, handler: Callable[..., Any], methods: tuple[bytes, ...]) -> None:
        super().__init__()
        self.api = api
        self.handler = handler
        self.methods = methods

    def render(self, request: Any) -> Any:
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return error(request, 405, "Method not allowed")

        def respond(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("{method} {path} failed", failure, method=request.method, path=request.path)
            respond(error(request, 500, "Internal error"))

        defer.Deferred.fromCoroutine(self.handler(self.api, request)).addCallback(respond).addErrback(failed)
        return NOT_DONE_YET
