"""Limits that hold per service: connections across listeners, AUTH guessing across connections."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from smtpeter.ingress.smtp.limits import AuthThrottle, ConnectionLimits
from tests.support.harness import Harness, RawClient, auth_plain


class AuthThrottleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = AuthThrottle(self.clock, per_client=3, per_login=5, window=600)

    def fail_attempts(self, address: str, login: str, times: int) -> None:
        for _ in range(times):
            self.assertIsNone(self.throttle.start(address, login))
            self.throttle.finish(address, login, False)

    def test_an_address_is_refused_after_its_failures_until_they_age_out(self) -> None:
        self.fail_attempts("192.0.2.1", "acme", 3)
        self.assertIn("address", self.throttle.start("192.0.2.1", "acme"))
        self.assertIn("address", self.throttle.start("192.0.2.1", "other"))  # any login
        self.assertIsNone(self.throttle.start("192.0.2.2", "acme"))  # another address is heard
        self.clock.advance(601)
        self.assertIsNone(self.throttle.start("192.0.2.1", "acme"))

    def test_attempts_in_progress_count(self) -> None:
        """Parallel connections cannot all slip in before the first failure is known."""
        for _ in range(3):
            self.assertIsNone(self.throttle.start("192.0.2.1", "acme"))
        self.assertIsNotNone(self.throttle.start("192.0.2.1", "acme"))

    def test_success_is_not_a_failure(self) -> None:
        for _ in range(10):
            self.assertIsNone(self.throttle.start("192.0.2.1", "acme"))
            self.throttle.finish("192.0.2.1", "acme", True)
        for _ in range(10):  # a backend that could not answer counts neither way
            self.assertIsNone(self.throttle.start("192.0.2.1", "acme"))
            self.throttle.finish("192.0.2.1", "acme", None)

    def test_a_login_under_attack_is_locked_but_not_for_its_known_addresses(self) -> None:
        self.assertIsNone(self.throttle.start("198.51.100.7", "acme"))
        self.throttle.finish("198.51.100.7", "acme", True)  # the real user's usual address
        for index in range(5):  # a botnet: every address fails once
            self.fail_attempts(f"203.0.113.{index}", "acme", 1)
        self.assertIn("login", self.throttle.start("203.0.113.99", "acme"))  # the right password too
        self.assertIsNone(self.throttle.start("198.51.100.7", "acme"))  # the real user still gets in
        self.throttle.finish("198.51.100.7", "acme", True)
        self.assertIsNone(self.throttle.start("203.0.113.99", "other"))  # other logins are not locked
        self.clock.advance(601)  # and the lock ends by itself
        self.assertIsNone(self.throttle.start("203.0.113.99", "acme"))

    def test_trusted_networks_are_not_limited_per_address(self) -> None:
        for index in range(4):
            self.assertIsNone(self.throttle.start("10.0.0.1", f"user{index}", trusted=True))
            self.throttle.finish("10.0.0.1", f"user{index}", False, trusted=True)

    def test_memory_is_bounded(self) -> None:
        throttle = AuthThrottle(self.clock, per_client=3, per_login=3, window=600)
        throttle._clients.max_keys = throttle._logins.max_keys = 100
        for index in range(1000):
            throttle.start(f"10.{index // 256}.{index % 256}.1", "x" * 20_000 + str(index))
        self.assertLessEqual(len(throttle._clients._times), 100)
        self.assertLessEqual(len(throttle._logins._times), 100)
        self.assertTrue(all(len(key) <= 256 for key in throttle._logins._times))


class ConnectionLimitsTests(unittest.TestCase):
    def test_limits(self) -> None:
        limits = ConnectionLimits(max_connections=3, max_per_client=2)
        self.assertIsNone(limits.admit("a", False))
        self.assertIsNone(limits.admit("a", False))
        self.assertIn("your address", limits.admit("a", False))
        self.assertIsNone(limits.admit("a", True))  # trusted: only the total counts
        self.assertIn("Too many connections", limits.admit("b", False))
        limits.release("a")
        self.assertIsNone(limits.admit("b", False))
        self.assertEqual((limits.total, dict(limits.per_client)), (3, {"a": 2, "b": 1}))


class PerServiceTests(unittest.TestCase):
    async def test_connection_limits_count_every_listener(self) -> None:
        harness = Harness(self, smtp={"max_connections_per_client": 3})
        await harness.start()

        def scenario() -> list[int]:
            held = [RawClient(harness.smtp_port), RawClient(harness.smtp_port),
                    RawClient(harness.smtps_port, implicit_tls=True)]
            codes = [client.reply()[0] for client in held]
            codes += [RawClient(harness.smtps_port, implicit_tls=True).reply()[0],
                      RawClient(harness.smtp_port).reply()[0]]
            for client in held:
                client.close()
            return codes

        self.assertEqual(await deferToThread(scenario), [220, 220, 220, 421, 421])

    async def test_total_limit_counts_every_listener(self) -> None:
        harness = Harness(self, smtp={"max_connections": 2})
        await harness.start()

        def scenario() -> list[int]:
            held = [RawClient(harness.smtp_port), RawClient(harness.smtps_port, implicit_tls=True)]
            codes = [client.reply()[0] for client in held]
            codes.append(RawClient(harness.smtp_port).reply()[0])
            for client in held:
                client.close()
            return codes

        self.assertEqual(await deferToThread(scenario), [220, 220, 421])

    async def test_guessing_over_parallel_connections_and_both_listeners_is_limited(self) -> None:
        harness = Harness(self)
        login = await harness.login("acme", domains=("acme.test",))
        await harness.start()

        def guess(index: int) -> tuple[int, list[str]]:
            client = (RawClient.greeted(harness.smtps_port, implicit_tls=True) if index % 2
                      else RawClient.greeted(harness.smtp_port))
            if index % 2 == 0:
                client.starttls()
                client.command(b"EHLO client.test")
            replies = [client.command(auth_plain(login.username, f"wrong{index}-{n}")) for n in range(3)]
            client.close()
            return replies

        def scenario() -> tuple[list, tuple]:
            with ThreadPoolExecutor(20) as pool:
                replies = [r for per_client in pool.map(guess, range(20)) for r in per_client]
            right = RawClient.greeted(harness.smtps_port, implicit_tls=True)
            answer = right.command(auth_plain(login.username, login.password))
            right.close()
            return replies, answer

        replies, right_password = await deferToThread(scenario)
        codes = [code for code, _ in replies]
        # 60 guesses from one address: ten were checked (535), the rest refused unchecked.
        self.assertEqual(codes.count(535), 10, codes)
        self.assertEqual(codes.count(454), 50, codes)
        self.assertTrue(all("4.7.0" in lines[0] for code, lines in replies if code == 454))
        # The right password from that address is not even checked now.
        self.assertEqual(right_password[0], 454, right_password)
