"""A real HTTP client (treq) for the API tests, without connections left open between tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool


@dataclass
class Response:
    code: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The text of an error answer, which is exactly ``{"error": "text"}`` (SMTPeter's PHP
        client prints ``$result->error``)."""
        body = self.json
        assert isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str), body
        return body["error"]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def content_type(self) -> str:
        return (self.headers.getRawHeaders(b"content-type") or [b""])[0].decode()


class Client:
    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def request(self, method: str, path: str, *, token: str | None = "default",  # noqa: S107
                      auth: str = "query",
                      json_body: Any = None, form: str | None = None, raw: bytes | None = None,
                      content_type: str | None = None, headers: dict[str, str] | None = None) -> Response:
        token = self.token if token == "default" else token
        url = self.base_url + path
        sent = {name.lower().encode(): [value.encode()] for name, value in (headers or {}).items()}
        if token is not None and auth == "query":
            url += ("&" if "?" in path else "?") + "access_token=" + token
        elif token is not None:
            sent[b"authorization"] = [f"Bearer {token}".encode()]
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent[b"content-type"] = [b"application/json"]
        elif form is not None:
            data = form.encode()
            sent[b"content-type"] = [b"application/x-www-form-urlencoded"]
        elif raw is not None:
            data = raw
        if content_type is not None:
            sent[b"content-type"] = [content_type.encode()]
        response = await treq.request(method, url, data=data, headers=sent, pool=self.pool)
        return Response(response.code, response.headers, await response.content())

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)
