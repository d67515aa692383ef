"""The byte budget that bounds how much of the large API bodies is in work at once."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from smtpeter.ingress.http.budget import ByteBudget


class ByteBudgetTests(unittest.TestCase):
    def test_waits_in_order_within_the_limit(self) -> None:
        budget = ByteBudget(100)
        order: list[str] = []
        first = budget.acquire(60)
        self.assertTrue(first.called)
        second = budget.acquire(60).addCallback(lambda _: order.append("second"))
        small = budget.acquire(10).addCallback(lambda _: order.append("small"))
        # 10 would fit beside the 60, but it came after a request that waits: no overtaking.
        self.assertEqual((budget.held, budget.waiting, order), (60, 2, []))
        budget.release(60)
        self.assertEqual((budget.held, budget.waiting, order), (70, 0, ["second", "small"]))
        self.assertTrue(second.called and small.called)

    def test_a_request_larger_than_the_budget_runs_alone(self) -> None:
        budget = ByteBudget(100)
        self.assertTrue(budget.acquire(500).called)  # nothing else holds any: it may run
        later = budget.acquire(1)
        self.assertFalse(later.called)
        budget.release(500)
        self.assertTrue(later.called)
        huge = budget.acquire(500)
        self.assertFalse(huge.called)  # but not beside another
        budget.release(1)
        self.assertEqual((huge.called, budget.held), (True, 500))

    def test_a_cancelled_waiter_leaves_and_lets_the_next_in(self) -> None:
        budget = ByteBudget(100)
        budget.acquire(50)
        big = budget.acquire(80)
        after = budget.acquire(40)
        self.assertEqual(budget.waiting, 2)
        big.cancel()
        self.failureResultOf(big, defer.CancelledError)
        self.assertEqual((budget.waiting, after.called, budget.held), (0, True, 90))
