"""Enhanced status codes (RFC 3463), SMTP reply codes and SMTP commands found in free text.

Bounce texts quote the remote server's reply with everything else around it:
IP addresses, version numbers, queue ids, dates. These functions pick the codes
out of such text without mistaking ``192.0.2.1`` for a status or ``Exim 4.72``
for a reply.
"""

from __future__ import annotations

import re

# An IPv4 address, masked before looking for status codes ("2.0.2.1" is not 2.0.2).
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
# class.subject.detail; not preceded by something that makes it part of a longer
# number, a version ("v5.1.1") or a path, not followed by more dotted digits.
_STATUS = re.compile(r"(?<![\w./+])([245])\.([0-7])\.(\d{1,3})(?!\.?\d)")
_REPLY = re.compile(r"(?<![\w.\-/+#=:])([245]\d\d)(?![\w.]?\d)(?!@)")

# Reply codes RFC 5321 and its extensions define (211..556; 3yz is never a failure).
VALID_REPLY_CODES = frozenset(
    "211 214 220 221 235 250 251 252 253 421 422 430 432 450 451 452 453 454 455 458 459 "
    "500 501 502 503 504 521 523 524 525 530 533 534 535 538 550 551 552 553 554 555 556".split()
)


def is_status(code: str) -> bool:
    return bool(re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", code or ""))


def find_statuses(text: str) -> list[str]:
    """Every enhanced status code in ``text``, in order."""
    if not text:
        return []
    masked = _IPV4.sub(" ", text)
    return [".".join(m.groups()) for m in _STATUS.finditer(masked)]


def find_status(text: str, klass: str = "") -> str:
    """The most telling enhanced status code in ``text`` ("" if none).

    X.0.0 ("other or undefined") and 4.4.7 (the catch-all "delivery time
    expired") only count when nothing more specific is there; ``klass``
    ("4"/"5") keeps to codes of that class when there are any.
    """
    found = find_statuses(text)
    if klass and any(code[0] == klass for code in found):
        found = [code for code in found if code[0] == klass]
    vague = [code for code in found if code[1:] == ".0.0" or code == "4.4.7"]
    ordered = [code for code in found if code not in vague] + vague[-1:]
    chosen = ""
    for code in ordered:
        chosen = prefer_status(chosen, code) if chosen else code
    return chosen


def prefer_status(field: str, found: str, replycode: str = "") -> str:
    """Of two status codes for one failure (the Status: field and one in the text, or two in
    the text), the one that says more; ``replycode`` settles a disagreement on the class."""
    if not field:
        return found
    if not found or field == found:
        return field
    if replycode and field[0] != found[0]:
        if replycode[0] == field[0]:
            return field
        if replycode[0] == found[0]:
            return found
    if field[1:] == ".0.0":
        return found if found[1:] != ".0.0" else field
    if field.endswith(".0") and not found.endswith(".0") and ".0." not in found:
        return found
    if found[1:] == ".0.0":
        return field
    # Codes that say little next to a more specific one in the text.
    vague = field in ("4.4.7", "4.7.0") or field.startswith("5.3.")
    if vague or field[1:].startswith((".5.1", ".5.2", ".5.4", ".5.5")):
        return found
    if field == "5.1.1":
        return field if ".0" in found or found.startswith("5.5.") else found
    if field == "5.1.3" and found.startswith("5.7."):
        return found
    return field


def find_replycodes(text: str) -> list[str]:
    if not text or "x-unix" in text.lower():
        return []
    return [m.group(1) for m in _REPLY.finditer(text) if m.group(1) in VALID_REPLY_CODES]


def find_replycode(text: str, status: str = "") -> str:
    """The SMTP reply code in ``text`` ("" if none), of the status code's class when it has one.

    A code right before an enhanced status code ("550 5.1.1", "550-5.7.1") is
    the server's reply for sure; otherwise the first valid code.
    """
    codes = find_replycodes(text)
    if status and status[0] in "245":
        codes = [code for code in codes if code[0] == status[0]] or ([] if status[0] != "2" else codes)
    if not codes:
        return ""
    paired = re.search(r"(?<![\d.])([245]\d\d)[ \-]+[245]\.\d{1,3}\.\d{1,3}", text)
    if paired and paired.group(1) in codes:
        return paired.group(1)
    return codes[0]


# SMTP commands in the order a session reaches them: when a text names several,
# the one furthest along is the one that failed.
_COMMAND_ORDER = ["CONN", "HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA"]
_COMMAND_PHRASES: list[tuple[str, re.Pattern[str]]] = [
    ("DATA", re.compile(r"end of (?:data|message)|final data|after data\b|data command|\bdata response"
                        r"|message (?:body|content) (?:was )?rejected|while sending (?:the )?message", re.I)),
    ("RCPT", re.compile(r"rcpt[ _]to|rcpt command|\brcpt\b|recipient command", re.I)),
    ("MAIL", re.compile(r"mail[ _]from|mail command", re.I)),
    ("CONN", re.compile(r"initial connection|after connect|greeting|banner|connection (?:attempt|refused)",
                        re.I)),
    ("STARTTLS", re.compile(r"\bstarttls\b", re.I)),
    ("AUTH", re.compile(r"\bAUTH (?:PLAIN|LOGIN|CRAM|DIGEST)")),
]
# qmail-remote's words for where the session failed.
_QMAIL_STAGES = [
    ("CONN", " but greeting failed."), ("EHLO", " but my name was rejected."), ("MAIL",
                                                                                " but sender was rejected."),
    ("RCPT", " does not like recipient."), ("DATA", " failed on DATA command"),
    ("DATA", " failed after I sent the message"),
]
_COMMAND_WORDS = re.compile(r"(?<![\w@.\-])(HELO|EHLO|STARTTLS|MAIL|RCPT|DATA)(?![\w@\-]|\.\w)")


_EXPLICIT_COMMAND = re.compile(
    r"in reply to (?:the )?(.{2,20}?) command"
    r"|after (?:the )?(end of data|data|rcpt to|mail from|initial connection|helo|ehlo|starttls|auth)"
    r"|>>> ?([A-Za-z]{4})"
    r"|did not like our (?:final )?(rcpt to|mail from|data|helo|ehlo)"
    r"|most progress was (rcpt to|mail from|data) response", re.I)


def find_command(text: str) -> str:
    """The SMTP command a bounce text says failed: "RCPT", "DATA", "MAIL", "EHLO", ... or ""."""
    if not text:
        return ""
    # The explicit forms first: Postfix's "(in reply to RCPT TO command)", Exim's
    # "after RCPT TO:<...>", Sendmail's ">>> DATA", qmail's "RCPT TO response".
    for command, pattern in _QMAIL_STAGES:
        if pattern in text:
            return command
    explicit = _EXPLICIT_COMMAND.search(text)
    if explicit:
        named = next(group for group in explicit.groups() if group)
        found = _command_in(named)
        if found:
            return found
    return _command_in(text)


def _command_in(text: str) -> str:
    seen = set()
    for name, pattern in _COMMAND_PHRASES:
        if pattern.search(text):
            seen.add(name)
    for m in _COMMAND_WORDS.finditer(text):
        seen.add(m.group(1))
    if not seen:
        return ""
    return max(seen, key=_COMMAND_ORDER.index)
