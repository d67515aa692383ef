"""The SMTP server's state machine, without sockets (the h11 model).

The adapter in ``protocol.py`` frames the byte stream into command lines and
DATA, hands them to ``ServerSession`` and carries out what it returns: bytes to
send, and a few actions (start TLS, authenticate, store a message, close).
Authentication and storing are asynchronous; while one is pending the
adapter stops reading, so replies to pipelined commands always come back in
order.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from twisted.cred.credentials import IUsernamePassword
from twisted.mail._cred import LOGINCredentials, PLAINCredentials
from twisted.mail.imap4 import IllegalClientResponse
from twisted.mail.interfaces import IChallengeResponse

from smtpeter.envelope import Envelope, Recipient, parse_body, parse_envid, parse_notify, parse_ret
from smtpeter.ingress.smtp import syntax
from smtpeter.ingress.smtp.data import DataProblem
from smtpeter.ingress.smtp.syntax import Path, SyntaxProblem


def reply(code: int, status: str | None, text: str) -> bytes:
    """One reply; ``text`` may hold several lines separated by newlines."""
    lines = text.split("\n")
    prefix = f"{status} " if status else ""
    out = []
    for index, line in enumerate(lines):
        separator = " " if index == len(lines) - 1 else "-"
        out.append(f"{code}{separator}{prefix}{line}\r\n")
    return "".join(out).encode("utf-8")


@dataclass(frozen=True)
class SessionPolicy:
    hostname: str
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    max_line_length: int = 16384
    max_errors: int = 20
    tls_available: bool = True
    # Submission listeners offer AUTH (under TLS) and relay only for logged-in
    # or trusted clients.
    auth_available: bool = True
    # A receiving listener (mx.listen) decides per address instead: None accepts it, else
    # (code, status, text) refuses it. Pure and quick: it runs inside the session.
    check_recipient: Callable[[str], tuple[int, str, str] | None] | None = None


@dataclass(frozen=True)
class Client:
    """Who is talking to us on this session, as the delivery step needs to know."""

    address: str
    helo: str
    tls: bool
    login: object | None  # whatever the authenticator returned
    trusted: bool


class StartTLS:
    """Start the TLS handshake now; everything already buffered was discarded."""


class Close:
    """Close the connection after sending what came before."""


class BeginData:
    """Switch to reading DATA until <CRLF>.<CRLF>."""


@dataclass
class Authenticate:
    """Check these credentials, then call ``ServerSession.authenticated``."""

    credentials: IUsernamePassword


@dataclass
class Deliver:
    """Store this message, then call ``ServerSession.stored``."""

    client: Client
    envelope: Envelope
    data: bytes


Output = bytes | StartTLS | Close | BeginData | Authenticate | Deliver

_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"}
_RCPT_PARAMS = {"NOTIFY", "ORCPT"}
_SASL_MAX = 12288  # RFC 4954 §4
_JUNK = {"EHLO", "HELO", "NOOP", "RSET", "VRFY", "HELP", "EXPN"}
JUNK_COMMAND_LIMIT = 100
# RFC 5321 allows 512 octets; SMTPUTF8 addresses and parameters need more room.
MAX_COMMAND_LENGTH = 2048
# The longest line read at all: "AUTH", a mechanism name (at most 20 characters,
# RFC 4422 §3.1) and the longest initial response.
MAX_LINE_LENGTH = len("AUTH ") + 20 + 1 + _SASL_MAX


class ServerSession:
    """One SMTP conversation. Feed it lines and data; it answers with outputs."""

    def __init__(self, policy: SessionPolicy, peer: str, tls: bool, trusted: bool) -> None:
        self.policy = policy
        self.peer = peer
        self.tls = tls
        self.trusted = trusted
        self.helo: str | None = None
        self.esmtp = False
        self.login: object | None = None
        self.envelope: Envelope | None = None  # from MAIL on, without the recipients
        self._recipients: list[Recipient] = []
        self.closed = False
        self._errors = 0
        self._junk = 0
        self._sasl: IChallengeResponse | None = None
        self._in_data = False

    # -- what the adapter calls ----------------------------------------------

    def greeting(self) -> list[Output]:
        return [reply(220, None, f"{self.policy.hostname} ESMTP smtpeter")]

    @property
    def in_data(self) -> bool:
        return self._in_data

    def line(self, line: bytes) -> list[Output]:
        """Handle one line (without its CRLF) received outside DATA."""
        if self.closed:
            return []
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            # A bare CR or LF inside a command is how command smuggling starts.
            return self._fatal(500, "5.5.2", "Error: bare <CR>, <LF> or NUL in command")
        if self._sasl is not None:
            return self._sasl_response(line)
        verb, args = syntax.split_command(line)
        # AUTH may carry an initial response of up to 12288 octets (RFC 4954 §4).
        if len(line) > (MAX_LINE_LENGTH if verb == "AUTH" else MAX_COMMAND_LENGTH):
            return self._fatal(500, "5.5.2", "Error: command line too long")
        if verb in _JUNK:
            self._junk += 1
            if self._junk > JUNK_COMMAND_LIMIT:
                # Like Postfix's smtpd_junk_command_limit: endless NOOP/RSET/EHLO
                # costs us replies and counts as errors from here on.
                self._errors += 1
                if self._errors > self.policy.max_errors:
                    return self._fatal(421, "4.7.0", "Too many commands without mail, closing")
        handler = getattr(self, f"_cmd_{verb}", None) if verb.isalpha() else None
        if handler is None:
            return self._error(500, "5.5.2", "Error: command not recognized")
        try:
            return handler(args)
        except SyntaxProblem as problem:
            return self._error(problem.code, problem.status, problem.text)

    def line_too_long(self) -> list[Output]:
        if self.closed:  # the rest of the same line, arriving after we said so
            return []
        return self._fatal(500, "5.5.2", "Error: line too long")

    def timed_out(self) -> list[Output]:
        return self._fatal(421, "4.4.2", f"{self.policy.hostname} Error: timeout exceeded")

    def shutting_down(self) -> list[Output]:
        return self._fatal(421, "4.3.2", f"{self.policy.hostname} Service shutting down")

    def data_received(self, result: bytes | DataProblem) -> list[Output]:
        """The DATA phase ended with this message (or this problem)."""
        self._in_data = False
        envelope = self.envelope
        if isinstance(result, DataProblem):
            self._reset()
            return self._error(result.code, result.status, result.text)
        assert envelope is not None
        client = Client(self.peer, self.helo or "", self.tls, self.login, self.trusted)
        return [Deliver(client, envelope.with_recipients(self._recipients), result)]

    def stored(self, answer: bytes) -> list[Output]:
        """The adapter finished storing (or refusing) the message; ``answer`` is the reply."""
        self._reset()
        self._junk = 0
        if answer[:1] in (b"4", b"5"):
            self._errors += 1
        return [answer]

    def authenticated(self, login: object | None, temporary_failure: bool = False) -> list[Output]:
        if login is not None:
            self.login = login
            return [reply(235, "2.7.0", "Authentication successful")]
        if temporary_failure:
            return self._error(454, "4.7.0", "Temporary authentication failure")
        return self._error(535, "5.7.8", "Authentication credentials invalid")

    def auth_throttled(self) -> list[Output]:
        """Too many failed attempts from this client or for this login: not even checked."""
        return self._error(454, "4.7.0", "Too many failed authentication attempts; try again later")

    # -- helpers ---------------------------------------------------------------

    def _error(self, code: int, status: str, text: str) -> list[Output]:
        self._errors += 1
        if self._errors > self.policy.max_errors:
            return [reply(code, status, text), *self._fatal(421, "4.7.0", "Too many errors")]
        return [reply(code, status, text)]

    def _fatal(self, code: int, status: str, text: str) -> list[Output]:
        self.closed = True
        return [reply(code, status, text), Close()]

    def _no_args(self, args: bytes, verb: str) -> None:
        if args:
            raise SyntaxProblem(501, "5.5.4", f"Syntax: {verb}")

    def _reset(self) -> None:
        self.envelope = None
        self._recipients = []

    def _extensions(self) -> list[str]:
        policy = self.policy
        extensions = [
            "PIPELINING",
            f"SIZE {policy.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if policy.tls_available and not self.tls:
            extensions.append("STARTTLS")
        if policy.auth_available and self.tls:
            extensions.append("AUTH PLAIN LOGIN")
        return extensions

    # -- commands --------------------------------------------------------------

    def _greet(self, args: bytes, esmtp: bool) -> list[Output]:
        try:
            name = args.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = ""
        if not name or " " in name:
            raise SyntaxProblem(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self.helo, self.esmtp = name, esmtp
        self._reset()
        greeting = f"{self.policy.hostname} Hello {name} [{self.peer}]"
        if not esmtp:
            return [reply(250, None, greeting)]
        return [reply(250, None, "\n".join([greeting, *self._extensions()]))]

    def _cmd_EHLO(self, args: bytes) -> list[Output]:
        return self._greet(args, esmtp=True)

    def _cmd_HELO(self, args: bytes) -> list[Output]:
        return self._greet(args, esmtp=False)

    def _cmd_STARTTLS(self, args: bytes) -> list[Output]:
        self._no_args(args, "STARTTLS")
        if self.tls:
            return self._error(503, "5.5.1", "Error: TLS already active")
        if not self.policy.tls_available:
            return self._error(502, "5.5.1", "Error: command not implemented")
        # RFC 3207 §4.2: forget everything learnt before the handshake.
        self.helo, self.esmtp, self.login = None, False, None
        self._reset()
        self.tls = True
        return [reply(220, "2.0.0", "Ready to start TLS"), StartTLS()]

    def _cmd_AUTH(self, args: bytes) -> list[Output]:
        if not self.policy.auth_available:
            return self._error(502, "5.5.1", "Error: authentication not enabled")
        if not self.esmtp:
            return self._error(503, "5.5.1", "Error: send EHLO first")
        if not self.tls:
            return self._error(538, "5.7.11", "Encryption required for requested authentication mechanism")
        if self.login is not None:
            return self._error(503, "5.5.1", "Error: already authenticated")
        if self.envelope is not None:
            return self._error(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
        mechanism, _, initial = args.partition(b" ")
        mechanism = mechanism.upper()
        if not mechanism:
            raise SyntaxProblem(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        if mechanism == b"PLAIN":
            self._sasl = PLAINCredentials()
        elif mechanism == b"LOGIN":
            self._sasl = LOGINCredentials()
            self._sasl.challenges = [b"Password:", b"Username:"]
        else:
            return self._error(504, "5.5.4", "Error: unsupported authentication mechanism")
        if initial:
            if mechanism == b"LOGIN":
                self._sasl.getChallenge()  # the initial response answers "Username:"
            return self._sasl_response(b"" if initial == b"=" else initial)
        return [b"334 " + base64.b64encode(self._sasl.getChallenge()) + b"\r\n"]

    def _sasl_response(self, line: bytes) -> list[Output]:
        credentials = self._sasl
        assert credentials is not None
        if line == b"*":
            self._sasl = None
            return self._error(501, "5.7.0", "Authentication cancelled")
        if len(line) > _SASL_MAX:
            self._sasl = None
            return self._error(500, "5.5.6", "Authentication exchange line too long")
        try:
            response = base64.b64decode(line, validate=True)
            credentials.setResponse(response)
        except (binascii.Error, ValueError):
            self._sasl = None
            return self._error(501, "5.5.2", "Error: invalid base64 data")
        except IllegalClientResponse:
            self._sasl = None
            return self._error(501, "5.5.2", "Error: malformed authentication response")
        if credentials.moreChallenges():
            return [b"334 " + base64.b64encode(credentials.getChallenge()) + b"\r\n"]
        self._sasl = None
        if b"\0" in credentials.username or b"\0" in credentials.password:
            return self._error(501, "5.5.2", "Error: NUL in authentication response")
        # PLAIN's first field is the identity to act as; we support only oneself.
        authzid = response.split(b"\0", 1)[0] if isinstance(credentials, PLAINCredentials) else b""
        if authzid and authzid != credentials.username:
            return self._error(535, "5.7.8", "Authorization identity not supported")
        return [Authenticate(credentials)]

    def _cmd_MAIL(self, args: bytes) -> list[Output]:
        if self.helo is None:
            return self._error(503, "5.5.1", "Error: send HELO/EHLO first")
        if self.envelope is not None:
            return self._error(503, "5.5.1", "Error: nested MAIL command")
        path = syntax.parse_path(args, "FROM", allow_null=True)
        self._check_params(path, _MAIL_PARAMS)
        params = path.params
        smtputf8 = "SMTPUTF8" in params
        if smtputf8 and params["SMTPUTF8"] is not None:
            raise SyntaxProblem(501, "5.5.4", "SMTPUTF8 takes no value")
        address = syntax.check_mailbox(path.address, smtputf8) if path.address else ""
        size = params.get("SIZE")
        if size is not None:
            if not size.isdigit():
                raise SyntaxProblem(501, "5.5.4", "Bad SIZE parameter")
            if int(size) > self.policy.max_message_size:
                return self._error(552, "5.3.4", "Message size exceeds fixed maximum message size")
        try:
            self.envelope = Envelope(
                sender=address,
                body=parse_body(params["BODY"] or "") if "BODY" in params else None,
                smtputf8=smtputf8,
                ret=parse_ret(params["RET"] or "") if "RET" in params else None,
                envid=parse_envid(syntax.xtext_decode(params["ENVID"] or "")) if "ENVID" in params else None,
            )
        except ValueError as exc:
            raise SyntaxProblem(501, "5.5.4", str(exc)) from None
        return [reply(250, "2.1.0", "Sender OK")]

    def _check_params(self, path: Path, allowed: set[str]) -> None:
        if path.params and not self.esmtp:
            raise SyntaxProblem(555, "5.5.4", "Parameters need EHLO")
        unknown = set(path.params) - allowed
        if unknown:
            raise SyntaxProblem(555, "5.5.4", f"Unsupported parameter {sorted(unknown)[0]}")

    def _cmd_RCPT(self, args: bytes) -> list[Output]:
        envelope = self.envelope
        if envelope is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        path = syntax.parse_path(args, "TO", allow_null=False)
        self._check_params(path, _RCPT_PARAMS)
        address = syntax.check_mailbox(path.address, envelope.smtputf8)
        notify = None
        if "NOTIFY" in path.params:
            try:
                notify = parse_notify(path.params["NOTIFY"] or "")
            except ValueError as exc:
                raise SyntaxProblem(501, "5.5.4", str(exc)) from None
        orcpt = None
        if "ORCPT" in path.params:
            kind, semicolon, value = (path.params["ORCPT"] or "").partition(";")
            if not semicolon or not kind or not value:
                raise SyntaxProblem(501, "5.5.4", "ORCPT must be addr-type;xtext")
            orcpt = f"{kind};{syntax.xtext_decode(value)}"
        check = self.policy.check_recipient
        if check is not None:
            refusal = check(address)
            if refusal is not None:
                return self._error(*refusal)
        elif self.login is None and not self.trusted:
            return self._error(530, "5.7.0", "Authentication required")
        if any(r.address == address for r in self._recipients):
            # Once is enough (Postfix's duplicate filter): a second copy would be a second delivery.
            return [reply(250, "2.1.5", "Recipient OK (already given)")]
        if len(self._recipients) >= self.policy.max_recipients:
            return [reply(452, "4.5.3", "Error: too many recipients")]
        self._recipients.append(Recipient(address, notify, orcpt))
        return [reply(250, "2.1.5", "Recipient OK")]

    def _cmd_DATA(self, args: bytes) -> list[Output]:
        self._no_args(args, "DATA")
        if self.envelope is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if not self._recipients:
            return self._error(554, "5.5.1", "Error: no valid recipients")
        self._in_data = True
        return [reply(354, None, "End data with <CR><LF>.<CR><LF>"), BeginData()]

    def _cmd_BDAT(self, args: bytes) -> list[Output]:
        # CHUNKING is not advertised; refuse without reading a chunk we cannot frame.
        return self._fatal(502, "5.5.1", "Error: BDAT not supported")

    def _cmd_RSET(self, args: bytes) -> list[Output]:
        self._no_args(args, "RSET")
        self._reset()
        return [reply(250, "2.0.0", "Ok")]

    def _cmd_NOOP(self, args: bytes) -> list[Output]:
        return [reply(250, "2.0.0", "Ok")]

    def _cmd_VRFY(self, args: bytes) -> list[Output]:
        return [reply(252, "2.5.0", "Cannot VRFY user, but will accept message")]

    def _cmd_EXPN(self, args: bytes) -> list[Output]:
        return self._error(502, "5.5.1", "Error: command not implemented")

    def _cmd_HELP(self, args: bytes) -> list[Output]:
        return [reply(214, "2.0.0", "See RFC 5321")]

    def _cmd_QUIT(self, args: bytes) -> list[Output]:
        self.closed = True
        return [reply(221, "2.0.0", "Bye"), Close()]
