"""The outbound SMTP conversation without sockets (the h11 model, like the server's ``server_session``).

``ClientSession`` is fed the server's reply lines and asked to run a
transaction or to QUIT; it answers with outputs: bytes to send, "start TLS
now", "ready", "finished with these results", "failed", "close". It knows
which step every reply it waits for belongs to, and that step's timeout
(RFC 5321 §4.5.3.2): the adapter in ``client_connection`` keeps one timer
per connection on it, and results name the step their verdict came at.
The session never changes the message: the outbound pipeline gives each
peer its final bytes (``Context.for_peer``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from smtpeter.address import xtext_encode
from smtpeter.attempt import Capabilities, RecipientResult
from smtpeter.config import Timeouts
from smtpeter.envelope import Envelope, Recipient
from smtpeter.mime.lines import crlf_lines

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_LINE = re.compile(rb"^([2-5]\d\d)([ -]?)(.*)$", re.S)


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def status(self) -> str | None:
        """The enhanced status code (RFC 3463) of the first line, if it has one."""
        match = _STATUS.match(self.lines[0]) if self.lines else None
        return match.group(0) if match else None

    @property
    def text(self) -> str:
        """All lines joined by spaces, as a diagnostic for events and DSNs."""
        return " ".join(line.strip() for line in self.lines).strip()

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @property
    def ok(self) -> bool:
        """Positive completion or intermediate (2xx, 3xx), as for EHLO or DATA's 354."""
        return 200 <= self.code < 400

    @property
    def positive(self) -> bool:
        """Positive completion (2xx): what MAIL, RCPT and the final dot must get."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class ReplyParser:
    """Collects the lines of multi-line replies (``250-...`` up to ``250 ...``)."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._lines: list[str] = []

    def line(self, raw: bytes) -> Reply | None:
        match = _REPLY_LINE.match(raw)
        if not match:
            raise ProtocolError(f"not an SMTP reply: {raw[:80]!r}")
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed inside a multi-line reply: {raw[:80]!r}")
        self._code = code
        self._lines.append(match.group(3).decode("utf-8", "replace"))
        if match.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply


def capabilities_from_ehlo(reply: Reply) -> Capabilities:
    """What an EHLO reply offers."""
    keywords: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, value = line.strip().partition(" ")
        keywords[keyword.upper()] = value.strip()
    size = keywords.get("SIZE")
    return Capabilities(
        esmtp=True,
        pipelining="PIPELINING" in keywords,
        size=int(size) if size and size.isdigit() and int(size) > 0 else None,
        eightbitmime="8BITMIME" in keywords,
        smtputf8="SMTPUTF8" in keywords,
        dsn="DSN" in keywords,
        starttls="STARTTLS" in keywords,
        enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
    )


def data_payload(message: bytes) -> bytes:
    """The bytes to send after 354: CRLF everywhere, every leading dot doubled, then ``.``.

    Works on the whole message at once, so where a transport would cut it into
    chunks can never matter: a line ``.`` at any offset is stuffed to ``..``
    and cannot end the DATA early. Bare CR and bare LF become CRLF, so no
    ambiguous line ending leaves us (RFC 5321 §2.3.8).
    """
    stuffed = (b"\r\n" + crlf_lines(message)).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n"


class SessionError(Exception):
    """The session (not one recipient) failed at ``state``; all its recipients share the result."""

    def __init__(self, state: str, description: str, reply: Reply | None = None,
                 permanent: bool = False) -> None:
        super().__init__(description)
        self.state = state
        self.description = description
        self.reply = reply
        self.permanent = permanent


class NotForThisPeer(Exception):
    """A transaction cannot go to this peer at all (``Context.for_peer`` says why): its
    recipients fail with ``status`` without a command being sent."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


@dataclass(frozen=True)
class Transaction:
    """One message for one or more recipients: MAIL FROM, RCPT TO..., DATA."""

    envelope: Envelope  # the sender ("" for <>), the recipients with their DSN requests, RET, ENVID
    message: bytes  # final: sent as it is (only dot-stuffed)
    # What the outbound pipeline made this of: opaque here, handed back to ``Context.for_peer``.
    job: object | None = None

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        return self.envelope.recipients

    def with_recipients(self, recipients: Iterable[Recipient]) -> Transaction:
        return replace(self, envelope=self.envelope.with_recipients(recipients))

    def with_message(self, message: bytes) -> Transaction:
        return replace(self, message=message)


def result_from_reply(address: str, state: str, reply: Reply) -> RecipientResult:
    """A recipient's result from the reply at ``state`` (delivered only by the reply to the message)."""
    status = reply.status or (f"{str(reply.code)[0]}.0.0" if reply.code >= 400 else "2.0.0")
    return RecipientResult(address, state, reply.code, status, str(reply),
                           delivered=reply.positive and state == "message", permanent=reply.code >= 500)


def needs_smtputf8(tx: Transaction) -> bool:
    """Whether the message really needs SMTPUTF8 (RFC 6531): a non-ASCII address or header.

    A client may ask for SMTPUTF8 on mail that needs none; such mail still goes
    to a server without it.
    """
    if not (tx.envelope.sender or "").isascii() or any(not r.address.isascii() for r in tx.recipients):
        return True
    end = tx.message.find(b"\r\n\r\n")
    return not (tx.message if end < 0 else tx.message[:end]).isascii()


# -- what the session asks of its adapter ------------------------------------------------------------


@dataclass(eq=False)
class AwaitedReply:
    """A reply the session waits for: the step it answers, and how long it may take to come."""

    state: str
    timeout: float


class StartTLS:
    """Start the TLS handshake now; input the server sent behind its 220 is discarded."""


class Ready:
    """Greeting, EHLO (or HELO) and STARTTLS are done: transactions may begin."""


@dataclass
class Finished:
    """The transaction is over: one result per recipient, in the transaction's order."""

    results: list[RecipientResult]


@dataclass
class Failed:
    """The session failed (whatever was under way with it); it carries no more transactions."""

    error: SessionError


class Close:
    """Close the connection once what was sent before has gone out."""


class Abort:
    """Drop the connection at once (a timeout, a server that speaks no SMTP)."""


Output = bytes | StartTLS | Ready | Finished | Failed | Close | Abort

# A 421 at these steps ends the session (RFC 5321 §3.8): nothing after it will be
# answered, so the transaction gets that reply, whose text the backoff rules need.
_TRANSACTION_STEPS = frozenset({"mailfrom", "rcptto", "data", "message"})


@dataclass
class _Progress:
    """The transaction under way: the commands it needs and the replies so far."""

    transaction: Transaction
    payload: bytes
    mail: bytes
    rcpts: list[bytes]
    pipelined: bool
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    data_reply: Reply | None = None
    # By position in the transaction: the same address may be there twice.
    results: dict[int, RecipientResult] = field(default_factory=dict)
    accepted: list[int] = field(default_factory=list)  # the recipients the final reply is for


class ClientSession:
    """One outbound SMTP conversation: replies in, commands and results out.

    It starts waiting for the greeting; then EHLO (HELO if refused) and, as
    ``tls`` ("disabled", "opportunistic" or "required") and the server's
    offer decide, STARTTLS and EHLO again, then ``Ready``. Each
    ``transaction`` ends in ``Finished`` or ``Failed``; ``quit`` in ``Close``.
    """

    def __init__(self, helo_name: str, timeouts: Timeouts, tls: str) -> None:
        self.helo_name = helo_name.encode("idna")
        self.timeouts = timeouts
        self.tls_policy = tls
        self.capabilities = Capabilities()
        self.tls = False  # the server accepted STARTTLS
        self.established = False  # Ready was given
        self.usable = True  # another transaction may start
        self.transactions = 0
        self._parser = ReplyParser()
        self._expected: deque[AwaitedReply] = deque([AwaitedReply("greeting", timeouts.greeting)])
        self._progress: _Progress | None = None
        self._handlers: dict[str, Callable[[Reply], list[Output]]] = {
            "greeting": self._on_greeting, "ehlo": self._on_ehlo, "helo": self._on_helo,
            "starttls": self._on_starttls, "rset": self._on_rset, "mailfrom": self._on_mailfrom,
            "rcptto": self._on_rcptto, "data": self._on_data, "message": self._on_message,
            "quit": self._on_quit,
        }

    @property
    def expecting(self) -> AwaitedReply | None:
        """The step whose reply comes next, if the session waits for one (for the adapter's timer)."""
        return self._expected[0] if self._expected else None

    # -- what the adapter feeds in -------------------------------------------------------

    def line(self, raw: bytes) -> list[Output]:
        """One line from the server, without its CRLF."""
        try:
            reply = self._parser.line(raw)
        except ProtocolError as exc:
            return self.protocol_error(str(exc))
        if reply is None:
            return []
        if not self._expected:
            # A reply to nothing: a 421 before the server closes, or a server out of
            # step. Either way no later reply could be matched to its command.
            self.usable = False
            return []
        step = self._expected.popleft()
        if reply.code == 421 and step.state in _TRANSACTION_STEPS:
            return self._fail(step.state, str(reply), reply)
        return self._handlers[step.state](reply)

    def protocol_error(self, description: str) -> list[Output]:
        """The server sent something that is not an SMTP reply (or a line too long)."""
        return [Abort(), *self._fail(self._state(), f"protocol error: {description}")]

    def timed_out(self) -> list[Output]:
        """The awaited reply did not come within its step's timeout."""
        step = self.expecting
        if step is None:
            return []
        return [Abort(), *self._fail(step.state,
                                     f"timeout after {step.timeout:g}s waiting for the {step.state} reply")]

    def connection_lost(self, reason: str) -> list[Output]:
        state = self._state()
        return self._fail(state, f"connection lost during {state}: {reason}")

    # -- what the adapter asks for ----------------------------------------------------------

    def transaction(self, tx: Transaction) -> list[Output]:
        """Start ``tx`` (after ``Ready``); it ends with ``Finished`` or ``Failed``."""
        if not self.usable:
            # "rset": the reused session ended before this message began (it goes to a fresh one).
            return self._fail("rset" if self.transactions else "mailfrom",
                              "the session ended before the transaction began")
        payload = data_payload(tx.message)
        refusal = self._refusal(tx, len(payload))
        if refusal is not None:
            state, status, text = refusal
            return [Finished([RecipientResult(r.address, state, None, status, text, permanent=True)
                              for r in tx.recipients])]
        mail, rcpts = self._envelope_commands(tx)
        pipelined = self.capabilities.pipelining
        self._progress = _Progress(tx, payload, mail, rcpts, pipelined)
        reset = self.transactions > 0
        self.transactions += 1
        if pipelined:
            # RSET, MAIL, every RCPT and DATA in one write (RFC 2920): one round trip.
            steps = [("rset", self.timeouts.rset)] if reset else []
            steps += [("mailfrom", self.timeouts.mail), *[("rcptto", self.timeouts.rcpt)] * len(rcpts),
                      ("data", self.timeouts.data)]
            self._expected.extend(AwaitedReply(state, timeout) for state, timeout in steps)
            lines = [b"RSET"] if reset else []
            return [b"".join(line + b"\r\n" for line in [*lines, mail, *rcpts, b"DATA"])]
        if reset:
            return self._command(b"RSET", "rset", self.timeouts.rset)
        return self._command(mail, "mailfrom", self.timeouts.mail)

    def quit(self) -> list[Output]:
        """End the session: QUIT if it is still in step, then ``Close``."""
        if not self.usable:
            return [Close()]
        self.usable = False
        return self._command(b"QUIT", "quit", self.timeouts.quit)

    # -- the handshake -------------------------------------------------------------------------

    def _on_greeting(self, reply: Reply) -> list[Output]:
        if reply.code != 220:
            return self._fail("greeting", str(reply), reply)
        return self._command(b"EHLO " + self.helo_name, "ehlo", self.timeouts.ehlo)

    def _on_ehlo(self, reply: Reply) -> list[Output]:
        if reply.positive:
            self.capabilities = capabilities_from_ehlo(reply)
            return self._after_hello()
        if reply.code == 421:
            return self._fail("ehlo", str(reply), reply)
        return self._command(b"HELO " + self.helo_name, "helo", self.timeouts.ehlo)

    def _on_helo(self, reply: Reply) -> list[Output]:
        if not reply.positive:
            return self._fail("helo", str(reply), reply)
        self.capabilities = Capabilities()
        return self._after_hello()

    def _after_hello(self) -> list[Output]:
        if self.tls or self.tls_policy == "disabled":
            return self._ready()
        if not self.capabilities.starttls:
            if self.tls_policy == "required":
                return self._fail("starttls", "TLS is required for this destination but not offered")
            return self._ready()
        return self._command(b"STARTTLS", "starttls", self.timeouts.starttls)

    def _on_starttls(self, reply: Reply) -> list[Output]:
        if reply.code != 220:
            if self.tls_policy == "required" or reply.code == 421:  # 421: the server is closing
                return self._fail("starttls", str(reply), reply)
            return self._ready()  # opportunistic: carry on in plaintext, as the server wants
        self.tls = True
        self._parser = ReplyParser()  # nothing from before the handshake carries over
        return [StartTLS(), *self._command(b"EHLO " + self.helo_name, "ehlo", self.timeouts.ehlo)]

    def _ready(self) -> list[Output]:
        self.established = True
        return [Ready()]

    # -- a transaction --------------------------------------------------------------------------

    def _on_rset(self, reply: Reply) -> list[Output]:
        if not reply.positive:
            return self._fail("rset", str(reply), reply)
        progress = self._current()
        if progress.pipelined:
            return []
        return self._command(progress.mail, "mailfrom", self.timeouts.mail)

    def _on_mailfrom(self, reply: Reply) -> list[Output]:
        progress = self._current()
        progress.mail_reply = reply
        if progress.pipelined:
            return []
        return self._next_rcpt() if reply.positive else self._settle()

    def _on_rcptto(self, reply: Reply) -> list[Output]:
        progress = self._current()
        progress.rcpt_replies.append(reply)
        return [] if progress.pipelined else self._next_rcpt()

    def _next_rcpt(self) -> list[Output]:
        """Without pipelining: the next RCPT, then DATA if anyone was accepted."""
        progress = self._current()
        answered = len(progress.rcpt_replies)
        if answered < len(progress.rcpts):
            return self._command(progress.rcpts[answered], "rcptto", self.timeouts.rcpt)
        if any(reply.positive for reply in progress.rcpt_replies):
            return self._command(b"DATA", "data", self.timeouts.data)
        return self._settle()

    def _on_data(self, reply: Reply) -> list[Output]:
        self._current().data_reply = reply
        return self._settle()

    def _settle(self) -> list[Output]:
        """Every reply before the message is in: results so far, then the message if it goes."""
        progress = self._current()
        recipients = progress.transaction.recipients
        data_reply = progress.data_reply
        go_ahead = data_reply is not None and data_reply.code == 354
        mail_reply = progress.mail_reply
        assert mail_reply is not None
        if not mail_reply.positive:
            progress.results = {index: result_from_reply(r.address, "mailfrom", mail_reply)
                                for index, r in enumerate(recipients)}
        else:
            for index, (recipient, reply) in enumerate(zip(recipients, progress.rcpt_replies, strict=False)):
                if reply.positive:
                    progress.accepted.append(index)
                else:
                    progress.results[index] = result_from_reply(recipient.address, "rcptto", reply)
            if progress.accepted and not go_ahead:
                assert data_reply is not None  # DATA went out: someone was accepted
                for index in progress.accepted:
                    progress.results[index] = result_from_reply(recipients[index].address, "data",
                                                                         data_reply)
                progress.accepted = []
        if go_ahead:
            # A server that says 354 gets a message: ours, or an empty one if nobody is left for it.
            payload = progress.payload if progress.accepted else b".\r\n"
            # The timer covers the transfer too: allow a slow link 16 KB/s on top.
            self._expected.append(AwaitedReply("message", self.timeouts.data_done + len(payload) / 16384))
            return [payload]
        return self._finished()

    def _on_message(self, reply: Reply) -> list[Output]:
        progress = self._current()
        recipients = progress.transaction.recipients
        for index in progress.accepted:
            progress.results[index] = result_from_reply(recipients[index].address, "message", reply)
        return self._finished()

    def _finished(self) -> list[Output]:
        progress = self._current()
        self._progress = None
        return [Finished([progress.results[index] for index in range(len(progress.transaction.recipients))])]

    def _on_quit(self, reply: Reply) -> list[Output]:
        return [Close()]

    def _refusal(self, tx: Transaction, size: int) -> tuple[str, str, str] | None:
        """Why this peer must not get ``tx`` at all: (state, status, description), or None."""
        caps = self.capabilities
        if not caps.eightbitmime and not tx.message.isascii():
            # A safety net: the pipeline's for_peer makes the message 7-bit for such a peer.
            return ("mailfrom", "5.6.3",
                    "the receiving server lacks 8BITMIME and the message was not converted to 7-bit")
        if caps.size is not None and size > caps.size:
            return "mailfrom", "5.3.4", f"message of {size} bytes exceeds the peer's limit of {caps.size}"
        if tx.envelope.smtputf8 and not caps.smtputf8 and needs_smtputf8(tx):
            return "mailfrom", "5.6.7", "the message needs SMTPUTF8, which the receiving server lacks"
        return None

    def _envelope_commands(self, tx: Transaction) -> tuple[bytes, list[bytes]]:
        caps = self.capabilities
        params = []
        if caps.size is not None:
            params.append(f"SIZE={len(tx.message)}")
        if caps.eightbitmime and not tx.message.isascii():
            params.append("BODY=8BITMIME")
        if tx.envelope.smtputf8 and caps.smtputf8:
            params.append("SMTPUTF8")
        if caps.dsn:
            if tx.envelope.ret:
                params.append(f"RET={tx.envelope.ret}")
            if tx.envelope.envid:
                params.append(f"ENVID={xtext_encode(tx.envelope.envid)}")
        mail = f"MAIL FROM:<{tx.envelope.sender or ''}>" + "".join(" " + p for p in params)
        rcpts = []
        for recipient in tx.recipients:
            line = f"RCPT TO:<{recipient.address}>"
            if caps.dsn:
                if recipient.notify:
                    line += f" NOTIFY={recipient.notify}"
                if recipient.orcpt:
                    kind, _, address = recipient.orcpt.partition(";")
                    line += f" ORCPT={kind};{xtext_encode(address)}"
            rcpts.append(line)
        return mail.encode(), [r.encode() for r in rcpts]

    # -- helpers -------------------------------------------------------------------------------

    def _command(self, line: bytes, state: str, timeout: float) -> list[Output]:
        self._expected.append(AwaitedReply(state, timeout))
        return [line + b"\r\n"]

    def _current(self) -> _Progress:
        assert self._progress is not None, "a transaction reply without a transaction"
        return self._progress

    def _state(self) -> str | None:
        return self._expected[0].state if self._expected else None

    def _fail(self, state: str | None, description: str, reply: Reply | None = None) -> list[Output]:
        """The session is over for transactions; ``Failed`` if something was under way."""
        self.usable = False
        self._expected.clear()
        self._progress = None
        if state is None:
            return []
        if self.tls and not self.established:
            # Whatever goes wrong between STARTTLS and the EHLO after it counts as a failed
            # TLS handshake: an opportunistic destination is then tried in plaintext.
            state, description, reply = "starttls", f"TLS handshake failed: {description}", None
        return [Failed(SessionError(state, description, reply))]
