"""Proof that a hook's owner controls its URL, before the hook gets a single event (as SMTPeter asks).

Without it anyone could point our calls, with their volume and retries, at someone else's
server. ``prove`` tries, in this order:

1. **network**: every address the URL's host resolves to lies inside ``webhooks.allow_networks``
   (the operator's own network): nothing to prove.
2. **file**: ``GET <origin>/.well-known/smtpeter-webhook-<token>.txt`` answers 200 with the hook's
   token in its body (the token is shown when the hook is made; the file may go once proven).
3. **challenge**: one POST to the URL itself, signed like every call, with the body
   ``{"type": "verification", "webhook": ID, "challenge": RANDOM}``, answered with a 2xx whose body
   is the challenge, or a JSON object whose ``challenge`` it is.

A URL whose host has no public address (and is not inside ``allow_networks``) is never requested.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smtpeter.ids import new_id
from smtpeter.ingress.http.image_fetch import Network
from smtpeter.webhooks.client import CallError, WebhookClient, inside
from smtpeter.webhooks.model import body_text
from smtpeter.webhooks.signing import signed_headers

NETWORK, FILE, CHALLENGE = "network", "file", "challenge"
_READ = 4096  # bytes of an answer read for a proof


@dataclass(frozen=True)
class Proof:
    method: str | None  # NETWORK, FILE or CHALLENGE; None: not proven
    problem: str  # why not ("" once proven)


def new_token() -> str:
    return secrets.token_hex(16)


def token_file_url(url: str, token: str) -> str:
    """Where the ownership file of a hook on ``url`` is looked for."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/.well-known/smtpeter-webhook-{token}.txt",
                                    "", ""))


async def prove(client: WebhookClient, hook_id: str, url: str, token: str, signing_secrets: Sequence[str],
                wall: Callable[[], float], no_proof_networks: Sequence[Network] | None = None) -> Proof:
    """Whether (and how) the owner of hook ``hook_id`` on ``url`` controls it. Receivers inside
    ``no_proof_networks`` (default: the client's ``allow_networks``) need no proof."""
    trusted = client.allow_networks if no_proof_networks is None else no_proof_networks
    try:
        addresses = await client.addresses(url)
    except CallError as exc:
        return Proof(None, str(exc))
    if all(inside(address, trusted) for address in addresses):
        return Proof(NETWORK, "")
    problems = []
    try:
        answer = await client.request(b"GET", token_file_url(url, token), {b"accept": b"text/plain"},
                                      read=_READ)
    except CallError as exc:
        problems.append(f"ownership file: {exc}")
    else:
        if answer.status == 200 and token.encode("ascii") in answer.body:
            return Proof(FILE, "")
        problems.append(f"ownership file: answered {answer.status}"
                        + (" without the token" if answer.status == 200 else ""))
    challenge = secrets.token_urlsafe(24)
    body = body_text({"type": "verification", "webhook": hook_id, "challenge": challenge}).encode("utf-8")
    headers = {b"content-type": b"application/json",
               **signed_headers("msg_" + new_id(), int(wall()), body, signing_secrets)}
    try:
        answer = await client.request(b"POST", url, headers, body, read=_READ)
    except CallError as exc:
        problems.append(f"verification call: {exc}")
    else:
        if 200 <= answer.status < 300 and _echoes(answer.body, challenge):
            return Proof(CHALLENGE, "")
        problems.append(f"verification call: answered {answer.status}"
                        + (" without the challenge" if 200 <= answer.status < 300 else ""))
    return Proof(None, "; ".join(problems))


def _echoes(answer: bytes, challenge: str) -> bool:
    text = answer.decode("utf-8", "replace").strip()
    if text == challenge:
        return True
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("challenge") == challenge
