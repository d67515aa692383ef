"""Reactor stalls while big messages go out: NOOP round trips on an idle session.

Ten 5 MB HTML messages with every SMTP API option on (their HTML has long
lines, so the outbound steps have real work: the line-length step re-encodes
them) are queued with delivery on hold; then smtpeter restarts delivering to
Postfix's smtp-sink while a client sends NOOP after NOOP on an idle session.
The worst and the 99th-percentile round trip are how long the reactor could
not answer anyone. Run for each place the steps can run: worker processes
(the default), and the reactor's threads (``transform_workers = 0``).

    python bench/stall.py [--messages 10] [--megabytes 5] [--modes default,threads]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Smtpeter, free_port
from bench.relay import SINK_HOST, SmtpSink

OPTIONS = ("inlinecss", "trackclicks", "trackopens", "trackbounces", "preventscam")


def html_message(megabytes: float, index: int) -> bytes:
    # One paragraph per line, about 10,000 characters each: builders' HTML often looks like this.
    line = "<p style=\"margin:0\">" + " ".join(f"<a href=\"https://example.com/{n}\">link {n}</a>"
                                               for n in range(200)) + "</p>"
    lines = "\r\n".join([line] * int(megabytes * 1_000_000 / len(line)))
    head = "".join(f"X-Smtpeter-{name}: true\r\n" for name in OPTIONS)
    return (f"From: news@example.com\r\nTo: r{index}@example.net\r\nSubject: big {index}\r\n{head}"
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f"<html><body>\r\n{lines}\r\n</body></html>\r\n").encode()


def send(port: int, data: bytes, recipient: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = reader.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        commands = (b"EHLO bench.test", b"MAIL FROM:<news@example.com>", f"RCPT TO:<{recipient}>".encode(),
                    b"DATA")
        for command in commands:
            sock.sendall(command + b"\r\n")
            reply()
        sock.sendall(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert reply().startswith(b"250")
        sock.sendall(b"QUIT\r\n")


def measure(workers: int | None, args: argparse.Namespace, sink: SmtpSink) -> dict[str, float]:
    route = f"{SINK_HOST}:{sink.port}"
    workers_toml = "" if workers is None else f"transform_workers = {workers}\n"

    def toml(hold: bool) -> str:
        return (f'[http]\nlisten = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
                f'[delivery]\nhold = {str(hold).lower()}\nroutes = {{ "*" = "{route}" }}\n{workers_toml}')

    smtpeter = Smtpeter(extra_toml=toml(hold=True)).start()
    try:
        for index in range(args.messages):
            send(smtpeter.port, html_message(args.megabytes, index), f"r{index}@example.net")
        smtpeter.stop_process()
        smtpeter.configure(toml(hold=False))
        sink.reset()
        smtpeter.start()
        def idle_session() -> tuple[socket.socket, Callable[[], bytes]]:
            sock = socket.create_connection(("127.0.0.1", smtpeter.port), timeout=60)
            replies = sock.makefile("rb")

            def reply() -> bytes:
                while (line := replies.readline())[3:4] == b"-":
                    pass
                return line

            reply()
            sock.sendall(b"EHLO idle.test\r\n")
            reply()
            return sock, reply

        idle, reply = idle_session()
        done = threading.Event()
        started = time.monotonic()
        delivered: list[float] = []

        def wait() -> None:
            delivered.append(sink.wait_for(args.messages, timeout=600))
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        round_trips = []
        while not done.is_set():
            if len(round_trips) % 90 == 89:
                # A session of nothing but NOOPs is cut off (the junk command limit): a new one.
                idle.close()
                idle, reply = idle_session()
            sent = time.perf_counter()
            idle.sendall(b"NOOP\r\n")
            answer = reply()
            if not answer.startswith(b"250"):
                raise RuntimeError(f"NOOP was answered {answer!r}")
            round_trips.append(time.perf_counter() - sent)
            time.sleep(0.005)
        idle.close()
        seconds = time.monotonic() - started
        cpu = smtpeter.cpu_seconds()
    finally:
        smtpeter.stop()
    round_trips.sort()
    p99 = round_trips[int(0.99 * (len(round_trips) - 1))]
    return {"max_ms": 1000 * round_trips[-1], "p99_ms": 1000 * p99,
            "median_ms": 1000 * statistics.median(round_trips), "seconds": seconds, "reactor_cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=5.0)
    parser.add_argument("--modes", default="default,threads",
                        help="default (the shipped setting: worker processes), threads, or both")
    args = parser.parse_args()
    modes = {"default": ("default setting", None), "threads": ("threads", 0)}
    sink = SmtpSink()
    try:
        results = {modes[m][0]: measure(modes[m][1], args, sink) for m in args.modes.split(",")}
    finally:
        sink.stop()
    print(f"stall: {args.messages} messages of {args.megabytes:g} MB HTML with long lines, every option on, "
          "delivered to smtp-sink; NOOP round trips on an idle session meanwhile")
    print(f"{'steps run in':22s} {'max ms':>8s} {'p99 ms':>8s} {'median ms':>10s} {'seconds':>8s} "
          f"{'main CPU s':>10s}")
    for name, result in results.items():
        print(f"{name:22s} {result['max_ms']:8.1f} {result['p99_ms']:8.1f} {result['median_ms']:10.2f} "
              f"{result['seconds']:8.1f} {result['reactor_cpu_s']:10.1f}")


if __name__ == "__main__":
    main()
