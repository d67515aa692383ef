"""twistd plugin glue: ``twistd -n smtpeter --config etc/smtpeter.toml``."""

from twisted.application.service import ServiceMaker

smtpeter = ServiceMaker(
    "smtpeter",
    "smtpeter.plugin",
    "Email delivery service: ESMTP submission, REST API, queue and MTA",
    "smtpeter",
)
