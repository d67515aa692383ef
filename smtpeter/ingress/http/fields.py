"""Parsing and validating REST API requests, without any HTTP machinery.

Bodies arrive as JSON or as ``application/x-www-form-urlencoded`` (with
PHP-style brackets for nested values, as ``http_build_query`` writes them);
both become the same dictionary. ``parse_send`` then checks every field of a
``/v1/send`` call and says precisely what is wrong with the first bad one.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import IO, Any

from smtpeter.address import AddressError, check_mailbox
from smtpeter.envelope import (
    LEGACY_NAMES,
    OPTION_NAMES,
    Envelope,
    MessageOptions,
    OptionError,
    Recipient,
    parse_boolean,
    parse_envid,
    parse_notify,
    parse_ret,
    parse_tag,
)
from smtpeter.ingress.http.template import is_variable_name


class BadRequest(Exception):
    """The request is malformed; ``status`` and the message go back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


_BRACKETS = re.compile(r"\[([^\]]*)\]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800" makes one; it cannot be stored
_CONTENT_FIELDS = ("from", "to", "cc", "replyto", "subject", "text", "html", "unsubscribe", "extra",
                   "attachments")
# Other names third-party clients give content fields (avido/smtpeter-php-api sends both).
_CONTENT_ALIASES = ("headers", "replyTo")
# SMTPeter's ``headers`` object: the standard fields it may set, by header name in lower case.
_STANDARD_HEADERS = {"from": "from", "to": "to", "cc": "cc", "reply-to": "replyto", "subject": "subject"}
_HEADER_HINTS = {"bcc": "; use 'bcc' (envelope only, never a header)",
                 "list-unsubscribe": "; use 'unsubscribe'", "list-unsubscribe-post": "; use 'unsubscribe'"}
_UNSUPPORTED = {"template": "templates", "patch": "template patches"}
_KNOWN = {"recipient", "recipients", "bcc", "envelope", "mime", "tags", "maxdelivertime", "dsn", "images",
          "data", "access_token", *_CONTENT_FIELDS, *_CONTENT_ALIASES, *OPTION_NAMES, *LEGACY_NAMES}
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})")
# Control characters no header may carry: C0 but TAB, DEL, C1, and the Unicode
# line and paragraph separators (some folding code breaks lines at them).
HEADER_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
MAX_FORM_PAIRS = 10000
MAX_NESTING = 8
MAX_DELIVER_DAYS = 30


def decode_body(content_type: str, stream: IO[bytes]) -> dict[str, Any]:
    """A request body (read from ``stream``) as a dictionary; BadRequest for anything we cannot read.

    The body's bytes are let go as soon as they are decoded to text, before the parser makes
    its own copies: a large body is then held twice at the most, not three times.
    """
    kind = content_type.split(";")[0].strip().lower()
    json_body = kind == "application/json"
    if not json_body and kind not in ("", "application/x-www-form-urlencoded"):
        raise BadRequest(f"unsupported content type {kind!r}: send application/json or a form", 415)
    try:
        text = stream.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(f"the {'JSON' if json_body else 'form'} body is not valid UTF-8") from None
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return {}
    # curl -d sends JSON labelled as a form; a body that starts like an object is JSON.
    if json_body or text[start] == "{":
        try:
            value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequest("the JSON body must be an object")
        _check_strings(value, 0)
        return value
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                                       errors="strict", max_num_fields=MAX_FORM_PAIRS)
    except UnicodeDecodeError:  # a %-escape that is not UTF-8
        raise BadRequest("the form body is not valid UTF-8") from None
    except ValueError:
        raise BadRequest(f"the form has more than {MAX_FORM_PAIRS} fields") from None
    return _unflatten(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")  # Python reads NaN and Infinity; JSON has neither


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is too large a number")
    return number


def _check_strings(value: Any, depth: int) -> None:
    """No lone surrogates anywhere (they cannot be stored or answered) and no deep nesting."""
    if depth > MAX_NESTING:
        raise BadRequest(f"the body is nested more than {MAX_NESTING} levels deep")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        for text in (key, item):
            # isascii() is free for ASCII text (a flag), and the search copies nothing.
            if isinstance(text, str) and not text.isascii() and _SURROGATE.search(text):
                raise BadRequest("the body holds text that is not valid Unicode")
        if isinstance(item, dict | list):
            _check_strings(item, depth + 1)


def _unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][]=1`` style keys into nested values; repeated plain keys into lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, _ = key.partition("[")
        path = [head, *_BRACKETS.findall(key[len(head):])]
        if len(path) > MAX_NESTING:
            raise BadRequest(f"form field {key[:40]!r} is nested too deeply")
        try:
            _store(root, path, value)
        except (TypeError, AttributeError):
            raise BadRequest(f"form field {key[:40]!r} conflicts with another field") from None
    return _lists(root)


def _store(root: dict[str, Any], path: list[str], value: str) -> None:
    node: Any = root
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, list):  # an "[]" step: append
            if last:
                node.append(value)
                break
            child: Any = [] if path[index + 1] == "" else {}
            node.append(child)
            node = child
            continue
        if last:
            if part in node:
                existing = node[part]
                if isinstance(existing, list):
                    existing.append(value)  # in place: repeated keys stay linear
                elif isinstance(existing, dict):
                    raise TypeError(part)
                else:
                    node[part] = [existing, value]
            else:
                node[part] = value
        else:
            default: Any = [] if path[index + 1] == "" else {}
            node = node.setdefault(part, default)


def _lists(value: Any) -> Any:
    """Dicts keyed 0, 1, 2... (PHP's numbered brackets) become lists."""
    if isinstance(value, dict):
        converted = {k: _lists(v) for k, v in value.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    if isinstance(value, list):
        return [_lists(v) for v in value]
    return value


def text_field(name: str, value: Any, *, allow_empty: bool = False, one_line: bool = True) -> str:
    """A string field; one-line fields (headers-to-be) refuse line breaks and control characters."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    if one_line and ("\r" in value or "\n" in value):
        raise BadRequest(f"'{name}' must not contain line breaks")
    if one_line and HEADER_FORBIDDEN.search(value):
        raise BadRequest(f"'{name}' must not contain control characters")
    if "\x00" in value:
        raise BadRequest(f"'{name}' must not contain NUL")
    if not value and not allow_empty:
        raise BadRequest(f"'{name}' must not be empty")
    return value


def elements(name: str, value: Any) -> list[tuple[str, Any]]:
    """Each element of a list with the name an error about it gives (``to[1]``); any other value
    as the one element, under the field's own name."""
    if isinstance(value, list):
        return [(f"{name}[{index}]", item) for index, item in enumerate(value)]
    return [(name, value)]


def boolean_field(name: str, value: Any) -> bool:
    try:
        return parse_boolean(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be true or false") from None


def mailbox(name: str, value: Any) -> str:
    """A pure address (no display name), validated like an SMTP path."""
    text = text_field(name, value).strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    try:
        return check_mailbox(text, utf8=True)
    except AddressError:
        raise BadRequest(f"'{name}': {value!r} is not a valid email address") from None


@dataclass
class SendRequest:
    envelope: Envelope  # every recipient, with the DSN request
    mime: bytes | None  # raw content, or None when composed from fields
    fields: dict[str, Any]  # the composition fields, when there is no mime
    options: MessageOptions = field(default_factory=MessageOptions)
    tags: list[str] = field(default_factory=list)
    expires: float | None = None
    # Personalization: None when the call carries no data (the text is sent as
    # it is); else the data for everyone, and per recipient what it adds.
    data: dict[str, Any] | None = None
    personal: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The client's name for a field given another way ("subject" -> "headers.Subject"),
    # so that an error names what the client sent.
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def recipients(self) -> list[str]:
        return [r.address for r in self.envelope.recipients]


def parse_send(body: dict[str, Any], max_recipients: int, now: float | None = None) -> SendRequest:
    body = {key: value for key, value in body.items() if value is not None}  # null means absent
    unknown = sorted(set(body) - _KNOWN - set(_UNSUPPORTED))
    if unknown:
        raise BadRequest(f"unknown field '{unknown[0]}'")
    for name, what in _UNSUPPORTED.items():
        if name in body:
            raise BadRequest(f"'{name}': {what} are not supported by this server")
    recipients, personal = _recipients(body, max_recipients)
    data = _personal_data("data", body["data"]) if "data" in body else None
    if data is None and any(isinstance(body.get(name), dict) for name in ("recipient", "recipients", "bcc")):
        data = {}  # the object form of recipients asks for personalization
    sender = None
    if "envelope" in body and body["envelope"] not in (None, ""):
        sender = mailbox("envelope", body["envelope"])
    options = _options(body)
    tags = _tags(body.get("tags"))
    expires = _maxdelivertime(body["maxdelivertime"], now) if body.get("maxdelivertime") else None
    envelope = _envelope(sender, recipients, body.get("dsn"))
    content_given = [name for name in (*_CONTENT_FIELDS, *_CONTENT_ALIASES) if name in body]
    if "mime" in body:
        if content_given:
            raise BadRequest(f"give either 'mime' or the message fields, not both ('{content_given[0]}')")
        mime = text_field("mime", body["mime"], one_line=False).encode("utf-8")
        return SendRequest(envelope, mime, {}, options, tags, expires, data, personal)
    fields = {name: body[name] for name in _CONTENT_FIELDS if name in body}
    labels: dict[str, str] = {}
    if "replyTo" in body:
        _merge(fields, labels, "replyto", body["replyTo"], "replyTo")
    if "headers" in body:
        _merge_headers(fields, labels, body["headers"])
    if "from" not in fields and sender:
        fields["from"] = sender  # SMTPeter's 2015 examples send no 'from': the envelope is it
    if "from" not in fields:
        raise BadRequest("'from' is required (or give the whole message as 'mime')")
    if not (fields.get("text") or fields.get("html")):
        raise BadRequest("'text' or 'html' is required (or give the whole message as 'mime')")
    return SendRequest(envelope, None, fields, options, tags, expires, data, personal, labels)


def _merge(fields: dict[str, Any], labels: dict[str, str], name: str, value: Any, label: str) -> None:
    """A field given under another name. Given both ways it must say the same: neither wins silently."""
    if name in fields:
        if fields[name] != value:
            raise BadRequest(f"'{label}' and '{labels.get(name, name)}' differ: give one of them")
        return
    fields[name] = value
    labels[name] = label


def _merge_headers(fields: dict[str, Any], labels: dict[str, str], value: Any) -> None:
    """SMTPeter's ``headers`` object: From, To, Cc, Reply-To and Subject (any case) set those
    fields; x-* headers join ``extra``; any other header is refused by name."""
    if not isinstance(value, dict):
        raise BadRequest("'headers' must be an object of header names and values")
    extra = fields.get("extra") or {}
    if not isinstance(extra, dict):
        raise BadRequest("'extra' must be an object of x-* header names and values")
    extra = dict(extra)
    for name, item in value.items():
        label = f"headers.{name}"
        standard = _STANDARD_HEADERS.get(name.lower())
        if standard is not None:
            _merge(fields, labels, standard, item, label)
        elif name[:2].lower() == "x-":
            same = [known for known in extra if known.lower() == name.lower()]
            if same and extra[same[0]] != item:
                raise BadRequest(f"'{label}' and '{labels.get('extra.' + same[0], 'extra.' + same[0])}' "
                                 "differ: give one of them")
            if not same:
                extra[name] = item
                labels[f"extra.{name}"] = label
        else:
            raise BadRequest(f"'{label}': only From, To, Cc, Reply-To, Subject and x-* headers may be given"
                             + _HEADER_HINTS.get(name.lower(), ""))
    if extra:
        fields["extra"] = extra


def _recipients(body: dict[str, Any], limit: int) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Every envelope recipient (``recipient``, ``recipients`` and ``bcc``; never in a
    header), and the personal data of those given as ``{address: data}``."""
    collected: list[str] = []
    personal: dict[str, dict[str, Any]] = {}
    for name in ("recipient", "recipients", "bcc"):
        if name not in body:
            continue
        value = body[name]
        if isinstance(value, list | dict) and len(value) > limit:
            raise BadRequest(f"too many recipients: more than {limit} per call", 413)
        if isinstance(value, dict):  # address -> personal data
            for key, data in value.items():
                address = mailbox(name, key)
                collected.append(address)
                if data not in (None, "", [], {}):
                    personal[address] = _personal_data(f"{name}.{key}", data)
            continue
        if not isinstance(value, str | list):
            raise BadRequest(f"'{name}' must be an address, a list of them or an object keyed by them")
        for where, item in elements(name, value):
            # The 2015 documentation allowed "a@x, b@y" inside one array element.
            for part in text_field(where, item).split(","):
                if part.strip():
                    collected.append(mailbox(where, part.strip()))
    if not collected:
        raise BadRequest("'recipient' or 'recipients' is required")
    unique = list(dict.fromkeys(collected))
    if len(unique) > limit:
        raise BadRequest(f"too many recipients: {len(unique)} (at most {limit} per call)", 413)
    return unique, personal


def _personal_data(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"'{name}': personalization data must be an object of variables")
    for key in value:
        if not is_variable_name(key):
            raise BadRequest(f"'{name}': {key[:40]!r} is not a variable name (letters, digits, - and _, "
                             "starting with a letter)")
    return value


def _options(body: dict[str, Any]) -> MessageOptions:
    given = {name: body[name] for name in (*OPTION_NAMES, *LEGACY_NAMES) if name in body}
    unsubscribe = body.get("unsubscribe")
    if isinstance(unsubscribe, dict) and not unsubscribe.get("url") and unsubscribe.get("oneclick"):
        given.setdefault("oneclick", unsubscribe["oneclick"])  # one-click without a URL: ours
    try:
        return MessageOptions.parse(given, legacy=True)
    except OptionError as exc:
        raise BadRequest(f"'{exc.name}' {exc.message}") from None


def _tags(value: Any) -> list[str]:
    if value in (None, "", []):
        return []
    if not isinstance(value, str | list):
        raise BadRequest("'tags' must be a list of strings")
    tags = []
    for where, tag in elements("tags", value):
        try:
            tags.append(parse_tag(text_field(where, tag)))
        except ValueError as exc:
            raise BadRequest(f"'{where}': {exc}") from None
    return tags


def _maxdelivertime(value: Any, now: float | None) -> float:
    text = text_field("maxdelivertime", value)
    match = _DATETIME.fullmatch(text)
    if not match:
        raise BadRequest("'maxdelivertime' must be 'YYYY-MM-DD hh:mm:ss' (UTC)")
    try:
        parts = tuple(int(x) for x in match.groups())
        time.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise BadRequest("'maxdelivertime' is not a valid date and time") from None
    expires = float(calendar.timegm((*parts, 0, 0, 0)))
    if now is not None and expires <= now:
        raise BadRequest("'maxdelivertime' is in the past")
    if now is not None:
        # Clients send far-future dates to mean "keep trying"; a queue entry
        # still has to end some time, so it is capped rather than refused.
        expires = min(expires, now + MAX_DELIVER_DAYS * 86400)
    return expires


def _envelope(sender: str | None, recipients: list[str], dsn: Any) -> Envelope:
    """The envelope with SMTPeter's ``dsn`` object: NOTIFY for every recipient, ORCPT for one."""
    if dsn in (None, ""):
        dsn = {}
    if not isinstance(dsn, dict):
        raise BadRequest("'dsn' must be an object with notify, ret, envid and/or orcpt")
    unknown = sorted(set(dsn) - {"notify", "ret", "envid", "orcpt"})
    if unknown:
        raise BadRequest(f"unknown field 'dsn.{unknown[0]}'")
    values: dict[str, str | None] = {}
    for name, parse in (("notify", parse_notify), ("ret", parse_ret), ("envid", parse_envid)):
        values[name] = None
        if dsn.get(name):
            try:
                values[name] = parse(text_field(f"dsn.{name}", dsn[name]))
            except ValueError as exc:
                raise BadRequest(f"'dsn.{name}': {exc}") from None
    orcpt = "rfc822;" + mailbox("dsn.orcpt", dsn["orcpt"]) if dsn.get("orcpt") else None
    if orcpt and len(recipients) != 1:
        orcpt = None  # an original recipient names one recipient
    return Envelope(sender, tuple(Recipient(address, values["notify"], orcpt) for address in recipients),
                    ret=values["ret"], envid=values["envid"])
