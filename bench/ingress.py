"""Ingress benchmark: smtp-source against smtpeter and against a local Postfix, same run.

Both fsync each accepted message before the 250 (Postfix's queue file,
our SQLite or PostgreSQL commit). Postfix holds what it accepts, so neither
side spends CPU on delivery. Needs root (Postfix) and the postfix package.

    python bench/ingress.py [--messages 10000] [--sessions 50] [--sizes 2048,20480] [--postgresql]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Postfix, Smtpeter, smtp_source, throwaway_postgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--sizes", default="2048,20480")
    parser.add_argument("--reuse", action="store_true", help="send many messages per connection (-d)")
    parser.add_argument("--postgresql", action="store_true", help="smtpeter on a throwaway PostgreSQL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cluster, storage_url = throwaway_postgres() if args.postgresql else (None, None)
    postfix = Postfix().start()
    smtpeter = Smtpeter(storage_url).start()
    log = ""
    results = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            postfix_seconds = smtp_source(postfix.port, args.messages, args.sessions, size, args.reuse)
            cpu_before = smtpeter.cpu_seconds()
            smtpeter_seconds = smtp_source(smtpeter.port, args.messages, args.sessions, size, args.reuse)
            cpu = smtpeter.cpu_seconds() - cpu_before
            results.append({
                "size": size,
                "postfix_msgs_per_s": round(args.messages / postfix_seconds, 1),
                "smtpeter_msgs_per_s": round(args.messages / smtpeter_seconds, 1),
                "ratio": round(postfix_seconds / smtpeter_seconds, 2),
                "smtpeter_cpu_ms_per_msg": round(1000 * cpu / args.messages, 3),
            })
        queued = len(json.loads(smtpeter.cli("queue", "list", "--json", "--limit", "10000000")))
        held = postfix.queued("hold")
        memory = smtpeter.memory()
    finally:
        log = smtpeter.stop()
        postfix.stop()
        if cluster is not None:
            cluster.destroy()

    expected = args.messages * len(results)
    found = re.search(r"group commit: (\d+) messages stored in (\d+) commits", log)
    commits = {"messages": int(found.group(1)), "commits": int(found.group(2))} if found else None
    storage = "postgresql" if args.postgresql else "sqlite"
    if args.json:
        print(json.dumps({"storage": storage, "group_commit": commits, "results": results,
                          "smtpeter_queued": queued,
                          "postfix_held": held, "smtpeter_memory_kib": memory}, indent=2))
    else:
        mode = "reused connections" if args.reuse else "one connection per message"
        print(f"ingress: {args.messages} messages, {args.sessions} sessions, {mode}, smtpeter on {storage}")
        print(f"{'size':>8} {'postfix msg/s':>14} {'smtpeter msg/s':>15} {'ratio':>6} {'cpu ms/msg':>11}")
        for r in results:
            print(f"{r['size']:>8} {r['postfix_msgs_per_s']:>14} {r['smtpeter_msgs_per_s']:>15} "
                  f"{r['ratio']:>6} {r['smtpeter_cpu_ms_per_msg']:>11}")
        if commits:
            print(f"group commit: {commits['messages']} messages in {commits['commits']} commits "
                  f"({commits['messages'] / commits['commits']:.1f} per commit and fsync)")
        print(f"stored: smtpeter {queued}/{expected}, postfix {held}/{expected}; "
              f"smtpeter RSS {memory['VmRSS'] // 1024} MiB (peak {memory['VmHWM'] // 1024} MiB)")
    if queued != expected or held != expected:
        sys.exit("FAILED: not every message was stored")


if __name__ == "__main__":
    main()
