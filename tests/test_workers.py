"""The transform workers (outbound/workers.py): processes of the reactor's own, calls pipelined to them."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from smtpeter.outbound import workers as workers_module
from smtpeter.outbound.worker import WorkerError
from smtpeter.outbound.workers import WorkerDied, Workers


# Module-level, as the shipped steps: a worker gets them by reference.
def echo(value: object) -> tuple[object, int]:
    return value, os.getpid()


def nap_then_echo(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def raise_value_error(text: str) -> None:
    raise ValueError(text)


def unpicklable_result() -> object:
    return lambda: None


def digest_and_reverse(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data[::-1]


def hold(folder: str, name: str) -> int:
    """Says it runs (a file ``name`` with its pid), then waits for ``folder``/go; returns its pid."""
    (Path(folder) / name).write_text(str(os.getpid()))
    deadline = time.monotonic() + 30
    while not (Path(folder) / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def kill_own_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_own_worker_once(folder: str) -> int:
    marker = Path(folder) / "killed once"
    if not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await task.deferLater(reactor, 0.01)


class WorkersTests(unittest.TestCase):
    def folder(self) -> Path:
        """Where the test and its workers' calls leave marks."""
        folder = tempfile.mkdtemp(prefix="smtpeter-test-workers-")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        return Path(folder)

    def workers(self, processes: int) -> Workers:
        workers = Workers(reactor, processes)
        self.addCleanup(workers.stop)
        return workers

    async def test_each_call_gets_its_own_result_in_its_order(self) -> None:
        workers = self.workers(2)
        calls = [workers.run(nap_then_echo, 0.001 * (n % 3), n) for n in range(200)]
        self.assertEqual(await defer.gatherResults(calls), list(range(200)))
        pids = {pid for _, pid in await defer.gatherResults([workers.run(echo, n) for n in range(20)])}
        self.assertEqual(pids, set(workers.pids()))  # both worked, neither is this process
        self.assertNotIn(os.getpid(), pids)

    async def test_an_exception_arrives_as_raised(self) -> None:
        workers = self.workers(1)
        with self.assertRaisesRegex(ValueError, "as raised"):
            await workers.run(raise_value_error, "as raised")
        with self.assertRaisesRegex(WorkerError, "does not pickle"):
            await workers.run(unpicklable_result)
        with self.assertRaisesRegex(Exception, "pickle"):
            await workers.run(echo, lambda: None)  # not even sent
        self.assertEqual((await workers.run(echo, "still here"))[0], "still here")

    async def test_large_arguments_and_results_arrive_intact(self) -> None:
        workers = self.workers(1)
        data = os.urandom(12 * 1024 * 1024)
        results = await defer.gatherResults([workers.run(digest_and_reverse, data),
                                             workers.run(echo, b"x" * 3)])
        digest, reversed_data = results[0]
        self.assertEqual(digest, hashlib.sha256(data).hexdigest())
        self.assertEqual(reversed_data, data[::-1])
        self.assertEqual(results[1][0], b"xxx")

    async def test_a_worker_killed_mid_call_is_replaced_and_the_call_tried_again(self) -> None:
        folder = self.folder()
        workers = self.workers(1)
        held = workers.run(hold, str(folder), "first")
        behind = [workers.run(echo, n) for n in range(3)]  # in the same worker's pipe
        await until(lambda: (folder / "first").exists())
        victim = int((folder / "first").read_text())
        (folder / "first").unlink()
        os.kill(victim, signal.SIGKILL)
        await until(lambda: (folder / "first").exists())  # running again, elsewhere
        (folder / "go").write_text("")
        second = await held
        self.assertNotEqual(second, victim)
        self.assertEqual(workers.pids(), [second])
        self.assertEqual([value for value, _ in await defer.gatherResults(behind)], [0, 1, 2])

    async def test_a_call_that_kills_its_worker_is_tried_once_more(self) -> None:
        folder = self.folder()
        workers = self.workers(1)
        first = (await workers.run(echo, "before"))[1]
        survivor = await workers.run(kill_own_worker_once, str(folder))
        self.assertNotEqual(survivor, first)

    async def test_a_call_that_kills_its_worker_twice_fails_alone(self) -> None:
        workers = self.workers(1)
        deadly = workers.run(kill_own_worker)
        behind = [workers.run(echo, n) for n in range(5)]
        with self.assertRaisesRegex(WorkerDied, "died running the call, twice"):
            await deadly
        self.assertEqual([value for value, _ in await defer.gatherResults(behind)], list(range(5)))

    async def test_cancelled_calls_are_dropped(self) -> None:
        folder = self.folder()
        workers = self.workers(1)
        held = workers.run(hold, str(folder), "held")  # sent: runs, its result is dropped
        in_pipe = [workers.run(echo, n) for n in range(workers_module.DEPTH - 1)]
        waiting = workers.run(hold, str(folder), "never")  # not sent: never runs
        await until(lambda: (folder / "held").exists())
        held.cancel()
        waiting.cancel()
        for cancelled in (held, waiting):
            with self.assertRaises(defer.CancelledError):
                await cancelled
        (folder / "go").write_text("")
        self.assertEqual([value for value, _ in await defer.gatherResults(in_pipe)],
                         list(range(workers_module.DEPTH - 1)))
        self.assertEqual((await workers.run(echo, "next"))[0], "next")
        self.assertFalse((folder / "never").exists())

    async def test_stop_ends_every_process_and_fails_what_is_left(self) -> None:
        folder = self.folder()
        workers = Workers(reactor, 2)
        await defer.gatherResults([workers.run(echo, n) for n in range(4)])
        running = [workers.run(hold, str(folder), f"h{n}") for n in range(2 * workers_module.DEPTH + 1)]
        pids = workers.pids()
        self.assertEqual(len(pids), 2)
        await workers.stop()
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        self.assertEqual(workers.pids(), [])
        for call in running:
            with self.assertRaises(defer.CancelledError):
                await call
        with self.assertRaises(defer.CancelledError):
            await workers.run(echo, "after")

    async def test_without_processes_the_calls_run_in_threads(self) -> None:
        workers = self.workers(0)
        self.assertEqual(await workers.run(echo, 1), (1, os.getpid()))
        self.assertEqual(workers.pids(), [])
