"""The dashboard in a real browser (headless Chromium) against the running service: log in, send
mail over SMTP and REST to a sink that accepts and one that refuses, see the counts and the chart
change, open a message's timeline with its delivery and its bounce, resend; and what it refuses:
forms without the CSRF token, another account's message, pages without a session."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.trial import unittest

from smtpeter.dashboard import charts
from smtpeter.events.statistics import counts
from smtpeter.storage.models import Event
from tests.support.browser import Browser
from tests.support.http import Client
from tests.support.rig import SENDER_IP, Rig
from tests.support.sink import Behaviour, free_port_on
from tests.test_webhooks import until


def refuse_gone(recipient: str) -> tuple[int, str]:
    if recipient.startswith("gone@"):
        return 550, "5.1.1 <gone@dest.test>: Recipient address rejected: User unknown"
    return 250, "2.1.5 Ok"


class ChartTests(unittest.TestCase):
    def test_the_chart_is_svg_with_escaped_text(self) -> None:
        svg = charts.line_chart([0, 60, 120], 60, {"delivered": [1, 5, 2], "failed": [0, 0, 1]},
                                "<script>alert(1)</script>")
        self.assertTrue(svg.startswith("<svg"))
        self.assertNotIn("<script>", svg)
        self.assertIn("delivered (8)", svg)
        self.assertIn('class="line s-failed"', svg)
        self.assertEqual([charts.nice_ceiling(n) for n in (0, 1, 3, 7, 12, 180, 1001)],
                         [1, 1, 5, 10, 20, 200, 2000])

    def test_counts_group_by_account_minute_series_and_bot(self) -> None:
        def event(kind: str, time: float, bot: bool = False, account: str = "a") -> Event:
            return Event(1, account, "m", "r", kind, time, {"bot": bot} if kind == "click" else {}, (0, 0))

        rows = counts([event("delivery", 60.5), event("delivery", 119), event("click", 61),
                       event("click", 62, True), event("failure", 61, account="b"), event("warning", 61)])
        self.assertEqual(sorted(rows), [("a", 1, "clicked", False, 1), ("a", 1, "clicked", True, 1),
                                        ("a", 1, "delivered", False, 2), ("b", 1, "failed", False, 1)])


class DashboardInABrowser(unittest.TestCase):
    async def start(self) -> Rig:
        port = free_port_on("127.0.0.1")
        self.base = f"http://127.0.0.1:{port}"
        rig = self.rig = Rig(self)
        self.sink = rig.sink("127.0.0.2", Behaviour(rcpt_reply=refuse_gone))
        rig.sink(SENDER_IP)
        await rig.start(sections={"http": {"listen": [f"tcp:{port}:interface=127.0.0.1"],
                                           "public_url": self.base, "admin_token": "operator-secret"}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        self.api = Client(self.base, rig.login.token)
        self.browser = await Browser().start()
        self.addCleanup(self.browser.stop)
        return rig

    async def goto(self, path: str) -> int:
        return await self.browser.run(lambda page: page.goto(self.base + path).status)

    async def text(self, selector: str) -> str:
        return await self.browser.run(lambda page: page.inner_text(selector))

    async def log_in(self, token: str) -> None:
        def steps(page: Any) -> str:
            page.goto(self.base + "/dashboard/login")
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            return page.url

        self.assertTrue((await self.browser.run(steps)).endswith("/dashboard/overview"))

    async def test_log_in_send_see_counts_timeline_and_resend(self) -> None:
        rig = await self.start()
        # No session: the log-in page; a wrong token: refused, and still the log-in page.
        self.assertEqual(await self.goto("/dashboard/messages"), 200)
        self.assertTrue((await self.browser.run(lambda page: page.url)).endswith("/dashboard/login"))

        def wrong(page: Any) -> str:
            page.fill("input[name=token]", "not-a-token")
            page.click("button[type=submit]")
            page.wait_for_load_state()
            return page.inner_text(".problem")
        self.assertIn("did not work", await self.browser.run(wrong))
        await self.log_in(rig.login.token)
        headers = await self.browser.run(
            lambda page: page.goto(self.base + "/dashboard/overview").all_headers())
        policy = headers["content-security-policy"]
        self.assertIn("default-src 'none'", policy)
        self.assertNotIn("unsafe-inline", policy)
        cookies = await self.browser.run(lambda page: page.context.cookies())
        session = next(c for c in cookies if c["name"] == "smtpeter_dashboard")
        self.assertEqual((session["httpOnly"], session["sameSite"]), (True, "Strict"))
        self.assertEqual(await self.text("#total-delivered"), "0")
        await self.browser.screenshot("dashboard-overview-empty")

        # Mail over SMTP and over REST: one to a sink that takes it, one it refuses.
        tagged = (b"From: <news@example.com>\r\nTo: <bob@dest.test>\r\nSubject: hello\r\n"
                  b"X-Smtpeter-Tags: news\r\n\r\nHello.\r\n")
        (smtp_id,) = await rig.send("bob@dest.test", data=tagged)
        response = await self.api.post("/v1/send", json_body={
            "recipients": ["carol@dest.test", "gone@dest.test"], "from": "news@example.com",
            "subject": "Hello", "text": "Hi there.", "html": "<p>Hi <b>there</b>.</p>", "tags": ["news"]})
        sent = response.json
        ids = {address: mid for mid, address in sent.items()}
        await rig.wait_for(smtp_id, "delivered")
        await rig.wait_for(ids["carol@dest.test"], "delivered")
        await rig.wait_for(ids["gone@dest.test"], "failed")

        async def counted() -> bool:
            await self.goto("/dashboard/overview?period=hour")
            return await self.text("#total-delivered") == "2" and await self.text("#total-failed") == "1"
        await until(counted, "the counts to show the deliveries and the failure")
        self.assertEqual(await self.text("#total-accepted"), "3")
        points = await self.browser.run(lambda page: page.get_attribute("polyline.s-delivered", "points"))
        self.assertGreater(len(set(point.split(",")[1] for point in points.split())), 1)  # the line moved
        await self.browser.screenshot("dashboard-overview")

        # Search by recipient; open the refused one's timeline: its failure and the remote reply.
        await self.goto("/dashboard/messages?recipient=gone%40dest.test")
        self.assertIn(ids["gone@dest.test"], await self.text("table.list"))
        self.assertNotIn(ids["carol@dest.test"], await self.text("table.list"))
        await self.goto("/dashboard/messages?tag=news&date=" + datetime.date.today().isoformat())
        listed = await self.text("table.list")
        self.assertTrue(all(mid in listed for mid in (smtp_id, *ids)))
        await self.goto(f"/dashboard/messages/{ids['gone@dest.test']}")
        timeline = (await self.text("#timeline")).lower()
        self.assertIn("failure", timeline)
        self.assertIn("550", timeline)
        self.assertIn("userunknown", timeline)
        await self.goto(f"/dashboard/messages/{ids['carol@dest.test']}")
        self.assertIn("delivery", (await self.text("#timeline")).lower())
        self.assertIn("Hi there.", await self.text("pre.text"))
        frame = await self.browser.run(lambda page: page.get_attribute("iframe.html", "sandbox"))
        self.assertEqual(frame, "")
        await self.browser.screenshot("dashboard-message")

        # Resend makes a new message, delivered again.
        def resend(page: Any) -> str:
            page.click("form[action$='/resend'] button")
            page.wait_for_load_state()
            return page.url
        url = await self.browser.run(resend)
        new_id = url.split("/dashboard/messages/")[1].split("?")[0]
        self.assertNotEqual(new_id, ids["carol@dest.test"])
        await rig.wait_for(new_id, "delivered")
        self.assertEqual([r.recipients for r in self.sink.received].count(["carol@dest.test"]), 2)

        # Another account's message is the same 404 page as none at all.
        other = await rig.storage.create_account("other")
        await rig.storage.add_domain(other.id, "other.example", approved=True)
        _, other_token = await rig.storage.create_api_token(other.id)
        foreign = (await Client(self.base, other_token).post("/v1/send", json_body={
            "recipient": "erin@dest.test", "from": "news@other.example", "text": "x"})).json
        (foreign_id,) = foreign
        self.assertEqual(await self.goto(f"/dashboard/messages/{foreign_id}"), 404)
        self.assertIn("not yours to see", await self.text("main"))
        self.assertEqual(await self.goto(f"/dashboard/messages/{foreign_id}/html"), 404)
        self.assertEqual(await self.goto("/dashboard/messages/00000000000000000000"), 404)
        self.assertNotIn(foreign_id, await self.goto("/dashboard/messages") and await self.text("table.list"))

        # A form posted without the session's CSRF token (or with a wrong one) changes nothing.
        cookies = await self.browser.run(lambda page: page.context.cookies())
        jar = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
        raw = Client(self.base)
        for body in ("", "csrf=forged"):
            refused = await raw.post(f"/dashboard/messages/{ids['carol@dest.test']}/resend", form=body,
                                     headers={"cookie": jar})
            self.assertEqual(refused.code, 403, refused.body)
        carols = await rig.storage.search_messages(rig.login.account_id, address="carol@dest.test")
        self.assertEqual(len(carols), 2)

        # Log out: the session is gone.
        def log_out(page: Any) -> str:
            page.click("form.logout button")
            page.wait_for_load_state()
            return page.url
        self.assertTrue((await self.browser.run(log_out)).endswith("/dashboard/login"))
        self.assertTrue(await self.goto("/dashboard/overview") == 200)
        self.assertTrue((await self.browser.run(lambda page: page.url)).endswith("/dashboard/login"))
