"""Relay benchmark: smtp-source -> (smtpeter | Postfix) -> smtp-sink, in the same run.

End to end: from the start of injection to the moment the last message is
at the sink (smtp-sink dumps every message to a file; the newest file's time
is the end). Both relays fsync each message before accepting it and deliver
to the same smtp-sink over a static route. Needs root (Postfix).

Every end-to-end run injects the same message (smtp-source's own header and
body of ``--size`` bytes, with ``X-SMTPeter-TrackBounces: true``), and each
relay gets one message first (not measured: it starts smtpeter's workers and
shows what arrives). Postfix relays it unsigned; smtpeter relays it:

* unsigned: example.com is an approved sender domain of the account but has
  never been checked, so nothing is signed and the envelope stays the client's;
* signed: the domain's last DNS check (recorded before the start) found every
  item ok and both of its keys published, so each message is signed with
  RSA-2048 and ed25519 (dual) and leaves with its VERP return path, as in
  production. The warm-up message must arrive with a DKIM-Signature per key
  (each checked by dkimpy against the key's public record) and a VERP MAIL FROM.

Latency: while smtp-source runs, a probe message goes in every 0.1 s on a
connection of its own; a probe's latency is from the start of its session
to its arrival at the sink (the sink file's time). smtpeter's CPU is its
process tree's (the reactor's process, and the worker processes that run the
outbound steps, DKIM signing among them), over the measured messages; RSS is
the peak of the reactor's process and of its workers. Postfix's CPU is its
master's process tree's (the daemons it reaped included).

Drain: the relay holds ``--drain-messages`` queued messages to one
destination, then delivery starts; the rate is from the first message at the
sink to the last. smtpeter drains with its default [delivery] profile (as
shipped, only the route set) and with the Postfix-like tuned one; Postfix
releases its hold queue. smtpeter's CPU is the delivering process's, its
start-up included.

    python bench/relay.py [--messages 10000] [--sessions 20] [--size 2048] [--postgresql]
                          [--drain-messages 3000] [--runs drain,relay,signed] [--drain-only]
                          [--profile tuned|default|both] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import email
import email.utils
import json
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import Postfix, Smtpeter, free_port, require, smtp_source, throwaway_postgres
from tests.support.harness import wait_for_port

SINK_HOST = "127.0.0.5"
SENDER, RECIPIENT = "app@example.com", "rcpt@example.net"
SENDER_DOMAIN = "example.com"  # what peers.Smtpeter registers (approved) for its account "apps"
RUNS = ("drain", "relay", "signed")
PROBE_INTERVAL = 0.1


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


# -- the end-to-end load ------------------------------------------------------------------------


def message(size: int, probe: str | None = None) -> bytes:
    """smtp-source's message (its header, ``size`` bytes of numbered lines of X), with the SMTPeter
    header that turns the VERP return path on; a probe says which it is. LF line ends, as
    smtp-source -F reads a file (it sends CRLF)."""
    header = (f"From: <{SENDER}>\nTo: <{RECIPIENT}>\nDate: {email.utils.formatdate()}\n"
              f"Message-Id: <relay.{probe or 'load'}@bench.test>\nX-SMTPeter-TrackBounces: true\n")
    if probe is not None:
        header += f"X-Bench-Probe: {probe}\n"
    lines, length, number = [], 0, 1
    while length < size:
        line = (str(number) + "X" * 78)[:min(79, size - length - 1)] + "\n"
        lines.append(line)
        length += len(line)
        number += 1
    return (header + "\n" + "".join(lines)).encode("ascii")


def inject(port: int, messages: int, sessions: int, message_file: Path, reuse: bool) -> float:
    """smtp-source sending ``message_file`` (peers.smtp_source has no -F); wall-clock seconds."""
    args = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-F", str(message_file),
            "-f", SENDER, "-t", RECIPIENT]
    if reuse:
        args.append("-d")
    started = time.monotonic()
    subprocess.run([*args, f"127.0.0.1:{port}"], check=True)
    return time.monotonic() - started


def send_one(port: int, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.bench.test", timeout=120) as client:
        client.sendmail(SENDER, [RECIPIENT], content.replace(b"\n", b"\r\n"))


class Prober(threading.Thread):
    """Sends a probe message every PROBE_INTERVAL until stopped; ``sent`` maps each accepted
    probe to the start of its session."""

    def __init__(self, port: int, size: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.size = size
        self.sent: dict[str, float] = {}
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        number, due = 0, time.monotonic()
        while not self.stopping.is_set():
            number += 1
            probe = str(number)
            started = time.time()
            try:
                send_one(self.port, message(self.size, probe))
            except (OSError, smtplib.SMTPException):
                self.failed += 1
            else:
                self.sent[probe] = started
            due = max(due + PROBE_INTERVAL, time.monotonic())  # late: no burst to catch up
            self.stopping.wait(due - time.monotonic())

    def stop(self) -> None:
        self.stopping.set()
        self.join()


_PROBE = re.compile(rb"^X-Bench-Probe: (\S+)", re.MULTILINE)


def probe_latencies(sink: SmtpSink, sent: dict[str, float]) -> list[float]:
    """Seconds from each probe's session start to its arrival at the sink (file times: a jiffy's
    resolution)."""
    latencies = []
    for path in sink.dir.iterdir():
        with open(path, "rb") as file:
            head = file.read(4096).partition(b"\n\n")[0]
        found = _PROBE.search(head)
        if found is not None and found.group(1).decode() in sent:
            latencies.append(path.stat().st_mtime - sent[found.group(1).decode()])
    return sorted(latencies)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


def run(relay_port: int, sink: SmtpSink, message_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Injection seconds, end-to-end seconds, messages (the load's and the probes') and probe
    latencies."""
    sink.reset()
    prober = Prober(relay_port, args.size)
    started = time.time()
    prober.start()
    try:
        injection = inject(relay_port, args.messages, args.sessions, message_file, args.reuse)
    finally:
        prober.stop()
    delivered = args.messages + len(prober.sent)
    last = sink.wait_for(delivered, timeout=900)
    latencies = probe_latencies(sink, prober.sent)
    return {"injection": injection, "total": last - started, "delivered": delivered,
            "latencies": latencies, "probe_failures": prober.failed}


# -- a relay's process tree ------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (its worker processes, and whatever they started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User and system CPU of ``pid``; with ``reaped``, of the children it waited for as well."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` (its children it reaped included) and of each of its descendants."""
    return {member: cpu_seconds(member, reaped=True) for member in process_tree(pid)}


def tree_cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a process tree used in between (a process gone meanwhile: in its parent's reaped
    children, with the CPU it had used before as well)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def postfix_master(postfix: Postfix) -> int:
    return int((postfix.dir / "queue" / "pid" / "master.pid").read_text().split()[0])


def peak_rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


# -- signing on -----------------------------------------------------------------------------------


async def _enable_signing(reactor: Any, config_path: str) -> dict[str, Any]:
    """As a live check that found everything right would leave it: the domain's status recorded
    (every item ok, its keys published) and its first keys activated by rotation; returns the
    bounce domain and the public records of the keys that sign."""
    from smtpeter.config import load_config
    from smtpeter.domains import rotation
    from smtpeter.domains.keys import KeyStore
    from smtpeter.domains.model import OK, STATUS_ITEMS, DomainStatus
    from smtpeter.domains.sealing import Sealer, encryption_key
    from smtpeter.storage import open_storage

    config = load_config(config_path)
    storage = await open_storage(config.storage_url, reactor, 1)
    try:
        account = await storage.account("apps")
        settings = await storage.domain_settings(account.id, SENDER_DOMAIN)
        keystore = KeyStore(storage, Sealer(encryption_key(config)))
        keys = await keystore.keys(domain=SENDER_DOMAIN, account_id=account.id)
        published = tuple(key.selector for key in keys)
        now = storage.now()
        await storage.record_domain_status(DomainStatus(
            SENDER_DOMAIN, dict.fromkeys(STATUS_ITEMS, OK), dict.fromkeys(STATUS_ITEMS, "bench: ok"),
            published, now))
        actions = rotation.plan(keys, published, now, config.domains.rotation_days,
                                config.domains.retired_days, tuple(config.domains.dkim_algorithms))
        await rotation.apply(keystore, storage, account.id, SENDER_DOMAIN, actions, now)
        signing = await keystore.signing_keys(SENDER_DOMAIN, account.id, published, storage.now())
        records = {key.selector: key.public_record for key in keys
                   if key.selector in {s.selector for s in signing}}
        return {"approved": settings.approved, "bounces": settings.bounces, "records": records}
    finally:
        await storage.close()


def enable_signing(smtpeter: Smtpeter) -> dict[str, Any]:
    """_enable_signing in a process of its own (a reactor runs once), before smtpeter starts."""
    result = subprocess.run([sys.executable, __file__, "--enable-signing", str(smtpeter.config)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"setting signing up failed: {result.stdout}{result.stderr}")
    found = json.loads(result.stdout)
    if not found["approved"] or len(found["records"]) != 2:
        raise RuntimeError(f"signing is not set up as expected: {found}")
    return found


def check_arrival(data: bytes, signing: dict[str, Any] | None) -> dict[str, Any]:
    """What the sink got: unsigned with the client's envelope, or (``signing``) signed by each key,
    every signature verified by dkimpy against the key's record, with the VERP return path."""
    import dkim

    header = data.partition(b"\n\n")[0]
    found = re.search(rb"^X-Mail-Args: <([^>]*)>", header, re.MULTILINE)
    mail_from = found.group(1).decode() if found else ""
    parsed = email.message_from_bytes(data)
    signatures = [re.sub(r"\s+", "", value) for value in parsed.get_all("DKIM-Signature") or []]
    selectors = sorted(re.search(r"(?:^|;)s=([^;]+)", value).group(1) for value in signatures)
    if signing is None:
        if signatures or mail_from != SENDER:
            raise RuntimeError(f"unsigned run: got signatures {selectors}, MAIL FROM <{mail_from}>")
        return {"mail_from": mail_from, "selectors": []}
    records = signing["records"]
    if selectors != sorted(records):
        raise RuntimeError(f"signed run: signatures by {selectors}, expected {sorted(records)}")
    if not re.fullmatch(r"b-[^@]+@" + re.escape(signing["bounces"]), mail_from):
        raise RuntimeError(f"signed run: MAIL FROM <{mail_from}> is no VERP address at {signing['bounces']}")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        selector, _, domain = name.decode().rstrip(".").partition("._domainkey.")
        return records[selector].encode() if domain == SENDER_DOMAIN and selector in records else b""

    verifier = dkim.DKIM(data.replace(b"\n", b"\r\n"))
    verified = [verifier.verify(idx=index, dnsfunc=dnsfunc) for index in range(len(signatures))]
    if not all(verified):
        raise RuntimeError(f"signed run: dkimpy verifies {verified} of the signatures {selectors}")
    return {"mail_from": mail_from, "selectors": selectors}


def warm_up(port: int, sink: SmtpSink, size: int, signing: dict[str, Any] | None = None,
            check: bool = True) -> dict[str, Any] | None:
    """One message through the relay before the measurement; what arrived, checked."""
    sink.reset()
    send_one(port, message(size, "warm-up"))
    sink.wait_for(1, timeout=120)
    if not check:
        return None
    return check_arrival(next(sink.dir.iterdir()).read_bytes(), signing)


# -- end to end -----------------------------------------------------------------------------------


def relay_runs(new_database: Callable[[], str | None], route: str, sink: SmtpSink,
               args: argparse.Namespace) -> dict[str, Any]:
    """Postfix, then per profile smtpeter unsigned and/or signed, each smtpeter on a database of
    its own, all with the same message."""
    profiles = ("default", "tuned") if args.profile == "both" else (args.profile,)
    variants = [v for v in ("unsigned", "signed") if (v == "unsigned" and "relay" in args.runs)
                or (v == "signed" and "signed" in args.runs)]
    work = Path(tempfile.mkdtemp(prefix="smtpeter-bench-relay-"))
    message_file = work / "message.eml"
    message_file.write_bytes(message(args.size))
    try:
        results = {"postfix": relay_postfix(route, sink, message_file, args)}
        for profile in profiles:
            for variant in variants:
                name = f"smtpeter_{profile}" + ("_signed" if variant == "signed" else "")
                results[name] = relay_smtpeter(new_database(), route, profile, variant == "signed", sink,
                                               message_file, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def relay_postfix(route: str, sink: SmtpSink, message_file: Path, args: argparse.Namespace) -> dict:
    postfix = Postfix(relay_to=route).start()
    try:
        warm_up(postfix.port, sink, args.size, check=False)
        master = postfix_master(postfix)
        before = tree_cpu(master)
        measured = run(postfix.port, sink, message_file, args)
        cpu = tree_cpu_used(before, tree_cpu(master))
    finally:
        postfix.stop()
    return {**measured_figures(measured), "cpu_ms_per_msg": round(1000 * cpu / measured["delivered"], 3)}


def relay_smtpeter(storage_url: str | None, route: str, profile: str, signed: bool, sink: SmtpSink,
                   message_file: Path, args: argparse.Namespace) -> dict:
    smtpeter = Smtpeter(storage_url, extra_toml=delivery_toml(route, hold=False, tuned=profile == "tuned"))
    try:
        signing = enable_signing(smtpeter) if signed else None
        smtpeter.start()
        assert smtpeter.process is not None
        pid = smtpeter.process.pid
        arrived = warm_up(smtpeter.port, sink, args.size, signing)
        before, reactor_before = tree_cpu(pid), cpu_seconds(pid)
        measured = run(smtpeter.port, sink, message_file, args)
        after, reactor_cpu = tree_cpu(pid), cpu_seconds(pid) - reactor_before
        workers = [member for member in after if member != pid]
        worker_rss = sum(peak_rss_kib(member) for member in workers)
        rss = peak_rss_kib(pid)
    finally:
        smtpeter.stop()
    n = measured["delivered"]
    worker_cpu = tree_cpu_used(before, after) - reactor_cpu  # the worker processes'
    return {**measured_figures(measured), "profile": profile, "signed": signed, "arrived": arrived,
            "cpu_ms_per_msg": round(1000 * (reactor_cpu + worker_cpu) / n, 3),
            "reactor_cpu_ms_per_msg": round(1000 * reactor_cpu / n, 3),
            "worker_cpu_ms_per_msg": round(1000 * worker_cpu / n, 3),
            "rss_mib": rss // 1024, "worker_rss_mib": worker_rss // 1024, "workers": len(workers)}


def measured_figures(measured: dict[str, Any]) -> dict[str, Any]:
    latencies = measured["latencies"]
    return {"msgs_per_s": round(measured["delivered"] / measured["total"], 1),
            "injection_s": round(measured["injection"], 2), "end_to_end_s": round(measured["total"], 2),
            "delivered": measured["delivered"], "probes": len(latencies),
            "probe_failures": measured["probe_failures"],
            "latency_p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "latency_max_ms": round(1000 * latencies[-1], 1) if latencies else float("nan")}


def summary(runs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The runs, ratios to Postfix (msg/s), and the flat figures the script printed before
    (the first unsigned smtpeter run's)."""
    postfix = runs["postfix"]
    end_to_end: dict[str, Any] = {"messages": args.messages, "sessions": args.sessions, "size": args.size,
                                  "runs": runs}
    for name, run_figures in runs.items():
        if name != "postfix":
            run_figures["ratio"] = round(run_figures["msgs_per_s"] / postfix["msgs_per_s"], 2)
    unsigned = next((run_figures for name, run_figures in runs.items()
                     if name != "postfix" and not run_figures["signed"]), None)
    end_to_end.update({"postfix_msgs_per_s": postfix["msgs_per_s"],
                       "postfix_injection_s": postfix["injection_s"],
                       "postfix_end_to_end_s": postfix["end_to_end_s"]})
    if unsigned is not None:
        end_to_end.update({
            "smtpeter_msgs_per_s": unsigned["msgs_per_s"], "ratio": unsigned["ratio"],
            "smtpeter_injection_s": unsigned["injection_s"],
            "smtpeter_end_to_end_s": unsigned["end_to_end_s"],
            "smtpeter_cpu_ms_per_msg": unsigned["cpu_ms_per_msg"], "smtpeter_rss_mib": unsigned["rss_mib"]})
    return end_to_end


# -- drain ----------------------------------------------------------------------------------------


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


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--reuse", action="store_true", help="smtp-source sends many messages per connection")
    parser.add_argument("--postgresql", action="store_true", help="smtpeter on a throwaway PostgreSQL")
    parser.add_argument("--drain-messages", type=int, default=3000)
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="which of drain, relay (end to end, Postfix and smtpeter unsigned) and signed "
                             "(end to end, smtpeter signing; Postfix as well) to run, comma-separated")
    parser.add_argument("--drain-only", action="store_true", help="skip the end-to-end runs (--runs drain)")
    parser.add_argument("--profile", choices=("tuned", "default", "both"), default="both",
                        help="smtpeter's delivery profile(s) in the end-to-end runs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="end-to-end rounds (Postfix, then smtpeter, each round): the machine's speed "
                             "drifts over minutes, so ratios are taken within a round; their median "
                             "and range are printed")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--enable-signing", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enable_signing:
        from twisted.internet import defer, task

        async def enable(reactor: Any) -> None:
            print(json.dumps(await _enable_signing(reactor, args.enable_signing)))

        task.react(lambda reactor: defer.Deferred.fromCoroutine(enable(reactor)))  # exits
    args.runs = ("drain",) if args.drain_only else tuple(name.strip() for name in args.runs.split(","))
    if args.rounds < 1:
        parser.error("--rounds takes 1 or more")
    unknown = set(args.runs) - set(RUNS)
    if unknown or not args.runs:
        parser.error(f"--runs takes some of {', '.join(RUNS)}, not {','.join(sorted(unknown))}")

    sink = SmtpSink()
    route = f"{SINK_HOST}:{sink.port}"
    cluster, _ = throwaway_postgres() if args.postgresql else (None, None)
    new_database = cluster.create_database if cluster else lambda: None
    drained, end_to_end = None, []
    try:
        if "drain" in args.runs:
            drained = drains(new_database, route, sink, args)
        if {"relay", "signed"} & set(args.runs):
            end_to_end = [summary(relay_runs(new_database, route, sink, args), args)
                          for _ in range(args.rounds)]
    finally:
        sink.stop()
        if cluster is not None:
            cluster.destroy()
    report(args, drained, end_to_end)


def report(args: argparse.Namespace, drained: dict[str, dict] | None, rounds: list[dict]) -> None:
    storage = "postgresql" if args.postgresql else "sqlite"
    drain = None if drained is None else {name: {key: round(value, 2) for key, value in figures.items()}
                                          for name, figures in drained.items()}
    if args.json:
        print(json.dumps({"storage": storage, "drain_messages": args.drain_messages, "drain": drain,
                          "end_to_end": (rounds[0] if len(rounds) == 1 else rounds) if rounds else None},
                         indent=2))
        return
    if drain is not None:
        print(f"drain: {args.drain_messages} queued messages of {args.size} bytes to one destination "
              f"-> smtp-sink, smtpeter on {storage}")
        print(f"{'':18} {'first s':>8} {'msg/s':>9} {'CPU ms/msg':>11}")
        for name, figures in drain.items():
            cpu = figures.get("cpu_ms_per_msg", "")
            print(f"{name:18} {figures['first_s']:>8.2f} {figures['msgs_per_s']:>9} {cpu:>11}")
    for number, end_to_end in enumerate(rounds, 1):
        if len(rounds) > 1:
            print(f"-- round {number} of {len(rounds)}")
        report_round(args, storage, end_to_end)
    if len(rounds) > 1:
        print(f"across {len(rounds)} rounds: ratio to Postfix (msg/s), median and range")
        for name in rounds[0]["runs"]:
            if name != "postfix":
                ratios = sorted(r["runs"][name]["ratio"] for r in rounds)
                print(f"  {name}: median {statistics.median(ratios)}, {ratios[0]}-{ratios[-1]} "
                      f"({sum(r >= 1.0 for r in ratios)} of {len(ratios)} rounds at 1.0 or more)")


def report_round(args: argparse.Namespace, storage: str, end_to_end: dict) -> None:
    runs = end_to_end["runs"]
    probes = runs["postfix"]["delivered"] - end_to_end["messages"]
    print(f"relay: {end_to_end['messages']} messages of {args.size} bytes (+ about {probes} probes), "
          f"{args.sessions} sessions, smtp-source -> relay -> smtp-sink, smtpeter on {storage}")
    print(f"{'':24} {'injection s':>11} {'end-to-end s':>12} {'msg/s':>8} {'ratio':>6} "
          f"{'CPU ms/msg':>10} {'(reactor':>8} {'workers)':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'RSS MiB':>7} {'(workers)':>9}")
    for name, row in runs.items():
        cpu = (f"{row['cpu_ms_per_msg']:>10} {row['reactor_cpu_ms_per_msg']:>8} "
               f"{row['worker_cpu_ms_per_msg']:>8}" if name != "postfix"
               else f"{row['cpu_ms_per_msg']:>10} {'':>8} {'':>8}")
        rss = f"{row['rss_mib']:>7} {row['worker_rss_mib']:>9}" if name != "postfix" else ""
        print(f"{name:24} {row['injection_s']:>11.2f} {row['end_to_end_s']:>12.2f} {row['msgs_per_s']:>8} "
              f"{row.get('ratio', ''):>6} {cpu} {row['latency_p50_ms']:>7} {row['latency_p99_ms']:>7} {rss}")
    for name, row in runs.items():
        if name == "postfix":
            continue
        arrived = row["arrived"]
        envelope = f"MAIL FROM <{arrived['mail_from']}>"
        how = (f"signed by {', '.join(arrived['selectors'])} (dkimpy verified), {envelope}"
               if row["signed"] else f"unsigned, {envelope}")
        print(f"{name}: ratio {row['ratio']} to Postfix; CPU {row['cpu_ms_per_msg']} ms/msg "
              f"(reactor {row['reactor_cpu_ms_per_msg']}, workers {row['worker_cpu_ms_per_msg']}), "
              f"peak RSS {row['rss_mib']} MiB + {row['worker_rss_mib']} MiB workers; warm-up {how}")
    for profile in ("default", "tuned"):
        signed, unsigned = runs.get(f"smtpeter_{profile}_signed"), runs.get(f"smtpeter_{profile}")
        if signed is not None and unsigned is not None:
            print(f"{profile} profile: signed/Postfix-unsigned {signed['ratio']}, signed/unsigned "
                  f"{round(signed['msgs_per_s'] / unsigned['msgs_per_s'], 2)}; CPU ms/msg signed "
                  f"{signed['cpu_ms_per_msg']} vs unsigned {unsigned['cpu_ms_per_msg']}")


if __name__ == "__main__":
    main()
