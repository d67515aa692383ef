"""Durable storage: accounts, secrets, the queue and events, on SQLite or PostgreSQL."""

from smtpeter.storage.db import Conflict, StorageError, StorageUnavailable
from smtpeter.storage.store import EVENTS_LIMIT, NotFound, Storage, open_storage

__all__ = ["EVENTS_LIMIT", "Conflict", "NotFound", "Storage", "StorageError", "StorageUnavailable",
           "open_storage"]
