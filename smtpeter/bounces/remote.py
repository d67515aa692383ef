"""Rules particular to big receivers, chosen by who answered.

Mailbox providers document their own rejection texts and codes (Google's
"The email account that you tried to reach does not exist", Orange's
"LPN007_416", Facebook's "RCP-P2", Cox's "AUP#CXBL"); their words beat the
generic phrase tables. The provider is recognised, in this order, by the
recipient's domain, the host that answered (Remote-MTA or the host named in
the error), or the host that wrote the report. The tables are the providers'
published texts as Sisimai (BSD 2-Clause) collects them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from smtpeter.bounces.parse import Parsed
from smtpeter.bounces.reasons import Facts

# Provider -> host name endings that identify it.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "aol": (".mail.aol.com", ".mx.aol.com"),
    "apple": (".mail.icloud.com", ".apple.com", ".me.com"),
    "cloudflare": (".mx.cloudflare.net",),
    "cox": ("cox.net",),
    "facebook": (".facebook.com",),
    "franceptt": (".laposte.net", ".orange.fr", ".wanadoo.fr"),
    "godaddy": ("smtp.secureserver.net", "mailstore1.secureserver.net"),
    "google": ("aspmx.l.google.com", "gmail-smtp-in.l.google.com"),
    "gsuite": ("googlemail.com",),
    "iua": (".email.ua",),
    "kddi": (".ezweb.ne.jp", "msmx.au.com"),
    "messagelabs": (".messagelabs.com",),
    "microsoft": (".prod.outlook.com", ".protection.outlook.com", ".onmicrosoft.com", ".exchangelabs.com"),
    "mimecast": (".mimecast.com",),
    "nttdocomo": ("mfsmax.docomo.ne.jp",),
    "outlook": (".hotmail.com",),
    "spectrum": ("charter.net",),
    "tencent": (".qq.com",),
    "yahooinc": (".yahoodns.net",),
    "zoho": (".zoho.com", ".zohomail.com"),
}

_Table = list[tuple[str, str]]  # (reason, lower-case phrase), first match wins

_PHRASES: dict[str, _Table] = {
    "aol": [
        ("hostunknown", "host or domain name not found"),
        ("notaccept", "type=mx: malformed or unexpected name server reply"),
    ],
    "apple": [
        ("authfailure", "s dmarc policy"), ("authfailure", "blocked for failing both spf and dkim"),
        ("blocked", "rejected due to having a domain present in the spamhaus"),
        ("blocked", "rejected due to listing in spamhaus"),
        ("blocked", "support.proofpoint.com/dnsbl-lookup"), ("blocked", "not accepting connections"),
        ("hasmoved", "recipient no longer on server"), ("mailboxfull", "user is over quota"),
        ("norelaying", "relay access denied"), ("notaccept", "host/domain does not accept mail"),
        ("policyviolation", "due to local policy"), ("rejected", "sender address rejected"),
        ("speeding", "due to excessive volume"), ("userunknown", "inactive email address"),
        ("userunknown", "user does not exist"), ("userunknown", "unknown or illegal alias"),
    ],
    "cox": [
        ("blocked", "cox too many bad commands from"), ("blocked", "too many invalid recipients"),
        ("requireptr", "dns check failure - try again later"), ("requireptr", "rejected - no rdns"),
        ("policyviolation", "esmtp no data before greeting"),
        ("policyviolation", "attachment extension is forbidden"), ("rejected", "sender rejected"),
        ("systemerror", "esmtp server temporarily not available"), ("toomanyconn", "too many sessions from"),
        ("toomanyconn", "requested action aborted: try again later"),
        ("toomanyconn", "message threshold exceeded"), ("userunknown", "recipient rejected"),
    ],
    "franceptt": [
        ("authfailure", "spf/dns de votre nom de domaine"),
    ],
    "godaddy": [
        ("blocked", "rbl reject"), ("blocked", "www.spamhaus.org/query/bl?ip="),
        ("expired", "has been in the queue too long"), ("expired", "delivery timeout"),
        ("mailboxfull", "account storage limit"),
        ("spamdetected", "message rejected for spam or virus content"), ("suspend", "account disabled"),
        ("systemerror", "message is looping"), ("userunknown", "recipient not found"),
        ("userunknown", "account does not exist"),
    ],
    "google": [
        ("authfailure", "the spf record of the sending domain"),
        ("authfailure", "senders to authenticate with either spf or dkim"),
        ("authfailure", "fails to pass spf checks for an spf record with a hard fail"),
        ("authfailure", "has an spf record with a hard fail policy"),
        ("authfailure", "is not accepted due to domain's dmarc policy"),
        ("authfailure", "fails to pass authentication checks"),
        ("authfailure", "senders to authenticate with spf"),
        ("authfailure", "senders to authenticate their email with spf"),
        ("authfailure", "senders to authenticate their email with dkim"),
        ("authfailure", "senders to authenticate with dkim"),
        ("authfailure", "aligned with either the authenticated spf or dkim"),
        ("authfailure", "to add a dmarc record to "), ("badreputation", "very low reputation of the sending"),
        ("blocked", "ip not in whitelist for rcpt domain"),
        ("blocked", "try again later, closing connection."),
        ("blocked", "empty helo/ehlo argument not allowed"), ("blocked", "helo/ehlo argument is invalid"),
        ("blocked", "an unusual rate of unsolicited mail"), ("blocked", "an unusual rate of mail"),
        ("exceedlimit", "exceeds google's limit of limit attachments."),
        ("exceedlimit", "your message exceeded google's message header size limits"),
        ("exceedlimit", "bytes per individual header size"),
        ("exceedlimit", "exceeds google's header name limit of"),
        ("exceedlimit", "exceeds google's message header size limit"),
        ("mesgtoobig", "exceeded google's message size limits"),
        ("mesgtoobig", "exceeds google's message size limit of"), ("expired", "connection expired"),
        ("expired", "timeout - closing connection"),
        ("failedstarttls", "must issue a starttls command first"),
        ("failedstarttls", "starttls may not be repeated"),
        ("failedstarttls", "tls required for rcpt domain"),
        ("failedstarttls", "senders to use tls/ssl for smtp"),
        ("mailboxfull", "inbox is out of storage space"), ("mailboxfull", "is over quota"),
        ("mailboxfull", "email quota exceeded"), ("networkerror", "message exceeded 50 hops"),
        ("norelaying", "mail relay denied"), ("norelaying", "invalid credentials for relay"),
        ("norelaying", "is not authorized to send email directly to our servers"),
        ("notcompliantrfc", "missing a valid address in the from: header"),
        ("notcompliantrfc", "multiple addresses in from: header are not accepted"),
        ("notcompliantrfc", "is not rfc 5322 compliant"),
        ("notcompliantrfc", "missing a valid message-id: header"),
        ("notcompliantrfc", "contains a unicode character in a disallowed header"),
        ("notcompliantrfc", "encoded-word syntax is not permitted"),
        ("notcompliantrfc", "mail message is malformed"),
        ("policyviolation", "illegal attachment on your message"),
        ("policyviolation", "blocked because its content presents a potential security issue"),
        ("policyviolation", "you are sending to (or from) has a policy that prohibited"),
        ("policyviolation", "sending messages with the same message-id:"),
        ("rejected", "mail sending denied"), ("rejected", "unauthenticated email is not accepted"),
        ("requireptr", "does not have a ptr record"), ("requireptr", " have a ptr record, or the ptr record"),
        ("requireptr", "does not meet ipv6 sending guidelines regarding ptr records and authentication"),
        ("requireptr", "does not match the ip address of the hostname"),
        ("securityerror", "too many login attempts"), ("securityerror", "cannot decode response"),
        ("securityerror", "no identity changes permitted"), ("securityerror", "authentication required."),
        ("securityerror", "application-specific password required"),
        ("securityerror", "please log in with your web browser"),
        ("securityerror", "please log in through your web browser"),
        ("securityerror", "username and password not accepted"),
        ("spamdetected", "due to the nature of the content or the links within"),
        ("spamdetected", "likely unsolicited mail"), ("speeding", "is receiving mail too quickly"),
        ("speeding", "peak smtp relay limit exceeded for customer"),
        ("speeding", "rate that prevents additional messages from being delivered"),
        ("speeding", "daily sending quota exceeded"), ("speeding", "daily user sending limit exceeded"),
        ("speeding", "daily smtp relay limit exceeded for"),
        ("speeding", "daily smtp relay sending limit exceeded for"),
        ("speeding", "this mail has been rate limited"),
        ("suspend", "account that you tried to reach is disabled"),
        ("suspend", "account that you tried to reach is inactive"),
        ("syntaxerror", "smtp protocol violation"), ("syntaxerror", "optional argument not permitted"),
        ("syntaxerror", "syntax error"), ("syntaxerror", "too many unrecognized commands, goodbye"),
        ("syntaxerror", "unimplemented command"), ("syntaxerror", "unrecognized command"),
        ("syntaxerror", "bad sequence of commands"), ("syntaxerror", "ehlo/helo first"),
        ("syntaxerror", "mail first"), ("syntaxerror", "rcpt first"), ("syntaxerror", "no data after bdat"),
        ("syntaxerror", "unrecognized authentication type"), ("syntaxerror", "xoauth is no longer supported"),
        ("syntaxerror", "too many unauthenticated commands"), ("systemerror", "temporary system problem"),
        ("systemerror", "server busy"),
        ("systemerror", "multiple destination domains per transaction is unsupported"),
        ("systemerror", "mail server has temporarily rejected this message"),
        ("systemerror", "mail server temporarily rejected message"),
        ("systemerror", "domain policy size per transaction exceeded"),
        ("toomanyconn", "your message has too many recipients"),
        ("toomanyconn", "too many recipients for this sender"),
        ("userunknown", "the email account that you tried to reach does not exist"),
        ("userunknown", "we weren't able to find the recipient domain"),
        ("userunknown", "is not a valid rfc 5321 address"),
    ],
    "gsuite": [],
    "kddi": [
        ("filtered", "550 : user unknown"), ("userunknown", ">: user unknown"),
    ],
    "messagelabs": [
        ("authfailure", "domain authentication fail"), ("badreputation", "connection rejected by policy"),
        ("blocked", "mail rejected because your ip is in the pbl"), ("blocked", "your ip address has been "),
        ("contenterror", "stray linefeeds in message"), ("failedstarttls", "tls/sslv3 connection required"),
        ("norelaying", " as a relay, "), ("notcompliantrfc", "550 requested action aborted [4]"),
        ("notcompliantrfc", "has detected that this message is not rfc 5322"),
        ("rejected", "sender envelope domain not allowed for sender ip address"),
        ("rejected", "your domain has been blocked"), ("rejected", "your email address has been blocked"),
        ("rejected", "your envelope sender is in my badmailfrom list"),
        ("rejected", "your email address has been blacklisted"),
        ("rejected", "your domain has been blacklisted"),
        ("securityerror", "please turn on smtp authentication in your mail client"),
        ("spamdetected", "message filtered"), ("spamdetected", "filtered by outbound scanning"),
        ("toomanyconn", "too many recipients received this hour"), ("toomanyconn", "too many messages"),
        ("userunknown", "no such user"), ("userunknown", "invalid recipient"),
        ("userunknown", "mailbox is not allowed"),
    ],
    "mimecast": [],
    "outlook": [
        ("hostunknown",
         "the mail could not be delivered to the recipient because the domain is not reachable"),
        ("userunknown", "requested action not taken: mailbox unavailable"),
    ],
    "tencent": [
        ("authfailure", "spf check failed"), ("authfailure", "dmarc check failed"),
        ("blocked", "suspected bounce attacks"), ("blocked", "suspected spam ip"),
        ("blocked", "connection denied"), ("mesgtoobig", "message too large"), ("rejected", "suspected spam"),
        ("rejected", "mail is rejected by recipients"), ("spamdetected", "spam is embedded in the email"),
        ("spamdetected", "mail content denied"), ("speeding", "mailbox unavailable or access denined"),
        ("speeding", "frequency of receiving messages is limited"), ("suspend", "is a deactivated mailbox"),
        ("syntaxerror", "bad address syntax"), ("toomanyconn", "ip frequency limited"),
        ("toomanyconn", "domain frequency limited"), ("toomanyconn", "sender frequency limited"),
        ("toomanyconn", "connection frequency limited"), ("userunknown", "mailbox not found"),
    ],
    "yahooinc": [
        ("authfailure", "yahoo requires all senders to authenticate with either spf or dkim"),
        ("blocked", " because the ip is in spamhaus's list;"),
        ("blocked", "not accepted from ip addresses on spamhaus xbl"), ("norelaying", "relaying denied for "),
        ("notcompliantrfc", "headers are not rfc compliant"),
        ("policyviolation", "not accepted for policy reasons"),
        ("rejected", "temporarily deferred due to unexpected volume or user complaints"),
        ("rejected", "due to unresolvable rfc.5321 domain"), ("rejected", " will be permanently deferred"),
        ("speeding", "user is receiving mail too quickly"), ("suspend", " is no longer valid."),
        ("suspend", "this mailbox is disabled"), ("syntaxerror", "syntax error in parameters or arguments"),
        ("toomanyconn", "max message per connection reached"),
        ("userunknown", "dd this user doesn't have a "), ("userunknown", "mailbox not found"),
    ],
    "zoho": [
        ("authfailure", "email rejected per dmarc policy"),
        ("blocked", "greylisted, try again after some time"),
        ("rejected", "email cannot be delivered. reason: email flagged as spam"),
        ("rejected", "mail rejected by destination domain"),
        ("policyviolation", "email policy violation detected"),
        ("policyviolation", "mailbox delivery restricted by policy error"),
        ("systemerror", "temporary system error"), ("userunknown", "user does not exist"),
        ("virusdetected", " detected by zoho mail"),
    ],
}

# Orange/La Poste error labels: "LPN007_416", "OFR_417" -> the number's meaning.
_FRANCEPTT_CODES = {
    "101": "blocked", "102": "blocked", "103": "blocked", "104": "toomanyconn", "305": "securityerror",
    "401": "authfailure", "402": "securityerror", "403": "rejected", "405": "rejected", "415": "rejected",
    "108": "blocked", "416": "userunknown", "417": "mailboxfull", "420": "suspend", "421": "rejected",
    "426": "suspend",
    "505": "systemerror", "506": "spamdetected", "510": "blocked", "514": "mesgtoobig", "517": "authfailure",
    "630": "policyviolation", "999": "blocked",
}
_FACEBOOK_CODES = {
    "POL-P7": "authfailure", "POL-P1": "blocked", "POL-P2": "blocked", "POL-P3": "blocked",
    "POL-P4": "blocked",
    "POL-T1": "blocked", "POL-T2": "blocked", "POL-T3": "blocked", "MSG-P2": "contenterror",
    "RCP-P2": "filtered",
    "RCP-P3": "filtered", "MSG-P1": "mesgtoobig", "INT-P2": "mesgtoobig", "MSG-P3": "notcompliantrfc",
    "DNS-P1": "rejected", "DNS-P2": "rejected", "DNS-T1": "rejected", "DNS-P3": "requireptr",
    "DNS-T2": "requireptr",
    "POL-P6": "spamdetected", "RCP-T4": "suspend", "RCP-T1": "systemerror", "CON-T1": "toomanyconn",
    "CON-T2": "toomanyconn", "CON-T3": "toomanyconn", "CON-T4": "toomanyconn", "MSG-T1": "toomanyconn",
    "RCP-P1": "userunknown", "INT-P1": "userunknown", "INT-P3": "userunknown", "INT-P4": "userunknown",
    "POL-P5": "virusdetected",
}
_GODADDY_CODES = {
    "IB401": "securityerror", "IB501": "notcompliantrfc", "IB502": "notcompliantrfc", "IB506": "rejected",
    "IB508": "authfailure", "IB108": "requireptr", "IB212": "spamdetected", "IB705": "virusdetected",
    "IB605": "toomanyconn", "IB007": "toomanyconn", "IB101": "speeding", "IB110": "blocked",
    "IB111": "blocked",
    "IB112": "blocked", "IB113": "blocked", "IB504": "speeding", "IB510": "speeding", "IB607": "speeding",
    "IB103": "badreputation", "IB104": "blocked", "IB105": "blocked", "IB106": "blocked",
}
_IUA_CODES = {
    "1": "norelaying", "2": "userunknown", "3": "suspend", "4": "mailboxfull", "5": "toomanyconn",
    "6": "norelaying",
    "7": "blocked", "8": "rejected", "9": "blocked", "10": "filtered",
}
_COX_CODES = {
    "CXBL": "blocked", "CXDNS": "requireptr", "CXSNDR": "authfailure", "CXSMTP": "rejected",
    "CXCNCT": "toomanyconn",
    "CXMXRT": "toomanyconn", "CDRBL": "blocked", "CXTHRT": "securityerror", "CXMJ": "securityerror",
}
# Spectrum's AUP#xNNNN ranges.
_SPECTRUM_RANGES = [
    (1000, 1000, "blocked"), (1010, 1010, "rejected"), (1020, 1080, "rejected"), (1090, 1090, "systemerror"),
    (1100, 1150, "requireptr"), (1160, 1190, "policyviolation"), (1200, 1250, "blocked"),
    (1260, 1260, "networkerror"), (1300, 1340, "toomanyconn"), (1350, 1490, "speeding"),
    (1500, 1520, "rejected"), (1530, 1530, "mesgtoobig"), (1540, 1550, "speeding"),
    (1560, 1560, "policyviolation"), (1580, 1580, "speeding"),
]
# Microsoft: (status prefix, detail range or None, phrase, reason); the status must match.
_MICROSOFT: list[tuple[str, tuple[int, int] | None, str, str]] = [
    ("4.7.26", None, "must pass either spf or dkim validation, this message is not signed", "authfailure"),
    ("5.7.23", None, "the message was rejected because of sender policy framework violation", "authfailure"),
    ("5.7.509", None, "does not pass dmarc verification", "authfailure"),
    ("5.7.515", None, "doesn't meet the required authentication level", "authfailure"),
    ("4.7.650", None, "has been temporarily rate limited due to ip reputation", "badreputation"),
    ("4.4.2", None, "connection dropped", "blocked"),
    ("4.7.", (850, 899), "access denied, please try again later", "blocked"),
    ("5.7.25", None, "must have a reverse dns record", "blocked"),
    ("5.7.506", None, "access denied, bad helo", "blocked"),
    ("5.7.507", None, "access denied, rejected by recipient", "blocked"),
    ("5.7.510", None, "does not accept email over ipv6", "blocked"),
    ("5.7.511", None, "access denied, banned sender", "blocked"),
    ("5.7.513", None, "using customer block list", "blocked"),
    ("5.7.", (606, 649), "access denied, banned sending ip ", "blocked"),
    ("4.7.", (500, 699), "access denied, please try again later", "blocked"),
    ("5.5.4", None, "invalid domain name", "blocked"),
    ("5.7.1", None, "part of their network is on our block list (s3150)", "blocked"),
    ("5.3.0", None, "too many related errors", "contenterror"),
    ("5.6.11", None, "invalid characters", "contenterror"),
    ("5.4.11", None, "agent generated message depth exceeded", "contenterror"),
    ("5.5.6", None, "invalid message content", "contenterror"),
    ("5.2.3", None, "resolver.rst.recipsizelimit; message too large for this recipient", "exceedlimit"),
    ("5.3.4", None, "message size exceeds fixed maximum message size", "mesgtoobig"),
    ("5.3.4", None, "message too big for system", "mesgtoobig"),
    ("4.4.1", None, "connection timed out", "expired"), ("4.4.7", None, "message delayed", "expired"),
    ("4.4.7", None, "queue expired; message expired", "expired"),
    ("4.4.7", None, "message expired", "expired"), ("5.4.300", None, "message expired", "expired"),
    ("5.4.316", None, "message expired", "expired"),
    ("4.4.8", None, " failed mta-sts validation", "failedstarttls"),
    ("5.4.8", None, " failed mta-sts validation", "failedstarttls"),
    ("4.4.317", None, "starttls is required to send mail", "failedstarttls"),
    ("5.4.317", None, "starttls is required to send mail", "failedstarttls"),
    ("4.7.5", None, "remote certificate failed mta-sts validation", "failedstarttls"),
    ("5.7.5", None, "remote certificate failed mta-sts validation", "failedstarttls"),
    ("5.7.51", None, "restrictdomainstoipaddresses or restrictdomainstocertificate", "failedstarttls"),
    ("4.7.321", None, "starttls-not-supported:", "failedstarttls"),
    ("5.7.321", None, "starttls-not-supported:", "failedstarttls"),
    ("5.7.322", None, "certificate-expired:", "failedstarttls"),
    ("4.7.323", None, "tlsa-invalid:", "failedstarttls"),
    ("5.7.323", None, "tlsa-invalid:", "failedstarttls"),
    ("4.7.324", None, "dnssec-invalid:", "failedstarttls"),
    ("5.7.324", None, "dnssec-invalid:", "failedstarttls"),
    ("4.7.325", None, "certificate-host-mismatch:", "failedstarttls"),
    ("5.7.325", None, "certificate-host-mismatch:", "failedstarttls"),
    ("5.2.2", None, "mailbox full", "mailboxfull"),
    ("5.4.4", None, "smtpsend.dns.nonexistentdomain; nonexistent domain", "networkerror"),
    ("5.4.6", None, "hop count exceeded - possible mail loop", "networkerror"),
    ("4.4.312", None, "dns query failed", "networkerror"),
    ("5.4.312", None, "dns query failed", "networkerror"),
    ("4.4.316", None, "connection refused", "networkerror"),
    ("5.4.316", None, "connection refused", "networkerror"),
    ("5.4.4", None, "invalid arguments", "networkerror"),
    ("5.4.6", None, "routing loop detected", "networkerror"),
    ("5.4.14", None, "routing loop detected", "networkerror"),
    ("5.7.1", None, "unable to relay", "norelaying"),
    ("5.7.1", None, "client was not authenticated", "norelaying"),
    ("5.4.1", None, "relay access denied", "norelaying"),
    ("5.7.64", None, "tenantattribution; relay access denied", "norelaying"),
    ("5.4.310", None, "does not exist", "norelaying"),
    ("4.3.2", None, "system not accepting network messages", "notaccept"),
    ("4.4.4", None, "hosted tenant which has no mail-enabled subscriptions", "notaccept"),
    ("5.3.2", None, "storedrv.deliver: missing or bad storedriver mdb properties", "notaccept"),
    ("5.0.350", None, "x-dg-ref header is too long", "policyviolation"),
    ("5.0.350", None, "requested action not taken: policy violation detected (as345)", "policyviolation"),
    ("5.7.", (900, 999), "delivery not authorized, message refused", "policyviolation"),
    ("5.1.7", None, "invalid address", "rejected"), ("5.1.7", None, "unknown sender address", "rejected"),
    ("5.1.0", None, "sender denied", "rejected"),
    ("5.1.8", None, "access denied, bad outbound sender", "rejected"),
    ("5.7.1", None, "delivery not authorized", "rejected"),
    ("5.7.12", None, "sender was not authenticated by organization", "rejected"),
    ("5.7.124", None, "sender not in allowed-senders list", "rejected"),
    ("5.7.133", None, "sender not authenticated for group", "rejected"),
    ("5.7.134", None, "sender was not authenticated for mailbox", "rejected"),
    ("5.7.13", None, "sender was not authenticated for public folder", "rejected"),
    ("5.7.135", None, "sender was not authenticated for public folder", "rejected"),
    ("5.7.136", None, "sender was not authenticated", "rejected"),
    ("5.7.", (501, 503), "access denied, spam abuse detected", "rejected"),
    ("5.7.512", None, "access denied, message must be rfc 5322 section 3.6.2 compliant", "rejected"),
    ("5.7.750", None, "service unavailable. client blocked from sending from unregistered domains",
     "rejected"),
    ("5.7.", (501, 503), "access denied, banned sender", "rejected"),
    ("5.7.3", None, "cannot achieve exchange server authentication", "securityerror"),
    ("5.7.3", None, "not authorized", "securityerror"),
    ("5.7.1", None, "client was not authenticated", "securityerror"),
    ("5.7.57", None, "client was not authenticated to send anonymous mail during mail from", "securityerror"),
    ("5.2.1", None, "content filter agent quarantined this message", "spamdetected"),
    ("5.5.3", None, "too many recipients", "ratelimited"),
    ("4.3.2", None, "storedrv.deliver; recipient thread limit exceeded", "ratelimited"),
    ("4.5.3", None, "too many recipients", "ratelimited"),
    ("4.7.652", None, "has exceeded the maximum number of connections", "ratelimited"),
    ("5.1.90", None, "reached your daily limit for message recipients", "ratelimited"),
    ("5.2.2", None, "submission quota exceeded", "ratelimited"),
    ("5.2.121", None, "recipient's per hour message receive limit", "ratelimited"),
    ("5.2.122", None, "recipient's per hour message receive limit", "ratelimited"),
    ("5.2.122", None, "the recipient has exceeded their limit for", "ratelimited"),
    ("5.7.508", None, "has exceeded permitted limits within", "ratelimited"),
    ("5.7.", (700, 749), "tenant has exceeded threshold", "ratelimited"),
    ("5.7.", (700, 749), "traffic not accepted from this ip", "ratelimited"),
    ("5.7.504", None, "recipient address rejected: access denied", "suspend"),
    ("5.7.505", None, "access denied, banned recipient", "suspend"),
    ("5.2.1", None, "mailbox cannot be accessed", "suspend"),
    ("5.3.3", None, "unrecognized command", "syntaxerror"),
    ("5.5.2", None, "send hello first", "syntaxerror"),
    ("4.3.2", None, "service not available", "systemerror"),
    ("4.3.2", None, "service not active", "systemerror"),
    ("5.3.5", None, "system incorrectly configured", "systemerror"),
    ("5.3.190", None, "when journaling archive is disabled", "systemerror"),
    ("5.0.0", None, "helo / ehlo requires domain address", "systemerror"),
    ("5.1.4", None, "destination mailbox address ambiguous", "systemerror"),
    ("5.2.4", None, "mailing list expansion problem", "systemerror"),
    ("5.2.14", None, "misconfigured forwarding address", "systemerror"),
    ("4.4.", (22, 28), "message failed to be replicated:", "systemerror"),
    ("4.4.3", None, "temporary server error. please try again later attr18", "systemerror"),
    ("4.7.0", None, "temporary server error. please try again later. prx4 nexthop:", "systemerror"),
    ("4.4.318", None, "(suspiciousremoteservererror)", "systemerror"),
    ("5.4.318", None, "(suspiciousremoteservererror)", "systemerror"),
    ("4.7.500", None, "server busy. please try again later from ", "systemerror"),
    ("4.7.700", None, "pfa agent busy, please try again.", "systemerror"),
    ("4.3.1", None, "insufficient system resources", "systemfull"),
    ("5.1.1", None, "resolver.adr.exrecipnotfound; not found", "userunknown"),
    ("5.1.1", None, "user unknown", "userunknown"),
    ("5.1.3", None, "storedrv.submit; invalid recipient address", "userunknown"),
    ("5.1.", (4, 5), "recipient address reserved by rfc 2606", "userunknown"),
    ("5.1.6", None, "recipient addresses in single label domains not accepted", "userunknown"),
    ("5.1.1", None, "bad destination mailbox address", "userunknown"),
    ("5.1.10", None, "recipient not found", "userunknown"),
    ("5.4.1", None, "recipient address rejected: access denied", "userunknown"),
    ("5.5.0", None, "requested action not taken: mailbox unavailable", "userunknown"),
    ("5.1.2", None, "invalid x.400 address", "userunknown"),
    ("5.1.351", None, "remote server returned unknown recipient or mailbox unavailable", "userunknown"),
]
# Mimecast: (reply code, phrase, reason).
_MIMECAST: list[tuple[str, str, str]] = [
    ("550", "spf sender invalid - envelope rejected", "authfailure"),
    ("550", "dkim sender invalid - envelope rejected", "authfailure"),
    ("550", "dmarc sender invalid - envelope rejected", "authfailure"),
    ("451", "internal resources are temporarily unavailable", "badreputation"),
    ("550", "local ct ip reputation - (reject)", "badreputation"),
    ("421", "sender address blocked", "blocked"), ("451", "recipient temporarily unavailable", "blocked"),
    ("451", "ip temporarily blacklisted", "blocked"),
    ("550", "journal messages past the expiration", "expired"),
    ("553", "this route requires encryption (tls)", "failedstarttls"),
    ("553", "this route requires tls version 1.2 or greater", "failedstarttls"),
    ("553", "this route requires high-strength ciphers", "failedstarttls"),
    ("554", "configuration is invalid for this certificate", "failedstarttls"),
    ("554", "maximum email size exceeded", "mesgtoobig"),
    ("451", "the incorrect hostname used for inbounds", "networkerror"),
    ("550", "the incorrect hostname used for inbounds", "networkerror"),
    ("554", "mail loop detected", "networkerror"), ("451", "open relay not allowed", "norelaying"),
    ("451", "open relay is not allowed", "norelaying"), ("451", "account inbounds disabled", "notaccept"),
    ("451", "account outbounds disabled", "onhold"), ("451", "hostname is not authorized", "onhold"),
    ("550", "journal message past expiration", "onhold"),
    ("550", "anti-spoofing policy - inbound not allowed", "policyviolation"),
    ("550", "rejected by header-based anti-spoofing policy", "policyviolation"),
    ("550", "message bounced due to content examination policy", "policyviolation"),
    ("554", "host network not allowed", "policyviolation"),
    ("554", "host network, not allowed", "policyviolation"),
    ("550", "administrative prohibition envelope blocked", "rejected"),
    ("550", "envelope blocked - user entry", "rejected"),
    ("550", "envelope blocked - user domain entry", "rejected"),
    ("550", "rejected by header-based manually blocked senders", "rejected"),
    ("550", "rejected by header-based blocked senders", "rejected"),
    ("550", "envelope rejected - block policy for envelope from address", "rejected"),
    ("535", "incorrect authentication data", "securityerror"),
    ("550", "submitter failed to disabled", "securityerror"),
    ("550", "submitter failed to authenticate", "securityerror"),
    ("451", "unable to process connection at this time", "systemerror"),
    ("451", "message ended early", "systemerror"), ("451", "unable to process command", "systemerror"),
    ("451", "unable to process an email at this time", "systemerror"),
    ("451", "account service is temporarily unavailable", "toomanyconn"),
    ("452", "too many recipients", "toomanyconn"), ("550", "exceeding outbound thread limit", "toomanyconn"),
    ("501", "invalid address", "userunknown"), ("503", "user unknown", "userunknown"),
    ("550", "invalid recipient", "userunknown"),
    ("554", "email rejected due to security policies", "virusdetected"),
]
_MICROSOFT_LABELS = {
    "RP-001": ("421", "badreputation"), "RP-002": ("421", "badreputation"),
    "RP-003": ("421", "badreputation"),
    "SC-001": ("550", "badreputation"), "SC-002": ("550", "policyviolation"), "SC-003": ("550", "blocked"),
    "SC-004": ("550", "blocked"), "DY-001": ("550", "blocked"), "DY-002": ("550", "virusdetected"),
    "OU-001": ("550", "blocked"), "OU-002": ("550", "badreputation"),
}
_NTTDOCOMO: _Table = [
    ("mailboxfull", "552 too much mail data"), ("syntaxerror", "503 bad sequence of commands"),
    ("syntaxerror", "504 command parameter not implemented"), ("toomanyconn", "552 too many recipients"),
]
_GSUITE: _Table = [
    ("hostunknown", " responded with code nxdomain"), ("hostunknown", "domain name not found"),
    ("networkerror", " had no relevant answers."), ("networkerror", "responded with code nxdomain"),
    ("networkerror", "domain name not found"), ("notaccept", "null mx"),
    ("userunknown",
     "because the address couldn't be found. check for typos or unnecessary spaces and try again."),
]


def provider_of(facts: Facts, parsed: Parsed | None = None) -> str:
    """The provider whose rules apply: by the recipient's domain, the remote host, then the reporting host."""
    domain = facts.destination.lower()
    if domain:
        for name, endings in PROVIDERS.items():
            if any(ending.endswith(domain) and (ending == domain or ending.endswith("." + domain))
                   for ending in endings):
                return name
    for host in (facts.rhost.lower(), _reporting_host(parsed) if parsed is not None else ""):
        host = host.strip(" .[]")
        if not host:
            continue
        for name, endings in PROVIDERS.items():
            if any(host.endswith(ending) for ending in endings):
                return name
    return ""


def _reporting_host(parsed: Parsed) -> str:
    value = parsed.dsn_message.get("reporting-mta", "")
    return value.split(";", 1)[-1].strip().lower()


def rules_for(facts: Facts, parsed: Parsed | None = None) -> Callable[[Facts], str] | None:
    provider = provider_of(facts, parsed)
    if not provider:
        return None
    return lambda f: reason_by_provider(provider, f)


def reason_by_provider(provider: str, f: Facts) -> str:
    text = f.text
    if not text:
        return ""
    if provider == "franceptt":
        labels = re.findall(r"(?:lpnaaa|lpn|ofr|ouk)[_\-]?\d*[_\-](\d{3})\b", text)
        if labels and labels[-1] in _FRANCEPTT_CODES:
            return _FRANCEPTT_CODES[labels[-1]]
    elif provider == "facebook":
        m = re.search(r"\b([A-Z]{3}-[PT]\d)\b", f.diagnostic)
        if m and m.group(1) in _FACEBOOK_CODES:
            return _FACEBOOK_CODES[m.group(1)]
        return ""
    elif provider == "godaddy":
        m = re.search(r"\b(IB\d{3})\b", f.diagnostic)
        if m and m.group(1) in _GODADDY_CODES:
            return _GODADDY_CODES[m.group(1)]
    elif provider == "iua":
        m = re.search(r"\.i\.ua/err/(\d+)/", text)
        return _IUA_CODES.get(m.group(1), "") if m else ""
    elif provider == "cox":
        m = re.search(r"AUP#([A-Z0-9]+)", f.diagnostic)
        if m and m.group(1) in _COX_CODES:
            return _COX_CODES[m.group(1)]
    elif provider == "spectrum":
        m = re.search(r"aup#\D*(\d{4})", text)
        if m:
            number = int(m.group(1))
            return next((reason for low, high, reason in _SPECTRUM_RANGES if low <= number <= high), "")
        return ""
    elif provider == "microsoft":
        return _microsoft(f)
    elif provider == "mimecast":
        matches = (reason for reply, phrase, reason in _MIMECAST if f.replycode == reply and phrase in text)
        return next(matches, "")
    elif provider == "nttdocomo":
        return _nttdocomo(f)
    elif provider == "gsuite":
        return _gsuite(f)
    for reason, phrase in _PHRASES.get(provider, []):
        if phrase in text:
            return reason
    return ""


def _microsoft(f: Facts) -> str:
    if not f.status:
        return ""
    text = f.text
    detail = f.status.rsplit(".", 1)[-1]
    for prefix, span, phrase, reason in _MICROSOFT:
        if span is None:
            if f.status != prefix:
                continue
        elif not (f.status.startswith(prefix) and detail.isdigit() and span[0] <= int(detail) <= span[1]):
            continue
        if phrase in text:
            return reason
    for label, (reply, reason) in _MICROSOFT_LABELS.items():
        if label in f.diagnostic and f.replycode == reply:
            return reason
    return ""


def _nttdocomo(f: Facts) -> str:
    if f.status in ("5.1.1", "5.0.911"):
        return "userunknown"
    if f.status == "5.2.0":
        return "filtered"
    for reason, phrase in _NTTDOCOMO:
        if phrase in f.text:
            return reason
    if f.status == "5.0.0":
        return {"RCPT": "userunknown", "DATA": "rejected"}.get(f.command, "")
    return ""


def _gsuite(f: Facts) -> str:
    status_class = f.status[:1]
    reply_class = f.replycode[:1]
    for reason, phrase in _GSUITE:
        if phrase not in f.text:
            continue
        if reason == "networkerror" and "5" in (status_class, reply_class):
            continue
        if reason == "hostunknown" and (status_class in ("4", "") or reply_class in ("4", "")):
            continue
        return reason
    return ""
