"""Backlog benchmark: a queue of a million recipients must not be loaded into memory.

Fills the queue (delivery on hold), then lets smtpeter deliver to smtp-sink
for a while and prints the process's memory and the delivery rate with the
deep queue, next to the memory of the same process with an empty queue.

    python bench/backlog.py [--recipients 1000000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from bench.peers import Smtpeter
from bench.relay import SINK_HOST, SmtpSink
from smtpeter.envelope import Envelope, Recipient
from smtpeter.events.model import accept
from smtpeter.storage import open_storage
from smtpeter.storage.models import NewMessage

PER_MESSAGE = 1000


async def fill(reactor: object, url: str, account_name: str, recipients: int) -> None:
    storage = await open_storage(url, reactor)
    try:
        account = await storage.account(account_name)
        mime = b"From: app@example.com\r\nSubject: backlog\r\n\r\n" + b"x" * 1000 + b"\r\n"
        pending = []
        for start in range(0, recipients, PER_MESSAGE):
            count = min(PER_MESSAGE, recipients - start)
            rcpts = tuple(Recipient(f"r{start + n}@example.net") for n in range(count))
            pending.append(storage.enqueue(accept(NewMessage(account.id, "smtp",
                                                             Envelope("app@example.com", rcpts), mime))))
            if len(pending) >= 50:
                await defer.gatherResults(pending)
                pending = []
        await defer.gatherResults(pending)
    finally:
        await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

    sink = SmtpSink()
    route = f"{SINK_HOST}:{sink.port}"
    delivering = (f'[delivery]\nroutes = {{ "*" = "{route}" }}\n'
                  '[delivery.profiles.default]\nmax_connections = 20\nmessages_per_minute = 1000000\n')
    smtpeter = Smtpeter(extra_toml=delivering)
    url = f"sqlite:///{smtpeter.dir / 'data' / 'smtpeter.sqlite3'}"
    try:
        smtpeter.start()
        time.sleep(2)
        empty = smtpeter.memory()
        smtpeter.stop_process()
        started = time.monotonic()
        task.react(lambda reactor: defer.Deferred.fromCoroutine(fill(reactor, url, "apps", args.recipients)))
    except SystemExit as exit_:
        if exit_.code:
            raise
    filled = time.monotonic() - started
    try:
        smtpeter.start()
        begin = time.monotonic()
        time.sleep(args.seconds)
        delivered_files = len(list(sink.dir.iterdir()))
        elapsed = time.monotonic() - begin
        memory = smtpeter.memory()
        waiting = json.loads(smtpeter.cli("queue", "list", "--state", "queued", "--limit", "1", "--json"))
    finally:
        smtpeter.stop()
        sink.stop()
    print(f"backlog: {args.recipients} recipients queued in {filled:.1f} s "
          f"({args.recipients / filled:.0f} recipients/s into SQLite)")
    print(f"empty queue: RSS {empty['VmRSS'] // 1024} MiB; with the backlog, after {elapsed:.0f} s of "
          f"delivery: RSS {memory['VmRSS'] // 1024} MiB (peak {memory['VmHWM'] // 1024} MiB)")
    print(f"delivered {delivered_files} transactions of up to 100 recipients to smtp-sink in {elapsed:.0f} s "
          f"({delivered_files * 100 / elapsed:.0f} recipients/s); queue still non-empty: {bool(waiting)}")


if __name__ == "__main__":
    main()
