"""Connection ends over TLS, measured from outside against a real ``twistd smtpeter``.

How long QUIT and an idle session take to close on the implicit-TLS port,
and how long a flood of silent TCP connections (no TLS ClientHello) to that
port keeps a fresh client out. The flood comes from many loopback addresses,
as a distributed one would, so the per-client limit does not stop it first.

    python bench/connections.py [--flood 1000] [--timeout 10]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Smtpeter, free_port


def tls_client(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def seconds_until_closed(sock: socket.socket, limit: float) -> float | None:
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    tls_port = free_port()
    # A listen backlog that takes the whole flood at once, so the flood is over in well under a second.
    smtpeter = Smtpeter(extra_toml=(
        f'listen_tls = ["tcp:{tls_port}:interface=127.0.0.1:backlog=4096"]\ntimeout = {args.timeout}\n'
        f'[http]\nlisten = ["tcp:{free_port()}:interface=127.0.0.1"]\n[delivery]\nhold = true\n'
    )).start()
    try:
        client = tls_client(tls_port)
        read_reply(client)
        client.sendall(b"QUIT\r\n")
        read_reply(client)
        quit_close = seconds_until_closed(client, 30)
        client.close()

        client = tls_client(tls_port)
        read_reply(client)
        idle_close = seconds_until_closed(client, args.timeout + 30)
        client.close()

        time.sleep(1.0)  # the sessions above, and the start-up probe, have ended
        flood = []
        started = time.monotonic()
        for index in range(args.flood):
            sock = socket.socket()
            sock.bind((f"127.0.{1 + index // 200}.{1 + index % 200}", 0))
            sock.connect(("127.0.0.1", tls_port))
            flood.append(sock)
        flooded = time.monotonic() - started
        time.sleep(1.0)  # until the server has accepted them all
        served: dict[str, float | None] = {"plain": None, "implicit TLS": None}
        first: dict[str, bytes] = {}
        while time.monotonic() - started < args.timeout + 60 and None in served.values():
            for name, probe_port in (("plain", smtpeter.port), ("implicit TLS", tls_port)):
                if served[name] is not None:
                    continue
                try:
                    probe = (tls_client(probe_port) if name == "implicit TLS"
                             else socket.create_connection(("127.0.0.1", probe_port), timeout=30))
                    reply = read_reply(probe)
                    probe.close()
                except OSError as exc:
                    reply = f"error: {exc}".encode()
                first.setdefault(name, reply)
                if reply.startswith(b"220"):
                    served[name] = time.monotonic() - started
            time.sleep(0.5)
        for sock in flood:
            sock.close()
    finally:
        smtpeter.stop()

    def shown(value: float | None, limit: str) -> str:
        return f"{value:.2f} s" if value is not None else f"still open after {limit}"

    print(f"smtp.timeout = {args.timeout:g} s, implicit-TLS listener")
    print(f"  QUIT -> connection closed:        {shown(quit_close, '30 s')}")
    print(f"  idle session -> closed:           {shown(idle_close, f'{args.timeout + 30:g} s')}")
    print(f"  {args.flood} silent TCP connections to it, opened in {flooded:.1f} s; then a fresh client "
          "is served (220) after, counted from the first:")
    for name, seconds in served.items():
        print(f"    on the {name} listener: {shown(seconds, f'{args.timeout + 60:g} s')}"
              f" (its first reply: {first[name].strip().decode(errors='replace')!r})")


if __name__ == "__main__":
    main()
