"""What twistd loads: the command line options and the service maker.

twistd reports a failed start badly: an exception here becomes a traceback,
and a service that fails once the reactor runs is only logged, after which
twistd exits 0. Both end here in one line on stderr and a non-zero exit status,
as the smtpeter command does.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

from twisted.application import service
from twisted.python import usage
from twisted.python.failure import Failure

from smtpeter.config import ConfigError, load_config
from smtpeter.service import SmtpeterService, StartupError


class Options(usage.Options):
    optParameters = [["config", "c", None, "Path to the TOML configuration file."]]


def makeService(options: Options) -> service.IService:
    try:
        config = load_config(options["config"])
    except ConfigError as exc:
        # Logging has not begun yet: SystemExit prints the line to stderr and exits 1.
        raise SystemExit(f"smtpeter: {exc}") from None
    smtpeter = SmtpeterService(config)
    smtpeter.ready.addCallbacks(_started, _start_failed)
    return smtpeter


def _started(running: SmtpeterService) -> SmtpeterService:
    # What start-up made lives as long as the process: out of the collector's way, every full
    # collection stops scanning it (50-70 ms pauses under click load before).
    gc.collect()
    gc.freeze()
    return running


def _start_failed(failure: Failure) -> None:
    # Not imported at the top: twistd installs the reactor it was asked for after loading us.
    from twisted.internet import reactor

    # One line, even when a driver's message has several (libpq adds a hint).
    reason = " ".join(failure.getErrorMessage().split())
    if not failure.check(StartupError):
        reason = f"could not start: {failure.type.__name__}: {reason}"
    # twistd has redirected sys.stderr into its log; the operator's terminal (or
    # the service manager's journal) is the original stderr.
    print(f"smtpeter: {reason}", file=sys.__stderr__, flush=True)
    atexit.register(_exit, 1)
    # The start may fail before the reactor runs (twistd starts services first).
    reactor.callWhenRunning(reactor.stop)


def _exit(status: int) -> None:
    """End the process with ``status`` once twistd has cleaned up (pid file, log) and
    returned: twistd itself exits 0 whatever stopped the reactor."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(status)
