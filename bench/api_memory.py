"""API memory benchmark: concurrent /v1/send calls near the message size limit, peak and left-over RSS.

Starts ``twistd smtpeter`` on loopback (SQLite, delivery on hold), sends
``--concurrent`` requests at once of about ``--megabytes`` each, and reads
the server's VmHWM (peak RSS) and VmRSS from /proc when all are answered and
again after ``--settle`` seconds. Two request shapes, each in a fresh server:

* ``json``: fields with one base64 attachment (the body is mostly base64);
* ``mime``: a whole message as ``mime`` (base64 lines inside a JSON string).

    python bench/api_memory.py [--concurrent 4] [--megabytes 49] [--shape json|mime|both]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Smtpeter, free_port

MB = 1_000_000


def json_body(size: int) -> bytes:
    attachment = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    return json.dumps({"recipient": "rcpt@example.net", "from": "app@example.com", "subject": "big",
                       "text": "see the attachment", "trackbounces": False,
                       "attachments": [{"name": "big.bin", "data": attachment}]}).encode()


def mime_body(size: int) -> bytes:
    head = ("From: <app@example.com>\r\nTo: <rcpt@example.net>\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    encoded = base64.encodebytes(os.urandom((size - len(head)) * 3 // 4 * 76 // 78)).decode()
    return json.dumps({"recipient": "rcpt@example.net", "trackbounces": False,
                       "mime": head + encoded.replace("\n", "\r\n")}).encode()


def post(port: int, token: str, body: bytes, results: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/send", body=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    response.read()
    results.append(response.status)
    connection.close()


def run(shape: str, concurrent: int, size: int, settle: float) -> dict[str, float]:
    http_port = free_port()
    smtpeter = Smtpeter(extra_toml=(
        f'[delivery]\nhold = true\n[http]\nlisten = ["tcp:{http_port}:interface=127.0.0.1"]\n'))
    token = json.loads(smtpeter.cli("token", "create", "apps", "--json"))["api_token"]
    body = (json_body if shape == "json" else mime_body)(size)
    try:
        smtpeter.start()
        idle = smtpeter.memory()["VmRSS"]
        results: list[int] = []
        threads = [threading.Thread(target=post, args=(http_port, token, body, results))
                   for _ in range(concurrent)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        done = smtpeter.memory()
        time.sleep(settle)
        after = smtpeter.memory()
        stored = len(json.loads(smtpeter.cli("queue", "list", "--json", "--limit", "1000")))
    finally:
        log = smtpeter.stop()
    if results != [200] * concurrent or stored != concurrent:
        print(log[-3000:], file=sys.stderr)
        sys.exit(f"FAILED: answers {results}, {stored} stored")
    return {"body_mb": len(body) / MB, "seconds": seconds, "idle": idle / 1024, "peak": done["VmHWM"] / 1024,
            "done": done["VmRSS"] / 1024, "after": after["VmRSS"] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--megabytes", type=float, default=49)
    parser.add_argument("--shape", choices=["json", "mime", "both"], default="both")
    parser.add_argument("--settle", type=float, default=5, help="seconds before the last RSS reading")
    args = parser.parse_args()
    shapes = ["json", "mime"] if args.shape == "both" else [args.shape]
    print(f"api memory: {args.concurrent} concurrent /v1/send of ~{args.megabytes:g} MB, smtpeter on sqlite "
          "(delivery on hold); RSS in MiB")
    print(f"{'shape':6} {'body MB':>8} {'seconds':>8} {'idle':>7} {'peak':>7} {'at end':>7} "
          f"{'+' + str(int(args.settle)) + ' s':>7}")
    for shape in shapes:
        r = run(shape, args.concurrent, int(args.megabytes * MB), args.settle)
        print(f"{shape:6} {r['body_mb']:>8.1f} {r['seconds']:>8.1f} {r['idle']:>7.0f} {r['peak']:>7.0f} "
              f"{r['done']:>7.0f} {r['after']:>7.0f}")


if __name__ == "__main__":
    main()
