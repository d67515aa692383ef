"""Durable storage: accounts, secrets, the queue and events, on SQLite or PostgreSQL."""

from smtpeter.storage.db import Conflict, StorageError, StorageUnavailable
from smtpeter.storage.store import NotFound, Storage, open_storage

__all__ = ["Conflict", "NotFound", "Storage", "StorageError", "StorageUnavailable", "open_storage"]
