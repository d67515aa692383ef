"""Click redirector benchmark: GET /c/TOKEN/... (wrk, keep-alive) against nginx's ``return 302``, same run.

smtpeter (``twistd -n smtpeter``, SQLite) gets ``--recipients`` delivered
recipients (messages of up to 1,000 recipients, to smtp-sink over a static
route, so a click comes after the delivery, as a reader's does); the bench signs click links for them
with the configured ``tracking.keys``, exactly as the tracking step does
(outbound/tracking.py: ``tracking_urls.target``, ``LinkSigner.sign`` over the
target URL, ``tracking_urls.click_url``), and wrk cycles over those distinct
URLs (a Lua script, a browser's User-Agent) on a few keep-alive connections,
after a short warm-up (a row of its own: the first clicks of each recipient).
nginx answers the same paths with ``location /c/ { return 302 ...; }``
(``worker_processes 1``, as our one reactor; ``auto`` for reference; no
access log: our hits are events, not log lines).

Before measuring: both answer 302 with the right Location (ours: the original
target URL) and a tampered token gets our 404. After each of our runs the
click events stored are counted (the storage, read-only, while it runs;
events/hits.py writes them in batches a moment later) until every redirect
served is recorded or recording stops making progress; again after the
process stopped (it writes every hit it took). CPU is utime+stime of the
whole process tree (the main process, its redirect workers, its transform
workers), per redirect during the load (with the main process's and the
workers' parts) and until the last of its clicks was recorded; RSS too.

The bench's smtpeter is "tuned": ``http.redirect_workers = --workers`` (2).
After each of its runs, a run over links signed the same way for recipients
that do not exist ("nothing stored"): answered and taken as any, dropped by
the main process (no such recipient), so the row shows what answering costs
without the recording; the bench fails if a click is stored for them.

Last, the same load against smtpeter in its default configuration (what
etc/smtpeter.toml sets, on free ports; no tracking.keys: the key made on
first start; no public_url).

    python bench/redirect.py [--seconds 10] [--connections 16,64] [--urls 1000] [--recipients 1000]
                             [--workers 2] [--skip-default] [--skip-unrecorded]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Smtpeter, free_port, require
from bench.relay import SINK_HOST, SmtpSink
from smtpeter import tracking_urls
from smtpeter.events.hits import MAX_PENDING
from smtpeter.ids import new_id
from smtpeter.links import Link, LinkSigner, signing_keys
from tests.support.harness import wait_for_port

KEY = "bench-redirect-key-0123456789abcdefghijklmnop"
NGINX_TARGET = "https://example.com/target"
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # sbin: not on a user's PATH
TUNED_WORKERS = 2
TUNED, DEFAULT = "smtpeter tuned", "smtpeter default config"
UNRECORDED = "nothing stored"  # the tuned server over links of unknown recipients (measure_unrecorded)


# -- the links ------------------------------------------------------------------------------------


def target_for(n: int, position: int) -> str:
    """A target URL as a mailing has them: a shop, a blog, a plain http page."""
    kind = n % 3
    if kind == 0:
        return (f"https://shop.example.com/products/{n}/spring-jacket?utm_source=newsletter&utm_medium=email"
                f"&utm_campaign=spring-sale&utm_content=link{position}")
    if kind == 1:
        return f"https://www.example.org/blog/2024/05/article-{n}"
    return f"http://example.net/a?id={n}&ref=mail"


def click_links(signer: LinkSigner, public_url: str, recipient_ids: Sequence[str],
                count: int) -> list[tuple[str, str]]:
    """``count`` click URLs as the tracking step writes them, with the target each one redirects to.

    Link ``i`` is for recipient ``i % len(recipient_ids)``; a recipient's links have distinct positions.
    """
    links = []
    for i in range(count):
        recipient_id = recipient_ids[i % len(recipient_ids)]
        position = 1 + i % 23 + 23 * (i // len(recipient_ids))
        written = target_for(i, position)
        where = tracking_urls.target(written)
        assert where is not None and where.url == written, written  # a clean URL: signed as written
        token = signer.sign(Link("click", recipient_id, position), where.url.encode("ascii"))
        links.append((tracking_urls.click_url(public_url, token, where), where.url))
    return links


def tampered(url: str, public_url: str) -> str:
    """``url`` with one character in the middle of its token changed."""
    at = len(public_url) + len("/c/") + 20
    return url[:at] + ("A" if url[at] != "A" else "B") + url[at + 1:]


# -- the servers ----------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it (smtpeter's redirect and transform workers)."""
    pids = [pid]
    for child in children(pid):
        pids += tree(child)
    return pids


def tree_cpu(pids: Sequence[int]) -> dict[int, float]:
    return {pid: process_cpu(pid) for pid in pids}


def peak_kib(pid: int) -> int:
    """The most memory a process held (VmHWM)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if line.startswith("VmHWM"))


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("VmRSS"))
    return total


class Nginx:
    """nginx in a temp dir (daemon off, no access log) answering /c/ with a fixed 302."""

    def __init__(self, workers: str) -> None:
        require(NGINX)
        self.name = "nginx 1 worker" if workers == "1" else f"nginx auto ({os.cpu_count()} workers)"
        self.dir = Path(tempfile.mkdtemp(prefix="smtpeter-bench-nginx-"))
        self.port = free_port()
        temp = "".join(f"    {name}_temp_path {self.dir / name};\n"
                       for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(
            f"worker_processes {workers};\ndaemon off;\npid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.dir / 'error.log'} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n    access_log off;\n" + temp +
            f"    server {{\n        listen 127.0.0.1:{self.port};\n"
            f"        location /c/ {{ return 302 {NGINX_TARGET}; }}\n    }}\n}}\n")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
             "-c", str(self.dir / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process)

    def cpu_seconds(self) -> float:
        return sum(tree_cpu(tree(self.process.pid)).values())

    def rss_kib(self) -> int:
        return rss_kib(tree(self.process.pid))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_smtpeter(sink_port: int, bench_config: bool, workers: int | None) -> tuple[Smtpeter, int]:
    """smtpeter with a route to the sink and an HTTP listener; returns it and the HTTP port.

    ``bench_config``: the bench's (fixed tracking.keys, public_url on the listener, ``workers`` redirect
    workers unless None); else the default one, as etc/smtpeter.toml has it (and the trust and route the
    set-up needs).
    """
    http_port = free_port()
    route = f'[delivery]\nroutes = {{ "*" = "{SINK_HOST}:{sink_port}" }}\n'
    listen = f'[http]\nlisten = ["tcp:{http_port}:interface=127.0.0.1"]\n'
    if bench_config:
        tuned = "" if workers is None else f"redirect_workers = {workers}\n"
        server = Smtpeter(extra_toml=route + listen + f'public_url = "http://127.0.0.1:{http_port}"\n'
                          + tuned + f'[tracking]\nkeys = ["{KEY}"]\n')
    else:
        server = Smtpeter(extra_toml=route + listen)
        server.config.write_text(
            f'[server]\nhostname = "localhost"\ndata_dir = "{server.dir / "data"}"\n'
            f'[smtp]\nlisten = ["tcp:{server.port}:interface=127.0.0.1"]\n'
            'trusted_networks = ["127.0.0.0/8"]\ntrusted_account = "apps"\n' + route + listen)
    server.start()
    wait_for_port(http_port, process=server.process)
    return server, http_port


def deliver_recipients(server: Smtpeter, count: int, timeout: float = 300) -> list[str]:
    """Send messages to ``count`` recipients through the sink; their ids once all are delivered."""
    message = ("From: <news@example.com>\r\nTo: <undisclosed-recipients:;>\r\nSubject: spring sale\r\n"
               "Message-ID: <redirect-bench@example.com>\r\n\r\nOur spring sale starts today.\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        for start in range(0, count, 1000):
            rcpts = [f"reader{i}@example.net" for i in range(start, min(count, start + 1000))]
            client.sendmail("news@example.com", rcpts, message)
    deadline = time.monotonic() + timeout
    while True:
        delivered = json.loads(server.cli("queue", "list", "--json", "--state", "delivered",
                                          "--limit", str(count)))
        if len(delivered) >= count:
            return [entry["id"] for entry in delivered]
        if time.monotonic() > deadline:
            sys.exit(f"FAILED: only {len(delivered)} of {count} recipients delivered to smtp-sink")
        time.sleep(0.5)


# -- measuring ------------------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    """Status and Location of a GET (a browser's User-Agent)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"User-Agent": USER_AGENT})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        connection.close()


def wrk_script(paths: Sequence[str]) -> Path:
    """A wrk script that cycles over ``paths``, one per request."""
    script = Path(tempfile.mkdtemp(prefix="smtpeter-bench-wrk-")) / "clicks.lua"
    script.write_text(
        f"wrk.headers[\"User-Agent\"] = {json.dumps(USER_AGENT)}\n"
        "local paths = {\n" + "".join(f"  {json.dumps(path)},\n" for path in paths) + "}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        "  return wrk.format(nil, paths[i])\n"
        "end\n")
    return script


def _millis(match: re.Match | None) -> float:
    if match is None:
        return 0.0
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run (1 thread, keep-alive): requests, errors, requests/s, latency p50/p99 in ms."""
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency",
         "-s", str(script), f"http://127.0.0.1:{port}"],
        check=True, capture_output=True, text=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, sockets.groups())) if sockets else 0),
            "per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _millis(re.search(r"50%\s+([\d.]+)(\w+)", out)),
            "p99_ms": _millis(re.search(r"99%\s+([\d.]+)(\w+)", out))}


def clicks_stored(database: Path) -> tuple[int, int]:
    """Click events in the storage, and how many of them are scored as a machine's."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as con:
        total, bots = con.execute("SELECT count(*), coalesce(sum(json_extract(data, '$.bot')), 0) "
                                  "FROM events WHERE type = 'click'").fetchone()
    con.close()
    return total, bots


def click_count(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as con:
        total = con.execute("SELECT count(*) FROM events WHERE type = 'click'").fetchone()[0]
    con.close()
    return total


@dataclass
class Row:
    """One line of the table."""

    server: str
    connections: int
    load: dict[str, float]
    cpu_ms: float  # per redirect, during the load
    rss_mib: float
    cpu_recorded_ms: float | None = None  # per redirect, until its clicks were stored
    recorded: int | None = None  # click events stored for this run's redirects
    record_seconds: float | None = None  # after the load ended, until the last was stored
    notes: list[str] = field(default_factory=list)


def wait_recorded(database: Path, expected: int, idle_limit: float, timeout: float) -> tuple[int, float]:
    """Poll the click count until it reaches ``expected`` and stays put a moment, stops growing for
    ``idle_limit`` seconds, or ``timeout`` passes; returns the count and when it last changed."""
    started = time.monotonic()
    count, changed = click_count(database), started
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        current = click_count(database)
        if current != count:
            count, changed = current, now
        # Requests in flight when wrk stopped were answered (and are recorded) but not counted.
        if count >= expected and now - changed > 1.6:
            return count, changed - started
        if now - changed > idle_limit or now - started > timeout:
            return count, changed - started


def load_ours(server: Smtpeter, port: int, script: Path, connections: int,
              seconds: float) -> tuple[dict[str, float], dict[int, float], dict[int, float], str]:
    """One wrk run against smtpeter: the load, the process tree's CPU seconds before it and spent in it,
    and a note splitting that CPU between the main process and its workers. Waits (before measuring) for
    the processes to be quiet: what an earlier run left them to do is not this one's."""
    assert server.process is not None
    pid = server.process.pid
    pids = tree(pid)  # the main process, its redirect workers and its transform workers
    wait_quiet(pids, 120)
    cpu = tree_cpu(pids)
    load = wrk(port, script, connections, seconds)
    load["ended"] = time.monotonic()
    load_cpu = {p: seconds - cpu[p] for p, seconds in tree_cpu(pids).items()}
    requests = max(1, load["requests"])
    others = sum(load_cpu.values()) - load_cpu[pid]
    note = (f"cpu ms/req during the load: main process {1000 * load_cpu[pid] / requests:.3f}, "
            f"{len(pids) - 1} worker processes {1000 * others / requests:.3f}")
    return load, cpu, load_cpu, note


def measure_ours(name: str, server: Smtpeter, port: int, script: Path, database: Path,
                 connections: int, seconds: float, record_timeout: float) -> Row:
    before = click_count(database)
    load, cpu, load_cpu, note = load_ours(server, port, script, connections, seconds)
    pids = list(cpu)
    # A batch is written whole, after every recipient in it was read: progress comes in steps.
    recorded, lag = wait_recorded(database, before + load["requests"], idle_limit=60, timeout=record_timeout)
    recorded -= before
    requests = max(1, load["requests"])
    row = Row(name, connections, load, 1000 * sum(load_cpu.values()) / requests, rss_kib(pids) / 1024,
              recorded=recorded, record_seconds=lag, notes=[note])
    if recorded >= load["requests"]:
        row.cpu_recorded_ms = 1000 * cpu_since(cpu) / requests
    else:
        row.notes.append(f"only {recorded} of {load['requests']} clicks stored {lag:.1f} s after the load")
    # The event feed's consumers (statistics, webhooks, suppressions) read every click after it was
    # stored: their work is part of a click's cost, and the next run starts once they are done.
    if wait_quiet(pids, record_timeout) is None:
        row.notes.append(f"still busy {record_timeout:.0f} s after its clicks were stored")
    else:
        row.notes.append(f"cpu ms/req until the event feed's consumers were done too "
                         f"({time.monotonic() - load['ended']:.1f} s after the load): "
                         f"{1000 * cpu_since(cpu) / requests:.3f}")
    return row


def cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the processes of ``before`` (pid -> CPU seconds then) have spent since."""
    return sum(tree_cpu(list(before)).values()) - sum(before.values())


def wait_quiet(pids: Sequence[int], timeout: float, busy: float = 0.05) -> float | None:
    """Wait until the processes together use less than ``busy`` of a core over a second; returns the
    seconds waited before that second, None if they were still busy after ``timeout``."""
    started = time.monotonic()
    before = sum(tree_cpu(pids).values())
    while True:
        time.sleep(1.0)
        now = sum(tree_cpu(pids).values())
        if now - before < busy:
            return time.monotonic() - started - 1.0
        if time.monotonic() - started > timeout:
            return None
        before = now


def measure_unrecorded(name: str, server: Smtpeter, port: int, script: Path, database: Path,
                       connections: int, seconds: float) -> Row:
    """A load of links signed for recipients that do not exist: answered as any, their hits taken by the
    main process and dropped there (storage has no such recipient): what answering costs without the
    recording. Nothing may be stored for them."""
    before = click_count(database)
    load, cpu, load_cpu, note = load_ours(server, port, script, connections, seconds)
    time.sleep(3)  # hits are taken up a second or two after they came
    wait_quiet(list(cpu), 120)
    stored = click_count(database) - before
    if stored:
        sys.exit(f"FAILED: {stored} clicks stored for recipients that do not exist")
    return Row(name, connections, load, 1000 * sum(load_cpu.values()) / max(1, load["requests"]),
               rss_kib(list(cpu)) / 1024, notes=[note])


def measure_nginx(name: str, nginx: Nginx, script: Path, connections: int, seconds: float) -> Row:
    cpu = nginx.cpu_seconds()
    load = wrk(nginx.port, script, connections, seconds)
    return Row(name, connections, load, 1000 * (nginx.cpu_seconds() - cpu) / max(1, load["requests"]),
               nginx.rss_kib() / 1024)


def check_ours(port: int, links: Sequence[tuple[str, str]], public_url: str) -> int:
    """Every link sampled answers 302 to its target; a tampered one 404. Returns the clicks made."""
    sample = links[:: max(1, len(links) // 20)]
    for url, target in sample:
        status, location = get(port, url[len(public_url):])
        if status != 302 or location != target:
            sys.exit(f"FAILED: {url} answered {status} to {location!r}, expected 302 to {target!r}")
    status, location = get(port, tampered(links[0][0], public_url)[len(public_url):])
    if status != 404:
        sys.exit(f"FAILED: a tampered token answered {status} {location!r}, expected 404")
    return len(sample)


def check_nginx(nginx: Nginx, path: str) -> None:
    status, location = get(nginx.port, path)
    if status != 302 or location != NGINX_TARGET:
        sys.exit(f"FAILED: nginx answered {status} to {location!r}")


def run_smtpeter(name: str, bench_config: bool, sink: SmtpSink, args: argparse.Namespace,
                 nginxes: Sequence[Nginx] = (), workers: int | None = None,
                 unrecorded: bool = False) -> tuple[list[Row], list[Row], str]:
    """Set up one smtpeter, check it, load it at each connection count (with ``unrecorded``, then with
    links of unknown recipients: measure_unrecorded) and each nginx right after.

    Returns our rows, nginx's rows, and a line about the clicks stored after the process stopped.
    """
    server, port = start_smtpeter(sink.port, bench_config, workers)
    ours: list[Row] = []
    theirs: list[Row] = []
    try:
        database = server.dir / "data" / "smtpeter.sqlite3"
        recipient_ids = deliver_recipients(server, args.recipients)
        delivered_at = time.monotonic()
        if bench_config:
            signer, public_url = LinkSigner([KEY.encode()]), f"http://127.0.0.1:{port}"
        else:  # what a default set-up signs with and points to: the key made on first start, no public_url
            signer, public_url = LinkSigner(signing_keys([], server.dir / "data")), "http://localhost:8080"
        links = click_links(signer, public_url, recipient_ids, args.urls)
        served = check_ours(port, links, public_url)
        script = wrk_script([url[len(public_url):] for url, _ in links])
        unknown = click_links(signer, public_url, [new_id() for _ in recipient_ids], args.urls)
        unknown_script = wrk_script([url[len(public_url):] for url, _ in unknown])
        for nginx in nginxes:
            check_nginx(nginx, links[0][0][len(public_url):])
        # A click this soon after the delivery is scored "early" (a machine's): wait it out.
        time.sleep(max(0.0, 5.5 - (time.monotonic() - delivered_at)))
        warm = measure_ours(f"{name} (warm-up)", server, port, script, database, args.connections[0],
                            args.warmup, args.record_timeout)
        served += warm.load["requests"]
        ours.append(warm)
        for connections in args.connections:
            row = measure_ours(name, server, port, script, database, connections, args.seconds,
                               args.record_timeout)
            served += row.load["requests"]
            ours.append(row)
            if unrecorded:
                ours.append(measure_unrecorded(f"{name}, {UNRECORDED}", server, port, unknown_script,
                                               database, connections, args.seconds))
            theirs += [measure_nginx(nginx.name, nginx, script, connections, args.seconds)
                       for nginx in nginxes]
        peak = sum(peak_kib(pid) for pid in tree(server.process.pid)) / 1024
        shutil.rmtree(script.parent, ignore_errors=True)
        shutil.rmtree(unknown_script.parent, ignore_errors=True)
        stopping = time.monotonic()
        server.process.terminate()  # it writes every hit it took before it ends
        server.process.wait(600)
        stopped = time.monotonic() - stopping
        server.stop_process()
        total, bots = clicks_stored(database)
    finally:
        server.stop()
    final = (f"{name}: {total} click events stored after it stopped ({stopped:.0f} s to stop), for {served} "
             f"redirects counted by wrk and the checks ({total - served:+d}; {bots} scored as a machine's); "
             f"peak RSS {peak:.0f} MiB")
    if total < served:
        final += (f"\n  MISSING: {served - total} clicks never stored (events/hits.py keeps at most "
                  f"{MAX_PENDING:,} hits waiting and drops the rest: smtpeter_hits_dropped_total)")
    return ours, theirs, final


def table(rows: Sequence[Row]) -> None:
    print("cpu ms/req: the server's CPU per redirect during the load; cpu+rec: until its clicks were "
          "stored;\nrecorded: click events stored / redirects wrk counted, the last stored this long after "
          "the load")
    print(f"{'':34} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms/req':>10} "
          f"{'cpu+rec':>8} {'rss MiB':>7}  recorded")
    for row in rows:
        load = row.load
        recorded = "" if row.recorded is None else (
            f"{row.recorded}/{load['requests']} in {row.record_seconds:.1f} s")
        print(f"{row.server:34} {row.connections:>5} {load['per_second']:>9.0f} {load['p50_ms']:>7.2f} "
              f"{load['p99_ms']:>7.2f} {row.cpu_ms:>10.3f} "
              f"{'' if row.cpu_recorded_ms is None else f'{row.cpu_recorded_ms:.3f}':>8} "
              f"{row.rss_mib:>7.0f}  {recorded}"
              + (f"  ({load['errors']:.0f} errors)" if load["errors"] else ""))
        for note in row.notes:
            print(f"{'':34} {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="per wrk run")
    parser.add_argument("--connections", default="16,64", help="wrk connections, one run each")
    parser.add_argument("--urls", type=int, default=1000, help="distinct click URLs wrk cycles over")
    parser.add_argument("--recipients", type=int, default=1000, help="delivered recipients the URLs are for")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of load before the first run")
    parser.add_argument("--record-timeout", type=float, default=120,
                        help="longest wait, after a run, for its clicks to be stored")
    parser.add_argument("--skip-default", action="store_true", help="no run in the default configuration")
    parser.add_argument("--skip-unrecorded", action="store_true",
                        help="no run over links of unknown recipients (what answering costs alone)")
    parser.add_argument("--workers", type=int, default=TUNED_WORKERS,
                        help="http.redirect_workers of the tuned run (the default config's: one per core "
                             "beside the reactor's)")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    require("wrk", NGINX, "smtp-sink")

    started = time.monotonic()
    sink = SmtpSink()
    nginxes: list[Nginx] = []
    try:
        nginxes += [Nginx("1"), Nginx("auto")]
        ours, nginx_rows, final = run_smtpeter(TUNED, True, sink, args, nginxes, args.workers,
                                               unrecorded=not args.skip_unrecorded)
        finals = [final]
        for nginx in nginxes:
            nginx.stop()
        nginxes = []
        if not args.skip_default:
            rows, _, final = run_smtpeter(DEFAULT, False, sink, args)
            ours += rows
            finals.append(final)
    finally:
        for nginx in nginxes:
            nginx.stop()
        sink.stop()

    print(f"redirect: wrk -t1 keep-alive, {args.seconds:.0f} s per run, {args.urls} distinct signed click "
          f"URLs for {args.recipients} delivered recipients; smtpeter on sqlite; "
          f"{os.cpu_count()} cores shared with wrk; {time.monotonic() - started:.0f} s")
    table([*ours, *nginx_rows])
    for connections in args.connections:
        one = next(r for r in nginx_rows if r.connections == connections and r.server == "nginx 1 worker")
        for mine in (r for r in ours if r.connections == connections
                     and r.server in (TUNED, DEFAULT, f"{TUNED}, {UNRECORDED}")):
            print(f"ratio {mine.server}/nginx (1 worker), {connections} connections: "
                  f"{mine.load['per_second'] / one.load['per_second']:.2f} req/s, "
                  f"p99 {mine.load['p99_ms']:.2f} vs {one.load['p99_ms']:.2f} ms")
    for final in finals:
        print(final)
    failed = [r for r in ours
              if r.load["errors"] or (r.recorded is not None and r.recorded < r.load["requests"])]
    failed += [r for r in nginx_rows if r.load["errors"]]
    if failed:
        sys.exit("FAILED: errors, or clicks not stored: " + ", ".join(f"{r.server} c{r.connections}"
                                                                     for r in failed))


if __name__ == "__main__":
    main()
