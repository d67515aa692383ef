"""Relay benchmark: smtp-source -> (smtpeter | Postfix) -> smtp-sink, in the same run.

End to end: from the start of injection to the moment the last message is
at the sink (smtp-sink dumps every message to a file; the newest file's time
is the end). Both relays fsync each message before accepting it and deliver
to the same smtp-sink over a static route. Needs root (Postfix).

    python bench/relay.py [--messages 10000] [--sessions 20] [--size 2048] [--postgresql]
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
        deadline = time.monotonic() + timeout
        while True:
            files = list(self.dir.iterdir())
            if len(files) >= count:
                return max(path.stat().st_mtime for path in files)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--reuse", action="store_true", help="smtp-source sends many messages per connection")
    parser.add_argument("--postgresql", action="store_true", help="smtpeter on a throwaway PostgreSQL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sink = SmtpSink()
    route = f"{SINK_HOST}:{sink.port}"
    cluster, storage_url = throwaway_postgres() if args.postgresql else (None, None)
    postfix = Postfix(relay_to=route).start()
    smtpeter = Smtpeter(storage_url, extra_toml=(
        f'[delivery]\nroutes = {{ "*" = "{route}" }}\n'
        # Postfix's default: up to 20 parallel deliveries to one destination, no rate limit.
        '[delivery.profiles.default]\nmax_connections = 20\nmessages_per_minute = 1000000\n'
        'connections_per_minute = 100000\n'
    )).start()
    try:
        postfix_injection, postfix_total = run(postfix.port, sink, args)
        cpu_before = smtpeter.cpu_seconds()
        smtpeter_injection, smtpeter_total = run(smtpeter.port, sink, args)
        cpu = smtpeter.cpu_seconds() - cpu_before
        memory = smtpeter.memory()
    finally:
        smtpeter.stop()
        postfix.stop()
        sink.stop()
        if cluster is not None:
            cluster.destroy()

    n = args.messages
    result = {
        "messages": n, "sessions": args.sessions, "size": args.size,
        "storage": "postgresql" if args.postgresql else "sqlite",
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
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"relay: {n} messages of {args.size} bytes, {args.sessions} sessions, smtp-source -> relay -> "
          f"smtp-sink, smtpeter on {result['storage']}")
    print(f"{'':10} {'injection s':>12} {'end-to-end s':>13} {'msg/s':>9}")
    for name, injection, total in (("postfix", postfix_injection, postfix_total),
                                   ("smtpeter", smtpeter_injection, smtpeter_total)):
        print(f"{name:10} {injection:>12.2f} {total:>13.2f} {result[name + '_msgs_per_s']:>9}")
    print(f"ratio {result['ratio']}; smtpeter CPU {result['smtpeter_cpu_ms_per_msg']} ms/msg "
          f"(ingress + delivery, one core), peak RSS {result['smtpeter_rss_mib']} MiB")


if __name__ == "__main__":
    main()
