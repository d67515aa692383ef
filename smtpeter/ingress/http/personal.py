"""One message per recipient from a ``/v1/send`` call that carries personalization data.

The text (the fields, or the whole MIME) is parsed as a template once and
rendered per recipient with the call's ``data``, the recipient's own data and
the built-in ``recipient`` and ``envelope``. In a whole MIME message, values
written into the header may not hold line breaks or control characters: data
from a web form must never become a header of its own.
"""

from __future__ import annotations

import re
from typing import Any

from smtpeter.ingress.http.compose import compose, raw
from smtpeter.ingress.http.request import BadRequest, SendRequest
from smtpeter.transforms.personalize import Template, TemplateError, has_tags

_TEMPLATE_FIELDS = ("from", "to", "cc", "replyto", "subject", "text", "html", "extra", "unsubscribe")
_HEADER_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
_HEADER_END = re.compile(r"\r?\n\r?\n")


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
    if _HEADER_UNSAFE.search(text):
        raise TemplateError("a value written into the header holds a line break or control character")
    return text


def _parse(value: Any) -> Any:
    """Fields with every string that has tags replaced by its Template."""
    if isinstance(value, str):
        return Template(value) if has_tags(value) else value
    if isinstance(value, dict):
        return {key: _parse(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_parse(item) for item in value]
    return value


def _fill(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, Template):
        return value.render(variables)
    if isinstance(value, dict):
        return {key: _fill(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, variables) for item in value]
    return value


def personalized(send: SendRequest, max_total: int) -> list[tuple[str, bytes, bool]]:
    """(recipient, message, needs SMTPUTF8) for every recipient; BadRequest for a template
    that cannot be parsed or rendered, or messages together larger than ``max_total``."""
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
    results, total = [], 0
    for recipient in send.recipients:
        variables = {**(send.data or {}), **send.personal.get(recipient, {}),
                     "recipient": recipient, "envelope": send.envelope or ""}
        try:
            if send.mime is not None:
                filled = head.render(variables, _header_value) + body.render(variables)
                data, smtputf8 = raw(filled.encode("utf-8"))
            else:
                data, smtputf8 = compose(_fill(fields, variables))
        except TemplateError as exc:
            raise BadRequest(f"personalization for {recipient}: {exc}") from None
        total += len(data)
        if total > max_total:
            raise BadRequest(f"the personalized messages together are larger than {max_total} bytes; "
                             "send fewer recipients per call", 413)
        results.append((recipient, data, smtputf8))
    return results
