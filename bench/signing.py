"""DKIM signing benchmark: signed messages/s on one core, next to the raw signing rate and dkimpy.

For 2 KB and 50 KB messages (a text part and an indented HTML part, as a
mailing's) and RSA-2048, ed25519 and both (dual-signed, RFC 8463: how a sender
domain with both keys signs), on one core of this process:

* smtpeter: the pipeline's last step as a worker runs it (``steps.wire_form``
  for an 8BITMIME peer with the DKIM step: CRLF line ends, canonicalisation,
  hashes, the signature fields);
* cryptography: the raw signing rate of the keys over a SHA-256 digest
  (OpenSSL), what a signature costs with nothing around it: the limit;
* dkimpy: ``dkim.sign`` as dkimpy ships it (its pure-Python RSA, its
  canonicalisation, the PEM parsed per signature); its ed25519 is PyNaCl.

    python bench/signing.py [--seconds 1.0] [--sizes 2048,51200] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import canonicalization

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.outbound import dkim, steps
from smtpeter.outbound.job import OutboundJob, SenderAuth, StepSettings
from smtpeter.storage.models import StoredMessage

HEADER = (b"Received: from app.example.com (app.example.com [192.0.2.10])\r\n"
          b"\tby mx.smtpeter.test with ESMTPS; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
          b"From: Example News <news@example.com>\r\nTo: Someone <someone@example.net>\r\n"
          b"Subject: This week's offers, picked for you\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
          b"Message-ID: <01hx7k5v9q3m2n8p4r6t@example.com>\r\nMIME-Version: 1.0\r\n"
          b"List-Unsubscribe: <https://example.com/unsubscribe?u=123>\r\n"
          b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n')
TEXT_LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.\r\n"
HTML_LINE = b'      <tr>  <td class="cell" style="padding: 8px">Ut enim ad minim veniam</td></tr>\r\n'
TEXT_PART = b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
HTML_PART = b"\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
END = b"\r\n--b1--\r\n"


def message(size: int) -> bytes:
    """A multipart/alternative message of ``size`` bytes: half text, half indented HTML."""
    room = max(0, size - len(HEADER) - len(TEXT_PART) - len(HTML_PART) - len(END))
    text = (TEXT_LINE * (room // 2 // len(TEXT_LINE) + 1))[:room // 2]
    html = (HTML_LINE * (room // 2 // len(HTML_LINE) + 1))[:room - room // 2]
    return HEADER + TEXT_PART + text + HTML_PART + html + END


def rate(work: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``work``, over about ``seconds``."""
    work()  # warm: keys loaded, caches filled as in a running worker
    count, started = 0, time.perf_counter()
    while True:
        for _ in range(10):
            work()
        count += 10
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


class DkimpyAsShipped:
    """dkimpy without dkim.py's replacements (OpenSSL RSA, faster canonicalisation, parsed keys)."""

    def __enter__(self) -> None:
        self.saved = (dkimpy.RSASSA_PKCS1_v1_5_sign, canonicalization.Relaxed.canonicalize_body,
                      dkimpy.parse_pem_private_key)
        dkimpy.RSASSA_PKCS1_v1_5_sign = dkimpy.crypto.RSASSA_PKCS1_v1_5_sign
        canonicalization.Relaxed.canonicalize_body = staticmethod(dkim.DKIMPY_RELAXED_BODY)
        dkimpy.parse_pem_private_key = dkim.DKIMPY_PARSE_PEM

    def __exit__(self, *exc: object) -> None:
        (dkimpy.RSASSA_PKCS1_v1_5_sign, relaxed, dkimpy.parse_pem_private_key) = self.saved
        canonicalization.Relaxed.canonicalize_body = staticmethod(relaxed)


def dkimpy_sign(content: bytes, keys: list[dkim.SigningKey]) -> bytes:
    """The same signatures (headers, canonicalisation) by dkimpy's own ``sign``, one call per key."""
    headers = dkim.signed_headers([name for name, _ in dkimpy.rfc822_parse(content)[0]])
    fields = [dkimpy.sign(content, key.selector.encode(), key.domain.encode(), key.dkimpy_key(),
                          canonicalize=dkim.CANONICALIZE, signature_algorithm=dkim.ALGORITHMS[key.algorithm],
                          include_headers=headers, linesep=b"\r\n") for key in keys]
    return b"".join(fields) + content


def raw_signer(key: dkim.SigningKey) -> Callable[[], bytes]:
    private: Any = serialization.load_pem_private_key(key.private_key, password=None)
    digest = hashlib.sha256(b"the canonical header").digest()
    if key.algorithm == "rsa":
        return lambda: private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return lambda: private.sign(digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--sizes", default="2048,51200")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # one core: the rate of one worker process
    rsa = dkim.SigningKey("example.com", "zero", "rsa", dkim.new_key("rsa"))
    ed25519 = dkim.SigningKey("example.com", "zero-ed", "ed25519", dkim.new_key("ed25519"))
    raw = {key.algorithm: rate(raw_signer(key), args.seconds) for key in (rsa, ed25519)}
    settings = StepSettings("http://track.test", (b"key",))
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        content = message(size)
        stored = StoredMessage("01hx7k5v9q3m2n8p4r", "acct", "smtp", Envelope("news@example.com"), b"",
                               MessageOptions(), [], 0.0, 1.0)
        for name, keys in (("rsa-2048", [rsa]), ("ed25519", [ed25519]), ("both", [rsa, ed25519])):
            envelope = Envelope("news@example.com", (Recipient("someone@example.net"),))
            job = OutboundJob(stored, envelope, content, ("01hx7k5v9q3m2n8p4s",),
                              SenderAuth("example.com", tuple(keys)))
            signed, warnings = steps.wire_form(job, True, steps.LAST_STEPS, settings)
            assert not warnings and signed.count(b"DKIM-Signature:") == len(keys), warnings
            ours = rate(lambda job=job: steps.wire_form(job, True, steps.LAST_STEPS, settings), args.seconds)
            with DkimpyAsShipped():
                theirs = rate(lambda content=content, keys=keys: dkimpy_sign(content, keys), args.seconds)
            limit = 1 / sum(1 / raw[key.algorithm] for key in keys)
            results.append({"size": len(content), "keys": name, "smtpeter_msgs_per_s": round(ours),
                            "smtpeter_ms_per_msg": round(1000 / ours, 3),
                            "cryptography_limit_per_s": round(limit),
                            "dkimpy_msgs_per_s": round(theirs), "vs_dkimpy": round(ours / theirs, 1),
                            "of_limit": round(ours / limit, 2)})

    if args.json:
        print(json.dumps({"core": core, "raw_signatures_per_s": {k: round(v) for k, v in raw.items()},
                          "results": results}, indent=2))
        return
    print(f"DKIM signing on one core (cpu {core}); raw cryptography signatures/s: "
          f"RSA-2048 {raw['rsa']:.0f}, ed25519 {raw['ed25519']:.0f}")
    print(f"{'size':>7} {'keys':>9} {'smtpeter msg/s':>15} {'ms/msg':>7} {'limit/s':>8} {'of limit':>9} "
          f"{'dkimpy msg/s':>13} {'vs dkimpy':>10}")
    for r in results:
        print(f"{r['size']:>7} {r['keys']:>9} {r['smtpeter_msgs_per_s']:>15} {r['smtpeter_ms_per_msg']:>7} "
              f"{r['cryptography_limit_per_s']:>8} {r['of_limit']:>9} {r['dkimpy_msgs_per_s']:>13} "
              f"{r['vs_dkimpy']:>9}x")


if __name__ == "__main__":
    main()
