"""`smtpeter received list|show`: what mx.listen received and what became of it.

For operators: what came to postmaster, which reports named none of our messages, what a
bounce said in full (its event carries at most 256 KiB of it).
"""

from __future__ import annotations

import argparse
from typing import Any

from smtpeter.events.logfiles import time_text
from smtpeter.storage import Storage


def _received(message: Any) -> dict[str, Any]:
    return {"id": message.id, "received": time_text(message.received), "client": message.client,
            "helo": message.helo, "tls": message.tls, "mail_from": message.mail_from,
            "to": [r.address for r in message.recipients], "state": message.state, "kind": message.kind,
            "account_id": message.account_id, "size": len(message.mime)}


async def received_list(storage: Storage, args: argparse.Namespace, config: Any) -> list:
    """The newest messages mx.listen received, newest last, with what processing made of them."""
    found = await storage.inbound_messages(None if args.state == "all" else args.state, args.limit)
    return [_received(m) for m in reversed(found)]


async def received_show(storage: Storage, args: argparse.Namespace, config: Any) -> dict:
    """One received message: its facts, the processing result and the whole message as text."""
    message = await storage.inbound_message(args.id)
    return {**_received(message), "result": message.result,
            "mime": message.mime.decode("utf-8", "replace")}
