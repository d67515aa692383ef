"""``smtpeter suppression list|add|remove|export ACCOUNT ...``: the suppression list from the shell.

The CLI writes to the database the service uses; a running service sees the change within a second
(the list's revision, smtpeter/suppressions/registry.py).
"""

from __future__ import annotations

import argparse
from typing import Any

from smtpeter.address import AddressError, check_mailbox
from smtpeter.config import Config
from smtpeter.storage import Storage
from smtpeter.storage.suppressions import Suppression
from smtpeter.suppressions.export import check_reason, csv_text, entry_shape, parse_expires


async def suppression_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    account = await storage.account(args.account)
    return [entry_shape(entry) for entry in await storage.suppressions(account.id, args.limit)]


async def suppression_add(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.account(args.account)
    try:
        address = check_mailbox(args.address, utf8=True)
        entry = Suppression(account.id, address, check_reason(args.reason), "cli", storage.now(),
                            parse_expires(args.expires, storage.now()))
    except (AddressError, ValueError) as exc:
        from smtpeter.cli import CommandError  # the CLI imports this module

        raise CommandError(str(exc)) from None
    return entry_shape(await storage.add_suppression(entry))


async def suppression_remove(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.account(args.account)
    await storage.remove_suppression(account.id, args.address)
    return {"account": account.name, "removed": args.address}


async def suppression_export(storage: Storage, args: argparse.Namespace, config: Config) -> Any:
    """Every entry: CSV, or with --json the list."""
    account = await storage.account(args.account)
    entries = await storage.suppressions(account.id)
    return [entry_shape(entry) for entry in entries] if getattr(args, "json", False) else csv_text(entries)


def print_csv(result: str | list, args: argparse.Namespace) -> None:
    print(result, end="")
