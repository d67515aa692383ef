"""DKIM verification by an independent implementation: Perl's Mail::DKIM (Debian libmail-dkim-perl).

``verify(message, dns_port)`` runs ``perl`` with Mail::DKIM's resolver pointed at the test DNS
server (127.0.0.1 on ``dns_port``), hands it the message on stdin and returns one ``Verdict``
per DKIM-Signature. perl runs as a child process read by the reactor, so the test DNS server
(in the same reactor) answers its queries.

ed25519 (RFC 8463): Debian's Mail::DKIM (1.20230212) predates its ed25519 support (1.20230630).
The script gives it the algorithm the way 1.20230630 does, except for the last step: Mail::DKIM
parses the signature, fetches the key from DNS, canonicalises the header and checks the body
hash (bh=) itself, and prints the SHA-256 of the canonical header with the public key it
fetched; the Ed25519 signature over that digest is then checked here by OpenSSL (through
``cryptography``). So neither dkimpy nor PyNaCl, which sign, takes part in any check.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet import defer, protocol, reactor

SCRIPT = r"""
use strict;
use warnings;
use JSON::PP;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my $port = shift @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1, udp_timeout => 5, tcp_timeout => 5,
    retry => 1));

# RFC 8463 for a Mail::DKIM without it: everything but the Ed25519 check itself (done by the caller).
{
    package SmtpeterTest::Ed25519Sha256;
    use base 'Mail::DKIM::Algorithm::rsa_sha256';
    sub verify {
        my $self = shift;
        my $signature = $self->signature;
        $signature->{smtpeter_ed25519} = {
            header_sha256 => unpack('H*', $self->{header_digest}->digest),
            public_key => $signature->get_public_key->data,
        };
        return $self->check_body_hash;
    }
    package SmtpeterTest::Ed25519Key;
    sub size { return 32 }
}
{
    # Methods are looked up with can(): cork, for one, is inherited from Mail::DKIM::Key.
    no warnings qw(redefine once);
    my $algorithm_class = Mail::DKIM::Signature->can('get_algorithm_class');
    *Mail::DKIM::Signature::get_algorithm_class = sub {
        my ($self, $algorithm) = @_;
        return 'SmtpeterTest::Ed25519Sha256' if defined $algorithm && $algorithm eq 'ed25519-sha256';
        return $algorithm_class->(@_);
    };
    my $hash_algorithm = Mail::DKIM::Signature->can('hash_algorithm');
    *Mail::DKIM::Signature::hash_algorithm = sub {
        my ($self) = @_;
        return 'sha256' if ($self->algorithm // '') eq 'ed25519-sha256';
        return $hash_algorithm->(@_);
    };
    my $check = Mail::DKIM::PublicKey->can('check');
    *Mail::DKIM::PublicKey::check = sub {
        my ($self) = @_;
        return $check->(@_) unless ($self->get_tag('k') // '') eq 'ed25519';
        my $v = $self->get_tag('v');
        die "unsupported version\n" if defined $v && $v ne 'DKIM1';
        my $p = $self->data;
        die "missing p= tag\n" unless defined $p;
        die "revoked\n" if $p eq '';
        die "invalid data\n" unless $p =~ /^[A-Za-z0-9\+\/\=]+$/;
        return 1;
    };
    my $cork = Mail::DKIM::PublicKey->can('cork');
    *Mail::DKIM::PublicKey::cork = sub {
        my ($self) = @_;
        return bless({}, 'SmtpeterTest::Ed25519Key') if ($self->get_tag('k') // '') eq 'ed25519';
        return $cork->(@_);
    };
}

binmode STDIN;
binmode STDOUT;
my $dkim = Mail::DKIM::Verifier->new();
while (read(STDIN, my $chunk, 65536)) {
    $dkim->PRINT($chunk);
}
$dkim->CLOSE;
my $json = JSON::PP->new->canonical;
foreach my $signature ($dkim->signatures) {
    print $json->encode({
        domain => scalar $signature->domain, selector => scalar $signature->selector,
        algorithm => scalar $signature->algorithm, result => scalar $signature->result,
        details => scalar $signature->result_detail, headers => scalar $signature->get_tag('h'),
        signature => scalar $signature->data, ed25519 => $signature->{smtpeter_ed25519},
    }), "\n";
}
"""


@dataclass(frozen=True)
class Verdict:
    """One DKIM-Signature as Mail::DKIM judged it."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256", "ed25519-sha256"
    result: str  # "pass", "fail", "invalid", ...
    details: str  # Mail::DKIM's result detail, e.g. "fail (message has been altered)"
    headers: str  # the h= tag


class _Perl(protocol.ProcessProtocol):
    def __init__(self, message: bytes) -> None:
        self.message = message
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


async def verify(message: bytes, dns_port: int) -> list[Verdict]:
    """Mail::DKIM's verdict on each DKIM-Signature of ``message``, keys looked up at 127.0.0.1:dns_port."""
    perl = _Perl(message)
    reactor.spawnProcess(perl, "perl", ["perl", "-e", SCRIPT, str(dns_port)],
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    out, err, code = await perl.done
    if code != 0:
        raise RuntimeError(f"Mail::DKIM's verifier failed ({code}): {err.decode(errors='replace')}")
    return [_verdict(json.loads(line)) for line in out.decode().splitlines() if line]


def _verdict(row: dict[str, Any]) -> Verdict:
    result, details = row["result"] or "", row["details"] or ""
    if row["algorithm"] == "ed25519-sha256" and result == "pass":
        # Mail::DKIM checked everything but the signature itself: check it over its header digest.
        found = row.get("ed25519") or {}
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(found["public_key"])).verify(
                base64.b64decode(row["signature"]), bytes.fromhex(found["header_sha256"]))
            details = "pass"
        except (InvalidSignature, ValueError, KeyError) as exc:
            result, details = "fail", f"fail (ed25519 signature did not verify: {exc!r})"
    return Verdict(row["domain"] or "", row["selector"] or "", row["algorithm"] or "", result, details,
                   row["headers"] or "")
