"""schemathesis against /v1/openapi.json of a running twistd: no 5xx on any generated input,
and every response in the shape and content type the document promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

from smtpeter.ingress.http import openapi
from tests.support.harness import wait_for_port
from tests.support.postgres import free_port

BIN = Path(sys.executable).parent


class SchemathesisTests(unittest.TestCase):
    timeout = 600

    def test_generated_requests_never_get_a_server_error(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="smtpeter-schemathesis-"))
        port = free_port()
        config = directory / "smtpeter.toml"
        config.write_text(
            f'[server]\nhostname = "mx.test"\ndata_dir = "{directory / "data"}"\n'
            f'[smtp]\nlisten = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
            f'[http]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\npublic_url = "http://127.0.0.1:{port}"\n'
            "[delivery]\nhold = true\n"
        )
        cli = [str(BIN / "smtpeter"), "--config", str(config)]
        created = json.loads(subprocess.run([*cli, "account", "create", "acme", "--json"], check=True,
                                            capture_output=True, text=True).stdout)
        subprocess.run([*cli, "domain", "add", "acme", "example.com", "--approve"], check=True,
                       capture_output=True)
        # Its log goes to a file: a pipe nobody reads would fill up and stop the server.
        log = open(directory / "twistd.log", "w")
        self.addCleanup(log.close)
        twistd = [str(BIN / "twistd"), "-n", "--pidfile=", "smtpeter", "--config", str(config)]
        server = subprocess.Popen(twistd, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (server.terminate(), server.wait(30)))
        wait_for_port(port, process=server)
        result = subprocess.run(
            [str(BIN / "schemathesis"), "run", f"http://127.0.0.1:{port}/v1/openapi.json",
             "--header", f"Authorization: Bearer {created['api_token']}",
             "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
             "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "1",
             "--workers", "1", "--request-timeout", "20", "--no-color"],
            capture_output=True, text=True, cwd=directory, timeout=540,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output[-6000:])
        # Every operation of the document ran (/v1/send among them). Which operations the summary names
        # depends on how the generated data fared, so it cannot tell.
        selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
        self.assertIsNotNone(selected, output[-2000:])
        self.assertEqual(selected.group(1), selected.group(2))
        self.assertIn("/v1/send", openapi.document(f"http://127.0.0.1:{port}")["paths"])
