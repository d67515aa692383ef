"""What came back: bounces, auto-replies and complaints, classified.

A pure library over bytes (no sockets, no storage): ``classify(message)`` reads
one received message and says what it is and, per recipient it is about, why;
``reason_for(status, replycode, diagnostic)`` classifies a reply we got
ourselves while delivering, the same way.

Kinds:

* ``"bounce"``: an RFC 3464 delivery status notification or a non-standard
  non-delivery report, one result per recipient it names (a positive DSN's
  recipients have reason ``delivered``);
* ``"response"``: an RFC 3834 automatic reply (out of office, vacation);
* ``"abuse"``: an RFC 5965 ARF feedback report (reason ``feedback``, with its
  feedback type);
* ``"undefined"``: none of these that we can tell (reason ``undefined``): keep it.

Reasons are Sisimai's taxonomy (``reasons.REASONS``). A result's
``hardbounce`` says the address is dead (no such user or domain, moved):
what a suppression list acts on.
"""

from smtpeter.bounces.pipeline import Original, RecipientResult, Report, classify, reason_for
from smtpeter.bounces.reasons import REASONS

__all__ = ["REASONS", "Original", "RecipientResult", "Report", "classify", "reason_for"]
