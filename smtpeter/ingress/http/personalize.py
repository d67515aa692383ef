"""One message per recipient from a ``/v1/send`` call that carries personalization data.

The text (the fields, or the whole MIME) is parsed as a template once and
rendered per recipient with the call's ``data``, the recipient's own data and
the built-ins: ``recipient``, ``envelope`` and ``webversion`` (the URL of the
recipient's message in a browser, made with the recipient's message id, which
is therefore made here, before the message is submitted). Data may come from a web form,
so in a whole MIME message a value written into the header may not hold line
breaks or control characters (it would become a header of its own), and no
value may hold a boundary line of the message (it would become a part of its
own). The fields are checked the same way when the message is composed. All
renderings of one call share one Budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from smtpeter.ids import new_id
from smtpeter.ingress.http.compose import compose, raw
from smtpeter.ingress.http.fields import HEADER_FORBIDDEN, BadRequest, SendRequest
from smtpeter.ingress.http.template import Budget, Template, TemplateError, has_tags
from smtpeter.mime import tree

_TEMPLATE_FIELDS = ("from", "to", "cc", "replyto", "subject", "text", "html", "extra", "unsubscribe")
_HEADER_END = re.compile(r"\r?\n\r?\n")
_LINE_START = re.compile(r"(?:^|[\r\n])--", re.MULTILINE)


def uses_templates(send: SendRequest) -> bool:
    """Whether personalizing would change anything: data was given and the text has tags."""
    if send.data is None:
        return False
    if send.mime is not None:
        return has_tags(send.mime.decode("utf-8"))
    return any(has_tags(text) for text in _strings([send.fields.get(name) for name in _TEMPLATE_FIELDS]))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _header_value(text: str) -> str:
    if HEADER_FORBIDDEN.search(text):
        raise TemplateError("a value written into the header holds a line break or control character")
    return text


class _BodyValues:
    """Output hook for a MIME body: remembers values that hold a line starting with "--"."""

    def __init__(self) -> None:
        self.dashed: list[str] = []

    def __call__(self, text: str) -> str:
        if _LINE_START.search(text):
            self.dashed.append(text)
        return text

    def check(self, message: bytes) -> None:
        """No remembered value may hold a delimiter line of any multipart in ``message``."""
        if not self.dashed:
            return
        boundaries = [part.boundary.decode("utf-8", "replace") for part in tree.parse(message).walk()
                      if part.boundary]
        for text in self.dashed:
            for line in re.split(r"\r\n|\r|\n", text):
                if any(line.startswith("--" + boundary) for boundary in boundaries):
                    raise TemplateError("a value holds a MIME boundary line of the message")


def _parse(value: Any) -> Any:
    """Fields with every string that has tags replaced by its Template."""
    if isinstance(value, str):
        return Template(value) if has_tags(value) else value
    if isinstance(value, dict):
        return {key: _parse(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_parse(item) for item in value]
    return value


def _fill(value: Any, variables: dict[str, Any], budget: Budget) -> Any:
    if isinstance(value, Template):
        return value.render(variables, budget=budget)
    if isinstance(value, dict):
        return {key: _fill(item, variables, budget) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, variables, budget) for item in value]
    return value


def personalized(send: SendRequest, max_total: int, webversion: Callable[[str], str] | None = None,
                 ) -> list[tuple[str, bytes, bool, str]]:
    """(recipient, message, needs SMTPUTF8, its message id) for every recipient; BadRequest for a
    template that cannot be parsed or rendered, or messages together larger than ``max_total``.
    ``webversion`` makes a message id's web version URL."""
    try:
        if send.mime is not None:
            text = send.mime.decode("utf-8")
            match = _HEADER_END.search(text)
            split = match.end() if match else len(text)
            head, body = Template(text[:split]), Template(text[split:])
        else:
            fields = {name: _parse(value) if name in _TEMPLATE_FIELDS else value
                      for name, value in send.fields.items()}
    except TemplateError as exc:
        raise BadRequest(f"personalization: {exc}") from None
    results, total, budget = [], 0, Budget()
    for recipient in send.recipients:
        message_id = new_id()
        variables = {**(send.data or {}), **send.personal.get(recipient, {}),
                     "recipient": recipient, "envelope": send.envelope.sender or ""}
        if webversion is not None:
            variables["webversion"] = webversion(message_id)
        try:
            if send.mime is not None:
                body_values = _BodyValues()
                filled = (head.render(variables, _header_value, budget)
                          + body.render(variables, body_values, budget))
                data, smtputf8 = raw(filled.encode("utf-8"))
                body_values.check(data)
            else:
                data, smtputf8 = compose(_fill(fields, variables, budget), send.labels)
        except TemplateError as exc:
            raise BadRequest(f"personalization for {recipient}: {exc}") from None
        total += len(data)
        if total > max_total:
            raise BadRequest(f"the personalized messages together are larger than {max_total} bytes; "
                             "send fewer recipients per call", 413)
        results.append((recipient, data, smtputf8, message_id))
    return results
