"""Relay benchmark: smtp-source -> (smtpeter | Postfix) -> smtp-sink, in the same run.

End to end: from the start of injection to the moment the last message is
at the sink (smtp-sink dumps every message to a file; the newest file's time
is the end). Both relays fsync each message before accepting it and deliver
to the same smtp-sink over a static route. Needs root (Postfix).

Drain: the relay holds ``--drain-messages`` queued messages to one
destination, then delivery starts; the rate is from the first message at the
sink to the last. smtpeter drains with its default [delivery] profile (as
shipped, only the route set) and with the Postfix-like tuned one; Postfix
releases its hold queue. smtpeter's CPU is the delivering process's, its
start-up included.

    python bench/relay.py [--messages 10000] [--sessions 20] [--size 2048] [--postgresql]
                          [--drain-messages 3000] [--drain-only] [--profile tuned|default]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Postfix, Smtpeter, free_port, require, smtp_source, throwaway_postgres
from tests.support.harness import wait_for_port

SINK_HOST = "127.0.0.5"


class SmtpSink:
    """Postfix's smtp-sink, dumping each message to a file in a RAM-backed directory."""

    def __init__(self) -> None:
        require("smtp-sink")
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.dir = Path(tempfile.mkdtemp(prefix="smtpeter-bench-sink-", dir=base))
        self.dir.chmod(0o777)
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            ["smtp-sink", *user, "-d", f"{self.dir}/%H%M%S.", f"{SINK_HOST}:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, SINK_HOST, self.process)

    def reset(self) -> None:
        for path in self.dir.iterdir():
            path.unlink()

    def wait_for(self, count: int, timeout: float) -> float:
        """Wait until ``count`` messages arrived; return when the last one did."""
        return self.arrivals(count, timeout)[1]

    def arrivals(self, count: int, timeout: float) -> tuple[float, float]:
        """Wait until ``count`` messages arrived; return when the first and the last one did."""
        deadline = time.monotonic() + timeout
        while True:
            files = list(self.dir.iterdir())
            if len(files) >= count:
                times = [path.stat().st_mtime for path in files]
                return min(times), max(times)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(files)} of {count} messages reached the sink")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(relay_port: int, sink: SmtpSink, args: argparse.Namespace) -> tuple[float, float]:
    """Returns (injection seconds, end-to-end seconds)."""
    sink.reset()
    started = time.time()
    injection = smtp_source(relay_port, args.messages, args.sessions, args.size, reuse=args.reuse)
    last = sink.wait_for(args.messages, timeout=600)
    return injection, last - started


def delivery_toml(route: str, hold: bool, tuned: bool) -> str:
    # The API on a port of its own: 8080 may be taken by another smtpeter.
    toml = (f'[http]\nlisten = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
            f'[delivery]\nhold = {str(hold).lower()}\nroutes = {{ "*" = "{route}" }}\n')
    if tuned:
        # Postfix's default: up to 20 parallel deliveries to one destination, no rate limit.
        toml += ('[delivery.profiles.default]\nmax_connections = 20\nmessages_per_minute = 1000000\n'
                 'connections_per_minute = 100000\n')
    return toml


def drain_smtpeter(storage_url: str | None, route: str, tuned: bool, sink: SmtpSink,
                   args: argparse.Namespace) -> dict[str, float]:
    """Queue the messages with delivery on hold, restart delivering, time the drain."""
    smtpeter = Smtpeter(storage_url, extra_toml=delivery_toml(route, hold=True, tuned=tuned)).start()
    try:
        smtp_source(smtpeter.port, args.drain_messages, args.sessions, args.size)
        smtpeter.stop_process()
        smtpeter.configure(delivery_toml(route, hold=False, tuned=tuned))
        sink.reset()
        started = time.time()
        smtpeter.start()
        first, last = sink.arrivals(args.drain_messages, timeout=900)
        cpu = smtpeter.cpu_seconds()
    finally:
        smtpeter.stop()
    return {"first_s": first - started, "msgs_per_s": (args.drain_messages - 1) / (last - first),
            "cpu_ms_per_msg": 1000 * cpu / args.drain_messages}


def drain_postfix(route: str, sink: SmtpSink, args: argparse.Namespace) -> dict[str, float]:
    postfix = Postfix(relay_to=route, extra={"smtpd_data_restrictions": "check_client_access static:HOLD"})
    postfix.start()
    try:
        smtp_source(postfix.port, args.drain_messages, args.sessions, args.size)
        sink.reset()
        started = time.time()
        postfix.release_held()
        first, last = sink.arrivals(args.drain_messages, timeout=900)
    finally:
        postfix.stop()
    return {"first_s": first - started, "msgs_per_s": (args.drain_messages - 1) / (last - first)}


def drains(new_database: Callable[[], str | None], route: str, sink: SmtpSink,
           args: argparse.Namespace) -> dict[str, dict]:
    """Each smtpeter run on a database of its own."""
    return {"postfix": drain_postfix(route, sink, args),
            "smtpeter_default": drain_smtpeter(new_database(), route, False, sink, args),
            "smtpeter_tuned": drain_smtpeter(new_database(), route, True, sink, args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--reuse", action="store_true", help="smtp-source sends many messages per connection")
    parser.add_argument("--postgresql", action="store_true", help="smtpeter on a throwaway PostgreSQL")
    parser.add_argument("--drain-messages", type=int, default=3000)
    parser.add_argument("--drain-only", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--profile", choices=("tuned", "default"), default="tuned",
                        help="smtpeter's delivery profile in the end-to-end run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sink = SmtpSink()
    route = f"{SINK_HOST}:{sink.port}"
    cluster, storage_url = throwaway_postgres() if args.postgresql else (None, None)
    try:
        drained = drains(cluster.create_database if cluster else lambda: None, route, sink, args)
        if not args.drain_only:
            end_to_end = relay_both(storage_url, route, sink, args)
    finally:
        sink.stop()
        if cluster is not None:
            cluster.destroy()
    report(args, drained, None if args.drain_only else end_to_end)


def relay_both(storage_url: str | None, route: str, sink: SmtpSink, args: argparse.Namespace) -> dict:
    postfix = Postfix(relay_to=route).start()
    tuned = args.profile == "tuned"
    smtpeter = Smtpeter(storage_url, extra_toml=delivery_toml(route, hold=False, tuned=tuned)).start()
    try:
        postfix_injection, postfix_total = run(postfix.port, sink, args)
        cpu_before = smtpeter.cpu_seconds()
        smtpeter_injection, smtpeter_total = run(smtpeter.port, sink, args)
        cpu = smtpeter.cpu_seconds() - cpu_before
        memory = smtpeter.memory()
    finally:
        smtpeter.stop()
        postfix.stop()

    n = args.messages
    return {
        "messages": n, "sessions": args.sessions, "size": args.size,
        "postfix_msgs_per_s": round(n / postfix_total, 1),
        "smtpeter_msgs_per_s": round(n / smtpeter_total, 1),
        "ratio": round(postfix_total / smtpeter_total, 2),
        "postfix_injection_s": round(postfix_injection, 2),
        "smtpeter_injection_s": round(smtpeter_injection, 2),
        "postfix_end_to_end_s": round(postfix_total, 2),
        "smtpeter_end_to_end_s": round(smtpeter_total, 2),
        "smtpeter_cpu_ms_per_msg": round(1000 * cpu / n, 3),
        "smtpeter_rss_mib": memory["VmHWM"] // 1024,
    }


def report(args: argparse.Namespace, drained: dict[str, dict], end_to_end: dict | None) -> None:
    storage = "postgresql" if args.postgresql else "sqlite"
    drain = {name: {key: round(value, 2) for key, value in figures.items()}
             for name, figures in drained.items()}
    if args.json:
        print(json.dumps({"storage": storage, "drain_messages": args.drain_messages, "drain": drain,
                          "end_to_end": end_to_end}, indent=2))
        return
    print(f"drain: {args.drain_messages} queued messages of {args.size} bytes to one destination "
          f"-> smtp-sink, smtpeter on {storage}")
    print(f"{'':18} {'first s':>8} {'msg/s':>9} {'CPU ms/msg':>11}")
    for name, figures in drain.items():
        cpu = figures.get("cpu_ms_per_msg", "")
        print(f"{name:18} {figures['first_s']:>8.2f} {figures['msgs_per_s']:>9} {cpu:>11}")
    if end_to_end is None:
        return
    n = end_to_end["messages"]
    print(f"relay: {n} messages of {args.size} bytes, {args.sessions} sessions, smtp-source -> relay -> "
          f"smtp-sink, smtpeter ({args.profile} profile) on {storage}")
    print(f"{'':10} {'injection s':>12} {'end-to-end s':>13} {'msg/s':>9}")
    for name in ("postfix", "smtpeter"):
        injection, total = end_to_end[name + "_injection_s"], end_to_end[name + "_end_to_end_s"]
        print(f"{name:10} {injection:>12.2f} {total:>13.2f} {end_to_end[name + '_msgs_per_s']:>9}")
    print(f"ratio {end_to_end['ratio']}; smtpeter CPU {end_to_end['smtpeter_cpu_ms_per_msg']} ms/msg "
          f"(ingress + delivery, one core), peak RSS {end_to_end['smtpeter_rss_mib']} MiB")


if __name__ == "__main__":
    main()
