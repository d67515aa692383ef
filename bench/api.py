"""API benchmark: POST /v1/send (wrk, keep-alive) against SMTP injection (smtp-source), same run.

Both inject the same 2 KB message into the same smtpeter (delivery on hold),
from the same number of concurrent clients; every accepted message is
committed (fsynced) before its reply, on either path.

    python bench/api.py [--connections 50] [--seconds 10] [--messages 10000] [--size 2048]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Smtpeter, free_port, require, smtp_source


def message(size: int) -> str:
    head = ("From: <app@example.com>\r\nTo: <rcpt@example.net>\r\nSubject: benchmark\r\n"
            "Message-ID: <bench@example.com>\r\n\r\n")
    line = "x" * 76 + "\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def wrk(url: str, token: str, body: str, connections: int, seconds: float) -> dict[str, float]:
    require("wrk")
    script = Path(tempfile.mkdtemp(prefix="smtpeter-bench-wrk-")) / "send.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    result = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{int(seconds)}s", "--latency", "-s", str(script),
         url],
        check=True, capture_output=True, text=True)
    out = result.stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)

    def millis(match: re.Match | None) -> float:
        if match is None:
            return 0.0
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"requests": total, "errors": int(errors.group(1)) if errors else 0,
            "per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": millis(p50), "p99_ms": millis(p99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--messages", type=int, default=10000, help="for the SMTP run")
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()

    http_port = free_port()
    smtpeter = Smtpeter(extra_toml=(
        f'[delivery]\nhold = true\n[http]\nlisten = ["tcp:{http_port}:interface=127.0.0.1"]\n'))
    token = json.loads(smtpeter.cli("token", "create", "apps", "--json"))["api_token"]
    body = json.dumps({"recipient": "rcpt@example.net", "mime": message(args.size)})
    try:
        smtpeter.start()
        cpu = smtpeter.cpu_seconds()
        started = time.monotonic()
        smtp_seconds = smtp_source(smtpeter.port, args.messages, args.connections, args.size, reuse=True)
        smtp_cpu = (smtpeter.cpu_seconds() - cpu) / args.messages
        smtp_rate = args.messages / smtp_seconds
        cpu = smtpeter.cpu_seconds()
        api = wrk(f"http://127.0.0.1:{http_port}/v1/send", token, body, args.connections, args.seconds)
        api_cpu = (smtpeter.cpu_seconds() - cpu) / max(1, api["requests"])
        elapsed = time.monotonic() - started
        queued = len(json.loads(smtpeter.cli("queue", "list", "--json", "--limit", "10000000")))
    finally:
        smtpeter.stop()
    accepted_api = api["requests"] - api["errors"]
    print(f"api: {args.connections} concurrent clients, {args.size}-byte messages, keep-alive on both "
          f"(SMTP: smtp-source -d), smtpeter on sqlite; {elapsed:.0f} s")
    print(f"{'':6} {'msg/s':>9} {'cpu ms/msg':>11}")
    print(f"{'smtp':6} {smtp_rate:>9.1f} {1000 * smtp_cpu:>11.3f}")
    print(f"{'api':6} {api['per_second']:>9.1f} {1000 * api_cpu:>11.3f}   "
          f"(latency p50 {api['p50_ms']:.1f} ms, p99 {api['p99_ms']:.1f} ms, {api['errors']} errors)")
    print(f"ratio api/smtp {api['per_second'] / smtp_rate:.2f}; stored {queued} "
          f"(expected {args.messages + accepted_api})")
    # wrk stops counting at the deadline; requests still in flight then are stored too.
    if api["errors"] or queued < args.messages + accepted_api:
        sys.exit("FAILED: not every request was accepted and stored")


if __name__ == "__main__":
    main()
