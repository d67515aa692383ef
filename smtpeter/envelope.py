"""The envelope and the message options: one model for every stage.

Ingress fills them (SMTP MAIL and RCPT parameters and ``x-smtpeter-*``
headers, the REST fields, SMTP login defaults, the CLI), storage keeps them,
the scheduler and the outbound pipeline read them, and the delivery client
writes them out as MAIL and RCPT parameters again. The parsers here are the
only ones: every ingress turns their ``ValueError`` into its own kind of
error (a 501, a 400, a CLI message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NOTIFY_CONDITIONS = ("SUCCESS", "FAILURE", "DELAY")
RET_VALUES = ("FULL", "HDRS")
BODY_VALUES = ("7BIT", "8BITMIME")
IMAGES_VALUES = ("default", "hosted")
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_TAG = 100
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def parse_notify(text: str) -> str:
    """RFC 3461 NOTIFY: ``NEVER``, or a comma list of SUCCESS, FAILURE and DELAY; normalised."""
    items = [item.strip() for item in text.upper().split(",")]
    if items == ["NEVER"]:
        return "NEVER"
    if not items or not set(items) <= set(NOTIFY_CONDITIONS) or len(set(items)) != len(items):
        raise ValueError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE and DELAY")
    return ",".join(items)


def parse_ret(text: str) -> str:
    ret = text.strip().upper()
    if ret not in RET_VALUES:
        raise ValueError("RET must be FULL or HDRS")
    return ret


def parse_envid(text: str) -> str:
    if len(text) > MAX_ENVID or not text.isprintable():
        raise ValueError(f"ENVID must be at most {MAX_ENVID} printable characters")
    return text


def parse_body(text: str) -> str:
    body = text.strip().upper()
    if body not in BODY_VALUES:
        raise ValueError("BODY must be 7BIT or 8BITMIME")
    return body


def parse_boolean(value: Any) -> bool:
    """true/false from JSON, a form, a header or a command line (yes/no, on/off, 1/0 too)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
    raise ValueError("must be true or false")


def parse_tag(text: str) -> str:
    tag = text.strip()
    if not tag or not tag.isprintable() or any(c.isspace() or c == ";" for c in tag) or len(tag) > MAX_TAG:
        raise ValueError(f"invalid tag {tag!r}: a tag has no white space or semicolons, "
                         f"at most {MAX_TAG} characters")
    return tag


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient with its DSN request (RFC 3461)."""

    address: str
    notify: str | None = None  # "NEVER" or a comma list; None: the default (FAILURE)
    orcpt: str | None = None  # "addr-type;address", decoded

    def wants(self, condition: str) -> bool:
        """Whether a DSN is asked for on ``condition`` (SUCCESS, FAILURE or DELAY)."""
        return condition in (self.notify or "FAILURE").split(",")


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope of a message: who sends, to whom, and what DSNs are asked for.

    ``sender`` is the reverse path: "" is the null sender <>, None means the
    submitter gave none (the API without ``envelope``).
    """

    sender: str | None
    recipients: tuple[Recipient, ...] = ()
    ret: str | None = None  # RET=FULL or HDRS
    envid: str | None = None  # ENVID, decoded
    smtputf8: bool = False
    body: str | None = None  # BODY= as declared: 7BIT or 8BITMIME

    def with_recipients(self, recipients: Iterable[Recipient]) -> Envelope:
        return dataclasses.replace(self, recipients=tuple(recipients))


class OptionError(ValueError):
    """An option has a value it cannot have; ``name`` says which."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


# The SMTPeter names of the options, and the old names its API still accepts.
# oneclick: our RFC 8058 one-click unsubscribe for mail that has no List-Unsubscribe URL of its own.
BOOLEAN_OPTIONS = ("inlinecss", "trackclicks", "trackopens", "trackbounces", "preventscam", "oneclick")
OPTION_NAMES = (*BOOLEAN_OPTIONS, "images")
LEGACY_NAMES = {"clicktracking": "trackclicks", "bouncetracking": "trackbounces",
                "openstracking": "trackopens", "inlinizecss": "inlinecss"}


@dataclass(frozen=True)
class MessageOptions:
    """SMTPeter's per-message options; None means "not said here", so layers can be merged."""

    inlinecss: bool | None = None
    trackclicks: bool | None = None
    trackopens: bool | None = None
    trackbounces: bool | None = None
    preventscam: bool | None = None
    images: str | None = None
    oneclick: bool | None = None  # "default" or "hosted"

    @classmethod
    def parse(cls, values: Mapping[str, Any], legacy: bool = False) -> MessageOptions:
        """Options from name -> value pairs (booleans, "true"/"yes"/"1", ...). With ``legacy``,
        the old API names are read too (a current name wins). Raises OptionError."""
        found: dict[str, Any] = {}
        for name, value in values.items():
            key = LEGACY_NAMES.get(name, name) if legacy else name
            if key in BOOLEAN_OPTIONS:
                try:
                    parsed: Any = parse_boolean(value)
                except ValueError as exc:
                    raise OptionError(name, str(exc)) from None
            elif key == "images":
                parsed = value.strip().lower() if isinstance(value, str) else value
                if parsed not in IMAGES_VALUES:
                    raise OptionError(name, "must be hosted or default")
            else:
                raise OptionError(name, "is not an option")
            if key not in found or key == name:
                found[key] = parsed
        return cls(**found)

    def merged(self, *overrides: MessageOptions) -> MessageOptions:
        """These options with each of ``overrides`` laid over them in turn."""
        values = self.as_dict()
        for override in overrides:
            values.update(override.as_dict())
        return MessageOptions(**values)

    def as_dict(self) -> dict[str, Any]:
        """The options that are set, as stored and shown."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

