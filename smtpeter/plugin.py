"""What twistd loads: the command line options and the service maker."""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from smtpeter.config import ConfigError, load_config
from smtpeter.service import make_service


class Options(usage.Options):
    optParameters = [["config", "c", None, "Path to the TOML configuration file."]]


def makeService(options: Options) -> service.IService:
    try:
        config = load_config(options["config"])
    except ConfigError as exc:
        raise usage.UsageError(str(exc)) from None
    return make_service(config)
