"""Why a message bounced: Sisimai's reason taxonomy from a status code, a reply code,
the failed SMTP command and the diagnostic text.

The names are Sisimai's (https://libsisimai.org/en/reason/) so numbers compare
with other tools' and with its test corpus. The decision works as Sisimai's
does, in its order; the phrase tables are real MTAs' messages, as Sisimai
(BSD 2-Clause) collected them, written here as our own patterns:

1. a reason the format parser already knows for certain (an ARF report is
   ``feedback``, an auto-reply ``vacation``; a vendor table may say more);
2. errors of a local delivery agent (procmail, maildrop, dovecot ...);
3. phrases particular to big receivers, chosen by the remote host;
4. "probes": the status code's meaning, checked against the text, in an
   order where specific reasons (mailbox full, too big) come before broad
   ones (blocked);
5. phrases alone; then the status code's meaning alone; then its subject
   (X.6 content, X.7 security); then the failed command.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from smtpeter.bounces.codes import find_replycode, find_status

REASONS: dict[str, str] = {
    "authfailure": "SPF, DKIM or DMARC failed",
    "badreputation": "the sending IP address or domain has a poor reputation",
    "blocked": "the sending IP address or host name is refused",
    "contenterror": "the headers or the MIME structure are refused",
    "delivered": "delivered (a positive delivery report)",
    "exceedlimit": "the message exceeds a limit of the mailbox",
    "expired": "gave up after retrying for too long",
    "failedstarttls": "STARTTLS failed or was required",
    "feedback": "a complaint (feedback loop report)",
    "filtered": "refused by the recipient's filter or settings",
    "hasmoved": "the mailbox has moved, without forwarding",
    "hostunknown": "the recipient's domain does not exist or takes no mail",
    "mailboxfull": "the recipient's mailbox is full",
    "mailererror": "the receiving side's delivery program failed",
    "mesgtoobig": "the message is too big for the receiving system",
    "networkerror": "DNS or network failure, a mail loop",
    "norelaying": "the receiving host does not relay for us",
    "notaccept": "the receiving domain takes no mail (null MX, 521/556)",
    "notcompliantrfc": "the message does not follow RFC 5322",
    "onhold": "not enough information to decide",
    "policyviolation": "refused by a policy of the receiver",
    "ratelimited": "too many messages too fast",
    "rejected": "the envelope sender is refused",
    "requireptr": "the sending IP address lacks a valid reverse DNS name",
    "securityerror": "authentication or another security check failed",
    "spamdetected": "refused as spam",
    "speeding": "refused for sending too fast",
    "suppressed": "the address is on a suppression list",
    "suspend": "the recipient's account is suspended or disabled",
    "syntaxerror": "an SMTP syntax error",
    "systemerror": "an error of the receiving system",
    "systemfull": "the receiving system's disk is full",
    "toomanyconn": "too many connections or recipients",
    "undefined": "no reason could be found",
    "userunknown": "the recipient's mailbox does not exist",
    "vacation": "an automatic out-of-office reply",
    "virusdetected": "refused for a virus",
}

# Reasons that say the address itself is bad: not worth sending to again.
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved"})
# Reasons so vague that a closer look may find a better one.
_RETRY = frozenset({"", "undefined", "onhold", "systemerror", "securityerror", "expired", "networkerror",
                    "hostunknown", "userunknown"})
_BEFORE_DATA = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# Phrase tables, over lower-cased text with runs of white space made one space.
# Each is what receiving MTAs and mailbox providers actually write.
PHRASES: dict[str, re.Pattern[str]] = {
    "userunknown": _any(
        r"#5\.1\.1 bad address", r"550 address invalid", r"5\.1\.0 address rejected",
        r"address (?:does not|doesn't) exist", r"address not present in directory", r"address unknown",
        r"can't accept user", r"does not exist\.", r"destination addresses were unknown",
        r"destination server rejected recipients", r"email address (?:does not exist|could not be found)",
        r"invalid (?:address|mailbox|recipient)\b", r"is not a known user", r"is not a valid mailbox",
        r"is not an active address at this host",
        r"mailbox (?:does not exist|invalid|is inactive|is unavailable|not present|not found|unavaiable)",
        r"nessun utente simile in questo indirizzo", r"no account by that name here",
        r"no existe (?:dicha persona|ese usuario)",
        r"no mail ?box available for this user",
        r"no mailbox (?:by that name is currently available|found|here by that name)",
        r"no such (?:address here|mailbox|person at this address|recipient|user)",
        r"no valid recipients, bye",
        r"account unavailable", r"not a valid (?:recipient|user here)", r"not a local address",
        r"not email addresses",
        r"recipient address rejected(?:\. \(in reply to rcpt to command\)"
        r"|: (?:access denied|invalid[ \-]?user|invalid-recipient|unknown user|userunknown"
        r"|user unknown in .{0,40}table|user .{1,80} does not exist))",
        r"recipient (?:does not exist|is not accepted|is not local|not exist|not found|not ok|unknown)",
        r"recipient refuses to accept your mail", r"requested action not taken: mailbox unavailable",
        r"resolver\.adr\.recipient ?notfound",
        r"sorry, (?:user unknown|badrcptto|no mailbox here by that name)",
        r"your envelope recipient has been denied",
        r"that domain or user isn't in my list of allowed rcpthosts",
        r"the email account that you tried to reach does not exist",
        r"the following recipients was undeliverable",
        r"the user's email name is not found", r"there is no one at this address",
        r"this email address is wrong or no longer valid", r"badrecipientto list|badrcptto list",
        r"is not in my validrcptto list", r"this spectator does not exist",
        r"unknown (?:mailbox|recipient|user|local[ \-]?part|e-?mail address)",
        r"user (?:does not exist|missing home directory|not active|not exist|not found|not known|unknown)",
        r"user doesn't exist", r"utilisateur inconnu", r"vdeliver: invalid or unknown virtual user",
        r"weil die adresse nicht gefunden wurde", r"<[^>]*> not found", r"<[^>]*>\.\.\. blocked by ",
        r"account .{1,80} does not exist at the organization", r"bad.{0,20}recipient",
        r"mailbox .{0,80}(?:does not exist|unavailable or access denied)", r"no .{1,40} in name directory",
        r"non-?existent user", r"rcpt <.{1,80} does not exist", r"recipient .{1,80} was not found in",
        r"user \S+ (?:was not found|does not exist)", r"user \(.{1,80}\) unknown",
        r"this user doesn't have a .{1,40} account", r"address rejected: undeliverable address",
        r"no such local user",
        r"adresse d au moins un destinataire invalide. invalid recipient\. 41[68]",
    ),
    "mailboxfull": _any(
        r"452 insufficient disk space", r"account disabled temporarly for exceeding receiving limits",
        r"boite du destinataire pleine", r"exceeded storage allocation", r"full mailbox",
        r"mailbox exceeds allowed size", r"mailbox size limit exceeded",
        r"mailbox would exceed maximum allowed storage", r"mail ?folder is full", r"no space left on device",
        r"not sufficient disk space", r"quota violation for", r"too much mail data",
        r"user has exceeded quota", r"user has too many messages on the server",
        r"user's space has been used up", r"account is .{0,40} quota", r"disk.{0,40}quota",
        r"enough .{0,20} space", r"mailbox .{0,40}exceeded.{0,40} limit", r"mailbox .{0,40}full",
        r"mailbox .{0,40}quota", r"maildir .{0,40}quota", r"over .{0,20}quota", r"quota .{0,40}exceeded",
        r"inbox is out of storage space", r"is over quota",
        r"mailbox is full", r"storage (?:quota|limit) (?:exceeded|reached)",
        r"exceeded (?:his|her|their|the) (?:storage|quota)",
    ),
    "mesgtoobig": _any(
        r"exceeded maximum inbound message size", r"exceeded the maximum incoming message size",
        r"line limit exceeded", r"max(?:imum)? message size exceeded", r"message file too big",
        r"message length exceeds administrative limit", r"message size exceeds (?:fixed|maximum)",
        r"message too big", r"message too large for this ", r"size limit",
        r"taille limite du message atteinte",
        r"message (?:is )?(?:too large|larger than)", r"exceeded google's message size limits",
    ),
    "exceedlimit": _any(r"message header size exceeds limit", r"message too large"),
    "suspend": _any(
        r" is currently suspended", r" temporary locked", r"archived recipient",
        r"boite du destinataire archivee",
        r"email account that you tried to reach is (?:disabled|inactive)", r"has been (?:suspended|disabled)",
        r"inactive account", r"invalid/inactive user", r"is a deactivated mailbox",
        r"is unavailable: user is terminated", r"mailbox (?:currently suspended|disabled|is frozen)",
        r"mailbox unavailable or access denied", r"recipient rejected: temporarily inactive",
        r"recipient suspend the service",
        r"this account has been (?:disabled or discontinued|temporarily suspended)",
        r"this address no longer accepts mail", r"this mailbox is disabled", r"user or domain is disabled",
        r"user suspended", r"account is locked", r"account (?:has been )?(?:disabled|deactivated|suspended)",
        r"account is (?:disabled|inactive|suspended)",
    ),
    "hasmoved": _any(r" has been replaced by "),
    "norelaying": _any(
        r"as a relay", r"email address is not verified\.", r"insecure mail relay",
        r"is not permitted to relay through this server without authentication",
        r"requires authentication when attempting to send to a non-local e-mail address",
        r"no relaying", r"not a gateway", r"not allowed to relay through this machine",
        r"not an open relay", r"not local host",
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited)",
        r"relaying mail to ", r"specified domain is not allowed",
        r"that domain isn't in my list of allowed rcpthost", r"this system is not configured to relay mail",
        r"unable to relay ", r"we don't handle mail for", r"relay not allowed", r"mail relay denied",
    ),
    "authfailure": _any(
        r"//spf\.pobox\.com", r"bad spf records for", r"dmarc policy",
        r"doesn't meet the required authentication level",
        r"please inspect your spf settings", r"sender policy framework (?:\(spf\) fail|violation)",
        r"spf \(sender policy framework\) domain authentication fail", r"spf check: fail",
        r"5322\.from address doesn't meet the authentication requirements",
        r" is not allowed to send mail\..{0,80}_401",
        r"is not allowed to send from <.{1,200} per it's spf record",
        r"does not pass dmarc", r"fails? to pass (?:spf|dkim|authentication)",
        r"dmarc (?:verification|check) fail",
        r"spf (?:validation|check)s? (?:failed|error)", r"has an spf record with a hard fail",
        r"senders to authenticate with", r"unauthenticated email from .{1,80} is not accepted",
        r"dkim (?:signature )?(?:validation|verification) failed", r"spf fail(?:ure)?\b",
    ),
    "requireptr": _any(
        r"access denied\. ip name lookup failed", r"must have a ptr record with a valid reverse dns entry",
        r"bad dns ptr resource record", r"cannot find your hostname", r"cannot resolve your address\.",
        r"fix reverse dns for ", r"ips with missing ptr records", r"no ptr record found\.",
        r"please get a custom reverse dns name", r"ptr record setup", r"reverse dns (?:failed|required)",
        r"sender ip reverse lookup rejected", r"does not have a ptr record",
        r"forward dns entry does not point to",
        r"will not accept messages from servers/devices with no reverse dns", r"unresolvable relay host name",
        r"dynamic ip or generic dns ptr-records", r"domain .{1,80} mismatches client ip",
        r"dns lookup failure: .{1,80} try again later",
        r"reverse dns lookup for host .{1,80} failed permanently",
        r"forbidden by invalid rdns record of your mail server",
        r"service permits .{1,40} unverifyable sending ips",
        r"must have a reverse dns record", r"client host rejected: cannot find your reverse hostname",
        r"reverse (?:dns|lookup) (?:does not match|mismatch)",
    ),
    "notcompliantrfc": _any(
        r"duplicate header", r"this message is not rfc 5322 compliant", r"p=rfcmessagenoncompliant",
        r" multiple .{1,40} header",
    ),
    "badreputation": _any(
        r"a poor email reputation score", r"rate limited due to ip reputation",
        r"ip/domain reputation problems",
        r"suspicious due to the very low reputation", r"none/bad reputation",
        r"temporarily deferred due to unexpected volume or user complaints",
        r"the sending mta's poor reputation",
        r"very low reputation of the sending",
    ),
    "contenterror": _any(
        r"duplicate header", r"header size exceeds maximum permitted",
        r"improper use of 8-bit data in message header",
        r"message header size, or recipient list, exceeds policy limit",
        r"message mime complexity exceeds the policy maximum",
        r"routing loop detected -- too many received: headers",
        r"this message contain (?:invalid mime headers|improperly-formatted binary content"
        r"|text that uses unnecessary base64 encoding)",
    ),
    "rejected": _any(
        r"access denied \(in reply to mail from command\)", r"access denied \(sender blacklisted\)",
        r"address rejected", r"administrative prohibition", r"batv (?:failed to verify|validation failure)",
        r"backscatter protection detected an invalid or expired email address",
        r"because the sender isn't on the recipient's list of senders to accept mail from",
        r"bogus mail from", r"can't determine purported responsible address",
        r"connections not accepted from servers without a valid sender domain", r"denied \[bouncedeny\]",
        r"denied by secumail valid-address-filter", r"delivery not authorized, message refused",
        r"does not exist e2110", r"domain of sender address ", r"email address is on senderfilterconfig list",
        r"emetteur invalide", r"empty envelope senders not allowed", r"envelope blocked - ",
        r"error: no third-party dsns", r"from: domain is invalid\. please provide a valid from:",
        r"fully qualified email address required", r"invalid domain, see <url:", r"invalid sender",
        r"is not a registered gateway user", r"mail from not owned by user",
        r"message rejected: email address is not verified", r"mx records for ", r"null sender is not allowed",
        r"recipient addresses rejected : access denied", r"recipient not accepted\. \(batv: no tag",
        r"returned mail not accepted here", r"rfc 1035 violation: recursive cname records for",
        r"rule imposed mailbox access for", r"sending this from a different address or alias using the ",
        r"sender (?:address has been blacklisted|email address rejected|is in my black list|is spammer"
        r"|not pre-approved|rejected|domain is empty|verify failed|was rejected)",
        r"spam reporting address", r"syntax error: empty email address",
        r"the message has been rejected by batv defense", r"this server does not accept mail from",
        r"transaction failed unsigned dsn for", r"unroutable sender address",
        r"you are not allowed to post to this mailing list",
        r"you are sending to/from an address that has been blacklisted",
        r"your access to submit messages to this e-mail system has been rejected",
        r"your email address has been blacklisted", r"sender address rejected", r"bad sender address",
    ),
    "hostunknown": _any(
        r"domain does not exist", r"domain is not reachable", r"domain must exist",
        r"host or domain name not found",
        r"host unknown", r"host unreachable", r"mail domain mentioned in email address is unknown",
        r"name or service not known", r"no such domain", r"recipient address rejected: unknown domain",
        r"recipient domain must exist", r"the account or domain may not exist", r"unknown host",
        r"unrout(?:e)?able address", r"553 .{1,80} does not exist", r"domain not found",
        r"domain name not found",
        r"unknown domain",
    ),
    "spamdetected": _any(
        r" - spam", r"//www\.spamhaus\.org/help/help_spam_16\.htm", r"//dsbl\.org/help/help_spam_16\.htm",
        r"//mail\.163\.com/help/help_spam_16\.htm", r"554 5\.7\.0 reject, id=", r"appears to be unsolicited",
        r"blacklisted url in message", r"block for spam", r"blocked by policy: no spam please",
        r"blocked by spamassassin", r"blocked for abuse\. see http://att\.net/blocks",
        r"cannot be forwarded because it was detected as spam",
        r"considered unsolicited bulk e-mail \(spam\) by our mail filters", r"content filter rejection",
        r"has identified this email as a bulk email", r"denied due to spam list", r"high probability of spam",
        r"is classified as spam and is rejected", r"listed in work\.drbl\.imedia\.ru",
        r"detected your message as spam", r"mail appears to be unsolicited", r"mail content denied",
        r"may consider spam", r"message (?:considered as|contains) spam or virus",
        r"message content rejected",
        r"message detected as spam", r"message filtered", r"message looks like spam",
        r"message is being rejected as it seems to be a spam", r"message refused by .{1,30}spamprofiler",
        r"message rejected (?:as spam|because of unacceptable content|due to suspected spam content"
        r"|for policy reasons)", r"message was rejected for possible spam/virus content",
        r"our email server thinks this email is spam", r"our system has detected that this message is ",
        r"probable spam", r"reject bulk\.advertising", r"rejected: spamassassin score ",
        r"rejected - bulk email",
        r"rejecting banned content", r"rejecting mail content", r"content with spam-like characteristics",
        r"sender domain listed at ", r"sending address not accepted due to spam filter",
        r"spam (?:blocked|check|content matched|detected|email|message rejected|not accepted|refused"
        r"|rejection|score )", r"spambouncer identified spam", r"spamming not allowed",
        r"too many spam complaints",
        r"too much spam\.", r"the email message was detected as spam",
        r"the message has been rejected by spam filtering engine",
        r"the message was rejected due to classification as bulk mail",
        r"the content of this message looked like spam",
        r"this message (?:appears to be|has been identified as"
        r"|was classified as) spam", r"this message has been scored as spam",
        r"rejected by recurrent pattern detection system", r"transaction failed spam message not queued",
        r"we dont accept spam", r"your email appears similar to spam",
        r"your email breaches local uribl policy",
        r"your email had spam-like ", r"your email (?:is considered|is probably|was detected as) spam",
        r"your message as spam and has prevented delivery", r"temporarily blocked by our filter",
        r"your message has been rejected because it appears to be spam",
        r"your message has triggered a spam block",
        r"your message may contain the spam contents", r"your message failed several antispam checks",
        r"greylisted.{1,80} please try again in", r"mail score \(.{1,40} over ",
        r"mail rejete\. mail rejected\. .{0,40}506", r"percent probability of being spam",
        r"rejected by .{1,40} \(spam\)", r"rejected due to spam (?:classification|content)",
        r"rule imposed as .{1,80} is blacklisted on", r"spam .{1,40} exceeded",
        r"this message scored .{1,40} spam points",
        r"identified (?:as|this (?:email|message) as) spam", r"classified as spam", r"looks like spam",
    ),
    "speeding": _any(
        r"mail sent from your ip address has been temporarily rate limited", r"please try again slower",
        r"receiving mail at a rate that prevents additional messages from being delivered",
    ),
    "toomanyconn": _any(
        r"all available ips are at maximum connection limit", r"connection rate limit exceeded",
        r"exceeds per-domain connection limit for", r"has exceeded the max emails per hour ",
        r"throttling failure: (?:daily message quota|maximum sending rate) exceeded", r"too many connections",
        r"too many concurrent smtp connections", r"too many errors from your ip", r"too many recipients",
        r"too many smtp sessions for this host", r"trop de connexions, ",
        r"we have already made numerous attempts to deliver this message",
    ),
    "blocked": _any(
        r" said: 550 blocked", r"//www\.spamcop\.net/bl\.", r"bad sender ip address", r"banned sending ip",
        r"blacklisted by", r"blocked using ", r"blocked - see http", r"dnsbl:attrbl",
        r"client host rejected: abus detecte gu_eib_0[24]",
        r"client host rejected: may not be mail exchanger",
        r"client host rejected: was not authenticated", r"confirm this mail server", r"connection dropped",
        r"connection refused by", r"connection reset by peer", r"connection was dropped by remote host",
        r"connections not accepted from ip addresses on spamhaus xbl", r"currently sending spam see: ",
        r"domain does not exist:", r"dynamic/zombied/spam ips blocked", r"error: no valid recipients from ",
        r"esmtp not accepting connections", r"extreme bad ip profile", r"go away", r"helo command rejected:",
        r"host network not allowed", r"hosts with dynamic ip", r"invalid ip for sending mail of domain",
        r"is in a black list", r"is not allowed to send mail from", r"mailfrom domain is listed in spamhaus",
        r"no access from mail server", r"no matches to nameserver query",
        r"not currently accepting mail from your ip", r"part of their network is on our block list",
        r"please use the smtp server of your isp", r"refused - see http", r"rejected - multi-blacklist",
        r"rejected because the sending mta or the sender has not passed validation", r"rejecting open proxy",
        r"sender ip address rejected", r"server access forbidden by your ip ",
        r"service not available, closing transmission channel",
        r"smtp error from remote mail server after initial connection:",
        r"sorry, that domain isn't in my list of allowed rcpthosts",
        r"sorry, your remotehost looks suspiciously like spammer",
        r"to submit messages to this e-mail system has been rejected", r"too many spams from your ip",
        r"too many unwanted messages have been sent from the following ip address",
        r"was blocked by ", r"we do not accept mail from dynamic ips", r"you are not allowed to connect",
        r"you are sending spam", r"your ip address is listed in the rbl",
        r"your network is temporary blacklisted",
        r"your server requires confirmation", r"\(.{1,80}@.{1,80}:blocked\)",
        r"access from ip address .{1,80} blocked",
        r"client host .{1,80} blocked using", r"because the ip is in spamhaus's list",
        r"dnsbl:rbl .{1,80}>_is_blocked", r"email blocked by .{1,80}(?:\.barracudacentral\.org|spamhaus)",
        r"host .{1,80} refused to talk to me: .{1,80} blocked", r"ip .{1,80} is blocked by earthlink",
        r"is in an .{1,40}rbl on ", r"mail server at .{1,80} is blocked", r"mail from .{1,80} refused:",
        r"message from .{1,80} rejected based on blacklist",
        r"messages from .{1,80} temporarily deferred due to user complaints",
        r"server ip .{1,80} listed as abusive",
        r"your ip address.{1,80} is blocked by rbl", r"the (?:domain|email|ip).{1,80} is blacklisted",
        r"service refused, please try later\. .{0,20}(?:103|510)", r"your access ip.{1,80} has been rejected",
        r"your sender's ip address is listed at .{1,80}\.abuseat\.org", r"access denied, banned sending ip",
        r"client host rejected: access denied",
        r"listed (?:in|on|at) (?:the )?(?:rbl|dnsbl|spamhaus|barracuda)",
        r"ip (?:address )?(?:is )?(?:blacklisted|blocklisted|banned)",
    ),
    "virusdetected": _any(
        r"it has a potentially executable attachment",
        r"the message was rejected because it contains prohibited virus or spam content",
        r"this form of attachment has been used by recent viruses or other malware", r"virus detected",
        r"virus phishing/malicious_url detected", r"your message was infected with a virus",
        r"infected with a virus", r"contains? (?:a )?virus",
    ),
    "policyviolation": _any(
        r"an illegal attachment on your message", r"because the recipient is not accepting mail with ",
        r"by non-member to a members-only list", r"closed mailing list", r"denied by policy",
        r"email not accepted for policy reasons", r"email rejected due to security policies",
        r"header are not accepted", r"header error", r"local policy violation",
        r"message bounced due to organizational settings", r"message given low priority",
        r"message not accepted for policy reasons", r"message rejected due to local policy",
        r"messages with multiple addresses", r"rejected for policy reasons", r"protocol violation",
        r"the email address used to send your message is not subscribed to this group",
        r"the message was rejected by organization policy",
        r"this message was blocked because its content presents a potential",
        r"we do not accept messages containing images or other attachments", r"you're using a mass mailer",
        r"you have exceeded the.{1,80}allowable number of posts without solving a captcha",
    ),
    "systemerror": _any(
        r"aliasing/forwarding loop broken", r"can't create user output file",
        r"could not load drd for domain",
        r"internal error reading data", r"internal server error: operation now in progress",
        r"interrupted system call", r"it encountered an error while being processed",
        r"it would create a mail loop",
        r"local configuration error", r"local error in processing", r"loop was found in the mail exchanger",
        r"loops back to myself", r"mail system configuration error", r"queue file write error",
        r"recipient deferred because there is no mdb", r"remote server is misconfigured",
        r"server configuration error", r"service currently unavailable", r"system config error",
        r"temporary local problem", r"timeout waiting for input", r"transaction failed ",
        r"unable to connect .{0,80}daemon",
    ),
    "networkerror": _any(
        r"could not connect and send the mail to",
        r"dns records for the destination computer could not be found",
        r"hop count exceeded - possible mail loop", r"host is unreachable", r"host name lookup failure",
        r"host not found, try again", r"mail forwarding loop for ",
        r"malformed (?:or unexpected )?name server reply",
        r"maximum forwarding loop count exceeded", r"message looping", r"message probably in a routing loop",
        r"no route to host", r"too many hops", r"unable to resolve route ", r"unrouteable mail domain",
    ),
    "systemfull": _any(r"mail system full", r"requested mail action aborted: exceeded storage allocation"),
    "notaccept": _any(
        r"does not accept mail \(nullmx\)", r"host/domain does not accept mail", r"host does not accept mail",
        r"mail receiving disabled", r"name server: \.: host not found", r"no mx record found for domain=",
        r"no route for current request", r"smtp protocol returned a permanent error", r"null mx",
    ),
    "expired": _any(
        r"connection timed out", r"could not find a gateway for", r"delivery attempts will continue to be",
        r"delivery (?:time )?expired", r"failed to deliver to domain ", r"giving up on",
        r"have been failing for a long time",
        r"has been delayed", r"it has not been collected after", r"message expired",
        r"message timed out", r"retry time not reached for any host after a long failure period",
        r"server did not respond", r"this message has been in the queue too long",
        r"unable to deliver message after multiple retries",
        r"was not reachable within the allowed queue period",
        r"your message could not be delivered for more than", r"could not be delivered for.{1,40} days",
        r"retry timeout exceeded", r"queue ?time ?out", r"too long in (?:the )?queue",
    ),
    "failedstarttls": _any(r"starttls is required to send mail", r"tls required but not supported",
                           r"must issue a starttls command first"),
    "securityerror": _any(
        r"account not subscribed to ses", r"authentication (?:credentials invalid|failure|required)",
        r"authentication turned on in your email client",
        r"executable files are not allowed in compressed files",
        r"insecure mail relay", r"recipient address rejected: access denied",
        r"sorry, you don't authenticate or the domain isn't in my list of allowed rcpthosts",
        r"unauthenticated senders not allowed", r"verification failure",
        r"you are not authorized to send mail, authentication is required",
        r"authentication failed; server .{1,80} said: ",
        r"authentification (?:invalide.{0,20}305|requise.{0,20}402)",
        r"domain .{1,80} is a dead domain", r"is not authorized to perform ses:sendrawemail on resource",
    ),
    "mailererror": _any(
        r" \|\| exit ", r"procmail: ", r"bin/procmail", r"bin/maildrop", r"command failed: ",
        r"command died with status ", r"command output:", r"mailer error", r"pipe to \|/", r"x-unix; ",
    ),
    "vacation": _any(r"i am away on vacation", r"i am away until", r"i am out of the office",
                     r"i will be traveling for work on"),
    "filtered": _any(
        r"account is protected by", r"bounced address", r"has restricted sms e-mail",
        r"is not accepting any mail",
        r"message filtered", r"message rejected due to user rules", r"not found recipient account",
        r"recipient id refuse to receive mail",
        r"recipient is only accepting mail from specific email addresses",
        r"refused due to recipient preferences", r"user not found", r"user refuses to receive this mail",
        r"user reject", r"you have been blocked by the recipient",
    ),
}

# RFC 3463 status codes and what each one means in this taxonomy.
STATUS_REASONS: dict[str, str] = {
    "2.1.5": "delivered",
    "4.1.6": "hasmoved", "4.1.7": "rejected", "4.1.8": "rejected", "4.1.9": "systemerror",
    "4.2.1": "blocked", "4.2.2": "mailboxfull", "4.2.3": "exceedlimit", "4.2.4": "filtered",
    "4.3.1": "systemfull", "4.3.2": "notaccept", "4.3.3": "systemerror", "4.3.5": "systemerror",
    "4.4.1": "expired", "4.4.2": "networkerror", "4.4.3": "systemerror", "4.4.4": "networkerror",
    "4.4.5": "systemfull", "4.4.6": "networkerror", "4.4.7": "expired", "4.4.8": "networkerror",
    "4.5.3": "systemerror", "4.5.5": "systemerror",
    "4.6.0": "contenterror", "4.6.2": "contenterror", "4.6.5": "contenterror",
    "4.7.1": "blocked", "4.7.2": "blocked", "4.7.5": "securityerror", "4.7.6": "securityerror",
    "4.7.7": "securityerror", "4.7.12": "securityerror", "4.7.15": "securityerror", "4.7.16": "mesgtoobig",
    "4.7.24": "authfailure", "4.7.25": "requireptr", "4.7.26": "authfailure",
    "5.1.0": "userunknown", "5.1.1": "userunknown", "5.1.2": "hostunknown", "5.1.3": "userunknown",
    "5.1.4": "filtered", "5.1.6": "hasmoved", "5.1.7": "rejected", "5.1.8": "rejected",
    "5.1.9": "systemerror",
    "5.1.10": "notaccept",
    "5.2.0": "filtered", "5.2.1": "filtered", "5.2.2": "mailboxfull", "5.2.3": "exceedlimit",
    "5.2.4": "filtered",
    "5.3.0": "systemerror", "5.3.1": "systemfull", "5.3.2": "notaccept", "5.3.3": "systemerror",
    "5.3.4": "mesgtoobig", "5.3.5": "systemerror",
    "5.4.0": "networkerror", "5.4.3": "systemerror", "5.4.4": "hostunknown",
    "5.5.2": "syntaxerror", "5.5.3": "toomanyconn", "5.5.4": "systemerror", "5.5.5": "systemerror",
    "5.5.6": "syntaxerror",
    "5.6.0": "contenterror", "5.6.1": "contenterror", "5.6.2": "contenterror", "5.6.3": "contenterror",
    "5.6.5": "contenterror", "5.6.6": "contenterror", "5.6.7": "contenterror", "5.6.8": "contenterror",
    "5.6.9": "contenterror",
    "5.7.0": "securityerror", "5.7.1": "securityerror", "5.7.2": "securityerror", "5.7.3": "securityerror",
    "5.7.4": "securityerror", "5.7.5": "securityerror", "5.7.6": "securityerror", "5.7.7": "securityerror",
    "5.7.8": "securityerror", "5.7.9": "securityerror", "5.7.10": "securityerror", "5.7.11": "securityerror",
    "5.7.13": "suspend", "5.7.14": "securityerror", "5.7.15": "securityerror", "5.7.16": "mesgtoobig",
    "5.7.17": "hasmoved", "5.7.18": "hasmoved", "5.7.19": "securityerror",
    "5.7.20": "authfailure", "5.7.21": "authfailure", "5.7.22": "authfailure", "5.7.23": "authfailure",
    "5.7.24": "authfailure", "5.7.25": "requireptr", "5.7.26": "authfailure", "5.7.27": "notaccept",
    "5.7.28": "spamdetected", "5.7.29": "authfailure", "5.7.30": "failedstarttls",
}

# Sisimai's codes for "no status code in the message, this one stands for the reason":
# X.0.9NN, the class from whether the text reads as temporary.
_PSEUDO_STATUS: dict[str, str] = {
    "authfailure": "926", "badreputation": "975", "blocked": "971", "contenterror": "960",
    "exceedlimit": "923",
    "expired": "947", "failedstarttls": "976", "filtered": "910", "hasmoved": "916", "hostunknown": "912",
    "mailboxfull": "922", "mailererror": "939", "mesgtoobig": "934", "networkerror": "944",
    "norelaying": "909",
    "notaccept": "932", "notcompliantrfc": "974", "onhold": "901", "policyviolation": "972",
    "rejected": "918",
    "requireptr": "973", "securityerror": "970", "spamdetected": "980", "speeding": "946",
    "suppressed": "903",
    "suspend": "921", "systemerror": "930", "systemfull": "931", "syntaxerror": "902", "toomanyconn": "945",
    "userunknown": "911", "undefined": "900", "virusdetected": "981", "ratelimited": "946",
}
_NO_TEMPORARY = frozenset({"hasmoved", "hostunknown", "userunknown"})


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip().lower()


def says(reason: str, text: str) -> bool:
    """Whether ``text`` (already normalized) reads as ``reason``."""
    pattern = PHRASES.get(reason)
    return bool(pattern and text and pattern.search(text))


def status_reason(status: str) -> str:
    return STATUS_REASONS.get(status, "")


def pseudo_status(reason: str, temporary: bool) -> str:
    """Sisimai's X.0.9NN code standing for ``reason`` when the message had no status."""
    number = _PSEUDO_STATUS.get(reason)
    if not number:
        return ""
    if temporary and reason not in _NO_TEMPORARY:
        return f"4.0.{'924' if reason == 'filtered' else number}"
    return f"5.0.{number}"


def is_permanent(text: str) -> bool:
    code = find_status(text) or find_replycode(text)
    return code.startswith("5") or " permanent " in f" {text.lower()} "


def is_temporary(text: str) -> bool:
    code = find_status(text) or find_replycode(text)
    lowered = f" {text.lower()}"
    return code.startswith("4") or " temporar" in lowered or " persistent" in lowered


def is_hard(reason: str, status: str = "", text: str = "") -> bool:
    """Hard bounce: the address is dead (no such user or domain, moved) or the domain takes no mail."""
    if reason in HARD_REASONS:
        return True
    if reason != "notaccept":
        return False
    evidence = f"{status} {text}".strip()
    if not evidence:
        return True
    code = find_status(evidence) or find_replycode(evidence)
    return code.startswith("5") or not is_temporary(evidence)


@dataclass
class Facts:
    """What is known about one recipient while its reason is decided."""

    status: str = ""
    replycode: str = ""
    diagnostic: str = ""
    command: str = ""
    action: str = ""
    spec: str = ""          # the Diagnostic-Code type: "SMTP", "X-UNIX", ...
    hint: str = ""          # a reason the format's parser already gave
    rhost: str = ""         # the remote host that answered
    destination: str = ""   # the recipient's domain

    @cached_property
    def text(self) -> str:
        return normalized(self.diagnostic)


def _probe_mailboxfull(f: Facts) -> bool:
    return f.hint == "mailboxfull" or status_reason(f.status) == "mailboxfull" or says("mailboxfull", f.text)


def _probe_mesgtoobig(f: Facts) -> bool:
    if f.hint == "mesgtoobig" or status_reason(f.status) == "mesgtoobig":
        return True
    if status_reason(f.status) == "exceedlimit" or f.status == "5.2.3":
        return False
    return says("mesgtoobig", f.text)


def _probe_simple(reason: str) -> Callable[[Facts], bool]:
    def probe(f: Facts) -> bool:
        return f.hint == reason or status_reason(f.status) == reason or says(reason, f.text)
    return probe


def _probe_suspend(f: Facts) -> bool:
    return f.hint == "suspend" or f.replycode == "525" or says("suspend", f.text)


def _probe_hasmoved(f: Facts) -> bool:
    return f.hint == "hasmoved" or says("hasmoved", f.text)


def _probe_norelaying(f: Facts) -> bool:
    if f.hint == "norelaying":
        return True
    if f.hint in ("securityerror", "systemerror", "undefined") or f.command in ("CONN", "EHLO", "HELO"):
        return False
    return says("norelaying", f.text)


def _probe_userunknown(f: Facts) -> bool:
    if f.hint == "userunknown":
        return True
    by_status = status_reason(f.status)
    if by_status == "userunknown":
        # 5.1.1 with a text that says something else (full, relaying, blocked, moved, the sender)
        return not (any(says(other, f.text) for other in ("norelaying", "blocked", "mailboxfull", "hasmoved",
                                                           "notaccept")) or _says_rejected(f.text))
    return f.command == "RCPT" and says("userunknown", f.text)


def _probe_filtered(f: Facts) -> bool:
    if f.hint == "filtered":
        return True
    if status_reason(f.status) == "filtered":
        return says("userunknown", f.text) or says("filtered", f.text)
    if f.command in _BEFORE_DATA:
        return False
    return says("filtered", f.text) or says("userunknown", f.text)


def _probe_notcompliantrfc(f: Facts) -> bool:
    return f.hint == "notcompliantrfc" or says("notcompliantrfc", f.text)


def _probe_badreputation(f: Facts) -> bool:
    return f.hint == "badreputation" or says("badreputation", f.text)


def _probe_contenterror(f: Facts) -> bool:
    if f.hint == "contenterror":
        return True
    if _probe_spamdetected(f):
        return False
    return status_reason(f.status) == "contenterror" or says("contenterror", f.text)


def _probe_rejected(f: Facts) -> bool:
    if f.hint == "rejected":
        return True
    by_status = status_reason(f.status)
    if by_status == "rejected":
        return True
    if f.command == "MAIL":
        return _says_rejected(f.text)
    if f.command == "DATA" and by_status != "userunknown":
        return _says_rejected(f.text)
    if by_status in ("", "undefined", "onhold", "securityerror", "systemerror"):
        return _says_rejected(f.text)
    return False


def _says_rejected(text: str) -> bool:
    if re.search(r"5\.1\.0 address rejected|recipient address rejected|sender ip address rejected", text):
        return False
    return says("rejected", text)


def _probe_hostunknown(f: Facts) -> bool:
    if f.hint == "hostunknown":
        return True
    if status_reason(f.status) == "hostunknown":
        return not says("networkerror", f.text)
    return says("hostunknown", f.text)


def _probe_spamdetected(f: Facts) -> bool:
    if not f.status and f.hint != "spamdetected":
        return False
    if f.hint == "spamdetected" or status_reason(f.status) == "spamdetected":
        return True
    if f.command in _BEFORE_DATA:
        return False
    return says("spamdetected", f.text)


def _probe_speeding(f: Facts) -> bool:
    return f.hint == "speeding" or says("speeding", f.text)


def _probe_syntaxerror(f: Facts) -> bool:
    if f.hint == "syntaxerror":
        return True
    return f.replycode.isdigit() and (400 < int(f.replycode) < 408 or 500 < int(f.replycode) < 508)


_PROBES: list[tuple[str, Callable[[Facts], bool]]] = [
    ("mailboxfull", _probe_mailboxfull),
    ("mesgtoobig", _probe_mesgtoobig),
    ("exceedlimit", _probe_simple("exceedlimit")),
    ("suspend", _probe_suspend),
    ("hasmoved", _probe_hasmoved),
    ("norelaying", _probe_norelaying),
    ("authfailure", _probe_simple("authfailure")),
    ("userunknown", _probe_userunknown),
    ("filtered", _probe_filtered),
    ("requireptr", _probe_simple("requireptr")),
    ("notcompliantrfc", _probe_notcompliantrfc),
    ("badreputation", _probe_badreputation),
    ("contenterror", _probe_contenterror),
    ("rejected", _probe_rejected),
    ("hostunknown", _probe_hostunknown),
    ("spamdetected", _probe_spamdetected),
    ("speeding", _probe_speeding),
    ("toomanyconn", _probe_simple("toomanyconn")),
    ("blocked", _probe_simple("blocked")),
]
# Phrases alone, when no probe decided: the order settles overlaps.
_PHRASE_ORDER = [
    "mailboxfull", "authfailure", "badreputation", "speeding", "spamdetected", "virusdetected",
    "policyviolation", "norelaying", "systemerror", "networkerror", "suspend", "contenterror",
    "systemfull", "notaccept", "expired", "failedstarttls", "securityerror", "suppressed", "mailererror",
]

# Local delivery agents: a failed pipe to procmail is the receiver's problem, not the address's.
_LOCAL_AGENTS: list[tuple[re.Pattern[str], list[tuple[str, re.Pattern[str]]]]] = [
    (re.compile(r"your message to <.*> was automatically rejected:"), [
        ("mailboxfull", _any(r"not enough disk space", r"quota exceeded")),
        ("userunknown", _any(r"mailbox doesn't exist: ")),
    ]),
    (re.compile(r"mail\.local: "), [
        ("mailboxfull", _any(r"disc quota exceeded", r"mailbox full or quota exceeded")),
        ("systemerror", _any(r"temporary file write error")),
        ("userunknown", _any(r": invalid mailbox path", r": unknown user:", r": user missing home directory",
                             r": user unknown")),
    ]),
    (re.compile(r"procmail: |/procmail "), [
        ("mailboxfull", _any(r"quota exceeded while writing", r"user over quota")),
        ("systemerror", _any(r"service unavailable")),
        ("systemfull", _any(r"no space left to finish writing")),
    ]),
    (re.compile(r"maildrop: "), [
        ("mailboxfull", _any(r"maildir over quota\.")),
        ("userunknown", _any(r"cannot find system user", r"invalid user specified\.")),
    ]),
    (re.compile(r"vdelivermail: "), [
        ("filtered", _any(r"user does not exist, but will deliver to ")),
        ("mailboxfull", _any(r"domain is over quota", r"user is over quota")),
        ("suspend", _any(r"account is locked email bounced")),
        ("userunknown", _any(r"sorry, no mailbox here by that name\.")),
    ]),
    (re.compile(r"vdeliver: "), [
        ("mailboxfull", _any(r"delivery failed due to system quota violation")),
        ("userunknown", _any(r"invalid or unknown (?:base user or domain|virtual user)",
                             r"user name does not refer to a virtual user")),
    ]),
]


def _local_agent_reason(f: Facts) -> str:
    if not f.diagnostic or f.command not in ("", "DATA"):
        return ""
    text = f.text
    for agent, reasons in _LOCAL_AGENTS:
        if agent.search(text):
            for reason, pattern in reasons:
                if pattern.search(text):
                    return reason
            return "mailererror"
    return ""


def _explicit(reason: str) -> bool:
    return reason not in ("", "undefined", "onhold")


def decide(f: Facts, remote_rules: Callable[[Facts], str] | None = None) -> str:
    """The reason for one recipient, from everything known about it."""
    if f.hint and f.hint not in _RETRY:
        return f.hint
    reason = _local_agent_reason(f)
    if _explicit(reason):
        return reason
    if remote_rules is not None:
        reason = remote_rules(f)
        if _explicit(reason):
            return reason
    reason = _find(f)
    if _explicit(reason):
        return reason
    if f.hint:
        return f.hint
    return "onhold" if f.diagnostic.strip() else "undefined"


def _find(f: Facts) -> str:
    if f.status.startswith("2."):
        return "delivered"
    if f.spec.upper() in ("SMTP", ""):
        for name, probe in _PROBES:
            if probe(f):
                return name
    reason = _another(f)
    if not reason and f.action == "delayed":
        reason = "expired"
    if reason:
        return reason
    if says("vacation", f.text):
        return "vacation"
    return "onhold" if f.diagnostic.strip() else "undefined"


def _another(f: Facts) -> str:
    if _explicit(f.hint):
        return f.hint
    by_status = status_reason(f.status)
    if by_status in _RETRY or f.spec.upper() != "SMTP":
        for name in _PHRASE_ORDER:
            if says(name, f.text):
                return name
        if by_status:
            return by_status
        subject = f.status[:3]
        if subject in ("5.6", "4.6"):
            return "contenterror"
        if subject in ("5.7", "4.7"):
            return "securityerror"
        if f.spec.upper().startswith("X-UNIX"):
            return "mailererror"
        if _probe_syntaxerror(f):
            return "syntaxerror"
        if f.action in ("delayed", "expired"):
            return "expired"
        if f.command in ("EHLO", "HELO"):
            return "blocked"
    return by_status
