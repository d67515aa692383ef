"""A transform worker: a process of its own that runs the outbound steps for workers.py.

Started by workers.py (``python -m smtpeter.outbound.worker PARENT_PID``),
with the steps' modules imported before the first call. It runs one call at a
time, in the order they came; the main process writes the next ones into the
pipe before this one ends, so the worker never waits for it between calls.

The file descriptors it is given:

    0  calls: frames of a header (payload length, call id) and a pickle of
       (function, arguments); end of file means stop
    3  results: frames of the same header and a pickle of (ok, result or the
       exception the call raised)
    2  anything a step prints or logs, which the main process logs

It dies with the main process (PR_SET_PDEATHSIG): a worker never outlives it.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
from typing import Any, BinaryIO

import smtpeter.outbound.steps  # noqa: F401 - preloaded: no call pays for the imports
from smtpeter import bounces  # noqa: F401 - the classification of received bounces runs here too

CALLS_FD, RESULTS_FD = 0, 3
HEADER = struct.Struct(">QQ")  # payload length, call id
_PR_SET_PDEATHSIG = 1


class WorkerError(Exception):
    """A call whose function, arguments, result or exception could not travel between the processes."""


def main() -> None:
    parent = int(sys.argv[1])
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the main process's to handle
    calls = os.fdopen(CALLS_FD, "rb", buffering=1 << 16)
    results = os.fdopen(RESULTS_FD, "wb", buffering=1 << 16)
    while (call := read_frame(calls)) is not None:
        call_id, payload = call
        write_frame(results, call_id, answer(payload))


def read_frame(calls: BinaryIO) -> tuple[int, bytes] | None:
    """The next call's id and payload; None at the end of file."""
    header = calls.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    length, call_id = HEADER.unpack(header)
    payload = calls.read(length)
    return None if len(payload) < length else (call_id, payload)


def answer(payload: bytes) -> bytes:
    """The pickled (ok, value) of running the pickled call."""
    try:
        fn, args = pickle.loads(payload)  # noqa: S301 - from the main process that started us
        outcome: tuple[bool, Any] = (True, fn(*args))
    except Exception as exc:
        outcome = (False, exc)
    try:
        return pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        what = "result" if outcome[0] else f"exception {outcome[1]!r:.500}"
        return pickle.dumps((False, WorkerError(f"the call's {what} does not pickle: {exc!r}")))


def write_frame(results: BinaryIO, call_id: int, payload: bytes) -> None:
    results.write(HEADER.pack(len(payload), call_id))
    results.write(payload)
    results.flush()


if __name__ == "__main__":
    # Run as the module, not as __main__: WorkerError must pickle under its importable name.
    from smtpeter.outbound import worker

    worker.main()
