"""How rows are looked up: ids from outside and recipient addresses."""

from __future__ import annotations

from smtpeter.ids import is_id
from smtpeter.storage.db import NotFound


def address_key(address: str) -> str:
    """How events find a recipient: mailbox names are matched without regard to case,
    as every receiving system in practice does (the event data keeps the original)."""
    return address.lower()


def check_id(recipient_id: str) -> None:
    """Ids from outside (URLs, the CLI) that we cannot have made are simply not found;
    they never reach the database (PostgreSQL refuses NUL in text, for one)."""
    if not is_id(recipient_id):
        raise NotFound(f"no message {recipient_id[:40]!r}")
