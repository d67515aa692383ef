"""Durable storage: accounts, secrets, the queue and events, on SQLite or PostgreSQL."""

from smtpeter.storage.db import Conflict, NotFound, StorageError, StorageUnavailable
from smtpeter.storage.events import EVENTS_LIMIT
from smtpeter.storage.store import Storage, open_storage

__all__ = ["EVENTS_LIMIT", "Conflict", "NotFound", "Storage", "StorageError", "StorageUnavailable",
           "open_storage"]
