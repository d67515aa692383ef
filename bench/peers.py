"""Running the programs we measure ourselves against, and ourselves, for the benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.harness import wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None and not Path(p).exists()]
    if missing:
        sys.exit(f"missing programs: {', '.join(missing)} (apt-get install postfix swaks)")


def _postfix(config_dir: Path, *args: str) -> None:
    # postfix prints its errors to the terminal only; `script` gives it one.
    result = subprocess.run(["script", "-qec", f"postfix -c {config_dir} {' '.join(args)}", "/dev/null"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"postfix {' '.join(args)} failed: {result.stdout}{result.stderr}")


class Postfix:
    """A private Postfix instance (needs root) with its own config and queue in a temp dir.

    ``relay_to`` ("host:port") makes it relay everything there; without it,
    accepted mail is queued (fsynced) and held, so only ingress is measured.
    """

    def __init__(self, relay_to: str | None = None, extra: dict[str, str] | None = None) -> None:
        require("postfix", "script")
        self.dir = Path(tempfile.mkdtemp(prefix="smtpeter-bench-postfix-"))
        self.dir.chmod(0o755)  # Postfix's daemons run as the postfix user
        self.port = free_port()
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "queue"),
            "data_directory": str(self.dir / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "alias_maps": "",
            "alias_database": "",
            "default_process_limit": "200",
        }
        if relay_to:
            settings["relayhost"] = f"[{relay_to.rsplit(':', 1)[0]}]:{relay_to.rsplit(':', 1)[1]}"
            settings["smtp_tls_security_level"] = "none"
        else:
            settings["smtpd_data_restrictions"] = "check_client_access static:HOLD"
        settings.update(extra or {})
        etc = self.dir / "etc"
        etc.mkdir()
        (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        master = Path("/etc/postfix/master.cf").read_text().replace(
            "smtp      inet  n       -       y       -       -       smtpd",
            f"{self.port}      inet  n       -       n       -       -       smtpd", 1)
        (etc / "master.cf").write_text(master)
        (self.dir / "queue").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", "postfix")
        self.config_dir = etc

    def start(self) -> Postfix:
        _postfix(self.config_dir, "check")
        _postfix(self.config_dir, "start")
        wait_for_port(self.port)
        return self

    def release_held(self) -> None:
        """Move every held message to the deferred queue and flush it: delivery starts now."""
        for command in (["postsuper", "-c", str(self.config_dir), "-H", "ALL"],
                        ["postqueue", "-c", str(self.config_dir), "-f"]):
            subprocess.run(command, check=True, capture_output=True)

    def queued(self, queue: str) -> int:
        return sum(len(files) for _, _, files in os.walk(self.dir / "queue" / queue))

    def stop(self) -> None:
        try:
            _postfix(self.config_dir, "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class Smtpeter:
    """``twistd -n smtpeter`` as a user runs it, trusting loopback as account "apps"."""

    def __init__(self, storage_url: str | None = None, extra_toml: str = "[delivery]\nhold = true\n") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="smtpeter-bench-"))
        self.port = free_port()
        self.config = self.dir / "smtpeter.toml"
        self.storage_url = storage_url
        self.configure(extra_toml)
        self.cli("account", "create", "apps")
        self.cli("domain", "add", "apps", "example.com", "--approve")
        self.process: subprocess.Popen | None = None

    def configure(self, extra_toml: str) -> None:
        """(Re)write the config file; a running process sees it at its next start."""
        storage = f'[storage]\nurl = "{self.storage_url}"\n' if self.storage_url else ""
        self.config.write_text(
            f'[server]\nhostname = "smtpeter.bench.test"\ndata_dir = "{self.dir / "data"}"\n{storage}'
            f'[smtp]\nlisten = ["tcp:{self.port}:interface=127.0.0.1"]\n'
            'trusted_networks = ["127.0.0.0/8"]\ntrusted_account = "apps"\n'
            'max_connections_per_client = 1000\n' + extra_toml
        )

    def cli(self, *args: str) -> str:
        return subprocess.run([str(BIN / "smtpeter"), "--config", str(self.config), *args],
                              check=True, capture_output=True, text=True).stdout

    def start(self) -> Smtpeter:
        self.log = open(self.dir / "twistd.log", "a")
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "smtpeter", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        return self

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return {line.split(":")[0]: int(line.split()[1]) for line in status
                if line.startswith(("VmRSS", "VmHWM"))}

    def stop_process(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.log.close()
            self.process = None

    def stop(self) -> str:
        """Stop it and remove its files; returns its log."""
        self.stop_process()
        log = self.dir / "twistd.log"
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(self.dir, ignore_errors=True)
        return text


def throwaway_postgres() -> tuple[Any, str]:
    """A PostgreSQL cluster in a temp dir (tests/support/postgres.py) and a fresh database's URL."""
    from tests.support.postgres import TemporaryCluster

    cluster = TemporaryCluster()
    cluster.init()
    cluster.start()
    return cluster, cluster.create_database()


def smtp_source(port: int, messages: int, sessions: int, size: int, reuse: bool = False,
                recipients: int = 1) -> float:
    """Run Postfix's smtp-source; return the wall-clock seconds it took."""
    require("smtp-source")
    args = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-r", str(recipients), "-f", "app@example.com", "-t", "rcpt@example.net"]
    if reuse:
        args.append("-d")
    started = time.monotonic()
    subprocess.run([*args, f"127.0.0.1:{port}"], check=True)
    return time.monotonic() - started
