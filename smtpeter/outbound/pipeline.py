"""The delivery-time transform pipeline: what happens to a stored message before it is sent.

Each transform is a plain function on bytes. One that fails is skipped and
logged: a transform never loses a message.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from smtpeter.outbound import wire
from smtpeter.storage.models import StoredMessage

log = Logger()

Transform = Callable[[bytes, StoredMessage], bytes]


def _line_length(mime: bytes, message: StoredMessage) -> bytes:
    return wire.limit_line_length(mime)


# In order. Later: options (inline CSS, tracking), VERP; DKIM signing last.
TRANSFORMS: list[tuple[str, Transform]] = [
    ("line length", _line_length),
]


def prepare(message: StoredMessage) -> bytes:
    mime = message.mime
    for name, transform in TRANSFORMS:
        try:
            mime = transform(mime, message)
        except Exception:
            log.failure("transform {name} failed on message {id}; sending it without", name=name,
                        id=message.id)
    return mime
