"""The dashboard in a real browser (headless Chromium) against the running service: log in, send
mail over SMTP and REST to a sink that accepts and one that refuses, see the counts and the chart
change, open a message's timeline with its delivery and its bounce, resend; and what it refuses:
forms without the CSRF token, another account's message, pages without a session."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.trial import unittest

from smtpeter.dashboard import charts
from smtpeter.envelope import MessageOptions
from smtpeter.events.model import BOUNCE, DELIVERY, FAILURE
from smtpeter.events.statistics import bounce_counts, counts
from smtpeter.ingress.smtp.auth import LoginChecker
from smtpeter.storage.dashboard import BounceCount, login_credential, token_credential
from smtpeter.storage.models import FEED_START, Event
from tests.support.backends import both_backends
from tests.support.browser import Browser
from tests.support.clock import ShiftedClock
from tests.support.http import Client
from tests.support.rig import SENDER_IP, Rig, sleep
from tests.support.sink import Behaviour, free_port_on
from tests.test_sender_domains import publish
from tests.test_webhooks import FAST, RECEIVER_IP, Receiver, Reply, until


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
    async def start(self, **sections: dict[str, Any]) -> Rig:
        port = free_port_on("127.0.0.1")
        self.base = f"http://127.0.0.1:{port}"
        rig = self.rig = Rig(self)
        self.sink = rig.sink("127.0.0.2", Behaviour(rcpt_reply=refuse_gone))
        rig.sink(SENDER_IP)
        await rig.start(sections={"http": {"listen": [f"tcp:{port}:interface=127.0.0.1"],
                                           "public_url": self.base, "admin_token": "operator-secret"},
                                  **sections})
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

    # -- the account's other pages -------------------------------------------------------------

    async def other_account(self) -> tuple[str, Client]:
        """Another account with an API token: (its id, a REST client for it)."""
        other = await self.rig.storage.create_account("other")
        await self.rig.storage.add_domain(other.id, "other.example", approved=True)
        _, token = await self.rig.storage.create_api_token(other.id)
        return other.id, Client(self.base, token)

    async def submit(self, selector: str) -> str:
        """Click ``selector`` (a form's button) and wait for the page it leads to; its URL."""
        def steps(page: Any) -> str:
            page.click(selector)
            page.wait_for_load_state()
            return page.url
        return await self.browser.run(steps)

    async def fill_in(self, form: str, **fields: str) -> None:
        """Fill ``form``'s fields by name (a select's option by value), submit it, wait for the answer."""
        def steps(page: Any) -> None:
            for name, value in fields.items():
                field = page.locator(f"{form} [name={name}]")
                if field.evaluate("element => element.tagName") == "SELECT":
                    field.select_option(value)
                else:
                    field.fill(value)
            page.click(f"{form} button[type=submit]")
            page.wait_for_load_state()
        await self.browser.run(steps)

    async def post_as_visitor(self, path: str, body: str) -> Any:
        """A POST with the browser's cookies, as a forged form would make it."""
        cookies = await self.browser.run(lambda page: page.context.cookies())
        jar = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
        return await Client(self.base).post(path, form=body, headers={"cookie": jar})

    async def refused_without_csrf(self, *paths: str, fields: str = "") -> None:
        for path in paths:
            for body in (fields, f"{fields}&csrf=forged"):
                refused = await self.post_as_visitor(path, body)
                self.assertEqual(refused.code, 403, (path, refused.body))

    async def csrf(self) -> str:
        return await self.browser.run(lambda page: page.get_attribute("input[name=csrf]", "value"))

    async def test_bounces_by_reason_and_the_suppression_list(self) -> None:
        rig = await self.start()
        await self.log_in(rig.login.token)
        response = await self.api.post("/v1/send", json_body={
            "recipients": ["carol@dest.test", "gone@dest.test"], "from": "news@example.com", "text": "Hi."})
        ids = {address: mid for mid, address in response.json.items()}
        await rig.wait_for(ids["gone@dest.test"], "failed")

        # The 550 5.1.1 is a userunknown (hard) bounce at dest.test, in the table and the chart.
        async def counted() -> bool:
            await self.goto("/dashboard/bounces?period=hour")
            return "userunknown" in await self.text("#by-reason")
        await until(counted, "the bounce to be counted")
        reason = await self.text("#by-reason tbody tr")
        self.assertEqual(reason.split("\t")[:4], ["userunknown", "1", "100.0%", "1"])
        self.assertEqual((await self.text("#by-domain tbody tr")).split("\t")[:2], ["dest.test", "1"])
        self.assertEqual(await self.text("#total-hard"), "1")
        bar = await self.browser.run(lambda page: page.text_content("rect.bar.p0 title"))
        self.assertEqual(bar, "userunknown: 1")
        await self.browser.screenshot("dashboard-bounces")
        await self.goto("/dashboard/bounces?period=month")
        self.assertIn("userunknown", await self.text("#by-reason"))

        # The suppression list: the 5.1.1 put gone@ there; add one by hand, export, remove it.
        await self.goto("/dashboard/suppressions")
        self.assertIn("gone@dest.test\tuserunknown", await self.text("#suppressions"))

        await self.fill_in("#add-suppression", address="Manual@Dest.test", reason="complaint",
                           expires="2099-01-31")
        listed = await self.text("#suppressions")
        self.assertIn("Manual@dest.test\tcomplaint\tdashboard\t", listed)
        self.assertIn("2099-01-31 00:00:00", listed)
        entry = (await self.api.get("/v1/suppression/manual@dest.test")).json
        self.assertEqual((entry["reason"], entry["expires"]), ("complaint", "2099-01-31 00:00:00"))
        await self.browser.screenshot("dashboard-suppressions")

        def export(page: Any) -> tuple[int, str, bytes]:
            href = page.get_attribute("#export", "href")
            answer = page.request.get(self.base + href)
            return answer.status, answer.headers["content-type"], answer.body()
        status, kind, body = await self.browser.run(export)
        self.assertEqual((status, kind), (200, "text/csv; charset=utf-8"))
        self.assertEqual(body, (await self.api.get("/v1/suppressions/csv")).body)
        self.assertIn(b"Manual@dest.test,complaint,dashboard,", body)

        # A mistake is said on the page and adds nothing.
        await self.fill_in("#add-suppression", address="nobody@dest.test", expires="2001-01-01")
        self.assertIn("in the past", await self.text(".problem"))
        self.assertEqual((await self.api.get("/v1/suppression/nobody@dest.test")).code, 404)

        await self.goto("/dashboard/suppressions?address=manual%40dest.test")
        self.assertNotIn("gone@dest.test", await self.text("#suppressions"))
        await self.submit("#suppressions form button")
        self.assertNotIn("Manual@dest.test", await self.text("#suppressions"))
        self.assertEqual((await self.api.get("/v1/suppression/manual@dest.test")).code, 404)

        # Another account's entry: the same 404 page as none, and it stays; no CSRF token: 403.
        _, theirs = await self.other_account()
        await theirs.post("/v1/suppressions", json_body={"address": "theirs@dest.test"})
        csrf = await self.csrf()
        for address in ("theirs%40dest.test", "nobody%40dest.test", "not-an-address"):
            answer = await self.post_as_visitor("/dashboard/suppressions/remove",
                                                f"csrf={csrf}&address={address}")
            self.assertEqual(answer.code, 404, answer.body)
            self.assertIn(b"not yours to see", answer.body)
        self.assertEqual((await theirs.get("/v1/suppression/theirs@dest.test")).code, 200)
        await self.refused_without_csrf("/dashboard/suppressions", fields="address=x%40dest.test")
        await self.refused_without_csrf("/dashboard/suppressions/remove", fields="address=gone%40dest.test")
        self.assertEqual((await self.api.get("/v1/suppression/x@dest.test")).code, 404)
        self.assertEqual((await self.api.get("/v1/suppression/gone@dest.test")).code, 200)

    async def test_a_domains_records_and_its_dns_status_from_error_to_ok(self) -> None:
        rig = await self.start(domains={"sending_addresses": ["127.0.0.1"], "mx_host": "mx.smtpeter.test"})
        await self.log_in(rig.login.token)
        ownership = (await self.api.post("/v1/domain/news.test")).json
        self.assertEqual(ownership["type"], "TXT")
        await self.goto("/dashboard/domains")
        self.assertIn("news.test", await self.text("#domains"))
        await self.submit("#domains a:text('news.test')")
        self.assertIn("no: publish", await self.text("#approved"))

        # Checked before anything is published: every item an error, each with its remark.
        url = await self.submit("#check button")
        self.assertTrue(url.endswith("/dashboard/domains/news.test"), url)
        for item in ("validation", "spf", "dkim", "dmarc", "mx", "tracking"):
            row = (await self.text(f"#status-{item}")).split("\t")
            self.assertEqual(row[1], "error", row)
            self.assertTrue(row[2], row)  # a remark says what was found
        records = (await self.api.get("/v1/dns/news.test/selfhosted")).json

        # The page lists the records the API gives, each value with a copy button holding it.
        def listed(page: Any) -> list[dict[str, str]]:
            found = []
            for row in page.query_selector_all("#selfhosted tbody tr"):
                cells = row.query_selector_all("td")
                copies = row.query_selector_all("button.copy")
                found.append({"name": cells[0].query_selector("code").inner_text(),
                              "type": cells[1].inner_text(),
                              "value": copies[1].get_attribute("data-copy")})
            return found
        self.assertEqual(await self.browser.run(listed), records)
        self.assertIn(ownership, records)
        self.assertIn("zero\trsa\tnext", await self.text("#keys"))

        # Published in the test DNS server: Check now turns every item ok, and the domain approved.
        publish(rig.dns, records)
        await self.submit("#check button")
        for item in ("validation", "spf", "dkim", "dmarc", "mx", "tracking"):
            row = (await self.text(f"#status-{item}")).split("\t")
            self.assertEqual(row[1], "ok", row)
        self.assertEqual(await self.text("#approved"), "yes")
        keys = await self.text("#keys")
        self.assertIn("zero\trsa\tactive", keys)  # published: it signs, and rotates in 30 days
        rotates = datetime.datetime.fromtimestamp(rig.clock.seconds() + 30 * 86400, datetime.UTC)
        self.assertIn(f"rotates from {rotates:%Y-%m-%d}", keys)
        await self.browser.screenshot("dashboard-domain")
        await self.goto("/dashboard/domains")
        self.assertEqual((await self.text("#domains tbody tr:has-text('news.test')")).split("\t")[1:8],
                         ["yes", "ok", "ok", "ok", "ok", "ok", "ok"])
        await self.browser.screenshot("dashboard-domains")

        # Another account's domain is the 404 page, to look at and to check; no CSRF token: 403.
        await self.other_account()
        self.assertEqual(await self.goto("/dashboard/domains/other.example"), 404)
        self.assertIn("not yours to see", await self.text("main"))
        self.assertEqual(await self.goto("/dashboard/domains/nowhere.example"), 404)
        await self.goto("/dashboard/domains/news.test")
        csrf = await self.csrf()
        answer = await self.post_as_visitor("/dashboard/domains/other.example/check", f"csrf={csrf}")
        self.assertEqual(answer.code, 404, answer.body)
        await self.refused_without_csrf("/dashboard/domains/news.test/check")

    async def test_a_webhooks_calls_a_test_event_and_enabling_after_a_410(self) -> None:
        receiver = await Receiver(RECEIVER_IP).start(self)
        status = {"test": 204, "event": 500}  # what the receiver answers test calls and the others
        receiver.behaviour = lambda received: Reply(
            status["test" if (received.payload or {}).get("test") else "event"], b"internal error")
        rig = await self.start(webhooks=FAST)
        await self.log_in(rig.login.token)
        made = (await self.api.post("/v1/webhook", json_body={"type": "delivery",
                                                             "url": receiver.url + "/hook"})).json
        receiver.secrets.append(made["secret"])
        hook_id = made["id"]

        async def state(wanted: str) -> bool:
            await self.goto(f"/dashboard/webhooks/{hook_id}")
            return await self.text("#state") == wanted
        await until(lambda: state("active"), "the hook to be active")

        # A delivery makes a call, which the receiver refuses: the page shows each attempt's status.
        (message_id,) = await rig.send("carol@dest.test")
        await rig.wait_for(message_id, "delivered")

        async def shown(text: str) -> bool:
            await self.goto(f"/dashboard/webhooks/{hook_id}")
            return text in await self.text("#calls")
        await until(lambda: shown("\t500\t"), "the failed calls to show")
        calls = await self.text("#calls")
        self.assertIn("answered 500: internal error", calls)
        self.assertRegex(calls, r"delivery\t1\t500\t\d+ ms\t")
        await self.goto("/dashboard/webhooks")
        self.assertIn(receiver.url + "/hook", await self.text("#webhooks"))
        self.assertIn("active", await self.text("#webhooks"))
        await self.browser.screenshot("dashboard-webhooks")
        await self.submit(f"#webhooks a[href$='{hook_id}']")

        # A test event: a signed call that the receiver verifies, recorded with the others.
        url = await self.submit("#send-test button")
        self.assertTrue(url.endswith(f"/dashboard/webhooks/{hook_id}?sent=1"), url)
        self.assertIn("on its way", await self.text("#sent"))
        await until(lambda: any(r.payload.get("test") for r in receiver.successes("/hook")), "the test event")
        (test_call,) = [r for r in receiver.calls("/hook") if r.payload.get("test")]
        self.assertTrue(test_call.verified, test_call.headers)
        self.assertEqual({k: test_call.payload[k] for k in ("type", "recipient", "test")},
                         {"type": "delivery", "recipient": "test@example.com", "test": True})
        await until(lambda: shown("delivery (test)\t1\t204\t"), "the test call to show")
        await self.browser.screenshot("dashboard-webhook")

        # The receiver answers 410 Gone: the hook is disabled; enabled again from the page.
        status["test"] = 410
        await self.submit("#send-test button")
        await until(lambda: state("disabled"), "the hook to be disabled")
        self.assertIn("410", await self.text("#problem"))
        self.assertIn("\t410\t", await self.text("#calls"))
        await self.submit("#enable button")
        self.assertEqual(await self.text("#state"), "active")
        self.assertEqual((await self.api.get(f"/v1/webhook/{hook_id}")).json["state"], "active")

        # Another account's hook is the 404 page, to look at and to act on; no CSRF token: 403.
        _, theirs = await self.other_account()
        their_id = (await theirs.post("/v1/webhook", json_body={"type": "delivery",
                                                               "url": receiver.url + "/theirs"})).json["id"]
        self.assertEqual(await self.goto(f"/dashboard/webhooks/{their_id}"), 404)
        self.assertIn("not yours to see", await self.text("main"))
        self.assertEqual(await self.goto("/dashboard/webhooks/not-an-id"), 404)
        await self.goto(f"/dashboard/webhooks/{hook_id}")
        csrf = await self.csrf()
        for action in ("test", "enable", "verify"):
            answer = await self.post_as_visitor(f"/dashboard/webhooks/{their_id}/{action}", f"csrf={csrf}")
            self.assertEqual(answer.code, 404, (action, answer.body))
        tests_before = len([r for r in receiver.calls() if r.payload.get("test")])
        await self.refused_without_csrf(*(f"/dashboard/webhooks/{hook_id}/{action}"
                                          for action in ("test", "enable", "verify")))
        await sleep(0.5)
        self.assertEqual(len([r for r in receiver.calls() if r.payload.get("test")]), tests_before)

    async def test_api_tokens_and_smtp_logins(self) -> None:
        rig = await self.start()
        await self.log_in(rig.login.token)
        await self.goto("/dashboard/credentials")
        self.assertIn("acme", await self.text("#logins"))  # the account's first login

        # A token: shown once, works on /v1 at once; revoked, refused at once.
        await self.fill_in("#new-token", description="for the CRM")
        token = await self.text("#secret-value")
        self.assertIn("not shown again", await self.text("#secret p"))
        self.assertEqual(await self.browser.run(lambda page: page.get_attribute("#secret button.copy",
                                                                                "data-copy")), token)
        mine = Client(self.base, token)
        self.assertEqual((await mine.get("/v1/suppressions")).code, 200)
        await self.browser.screenshot("dashboard-credentials")
        await self.goto("/dashboard/credentials")
        self.assertNotIn(token, await self.text("main"))  # never again
        row = await self.text("#tokens tr:has-text('for the CRM')")
        token_id = row.split("\t")[0]
        await self.submit(f"#token-{token_id} button")
        self.assertRegex(await self.text(f"#token-{token_id}"), r"for the CRM\t[\d-]+ [\d:]+\t[\d-]+ [\d:]+")
        self.assertEqual((await mine.get("/v1/suppressions")).code, 401)
        self.assertEqual((await self.api.get("/v1/suppressions")).code, 200)  # the others still work

        # An SMTP login with its default options: its password shown once, and it logs in.
        await self.fill_in("#new-login", username="crm-sender", trackclicks="true", inlinecss="false",
                           images="hosted")
        password = await self.text("#secret-value")
        login = await self.text("#logins tr:has-text('crm-sender')")
        self.assertIn("inlinecss: off, trackclicks: on, images: hosted", login)
        self.assertEqual(await LoginChecker(rig.storage).requestAvatarId(
            UsernamePassword(b"crm-sender", password.encode())), "crm-sender")
        stored = await rig.storage.smtp_login("crm-sender")
        self.assertEqual((stored.account_id, stored.options), (rig.login.account_id, MessageOptions(
            inlinecss=False, trackclicks=True, images="hosted")))
        await self.goto("/dashboard/credentials")
        self.assertNotIn(password, await self.text("main"))

        await self.fill_in("#new-login", username="crm-sender")
        self.assertIn("is taken", await self.text(".problem"))

        # Another account's token cannot be revoked from here (the 404 page); no CSRF token: 403.
        other_id, theirs = await self.other_account()
        (their_token,) = await rig.storage.api_tokens(other_id)
        csrf = await self.csrf()
        answer = await self.post_as_visitor(f"/dashboard/credentials/tokens/{their_token['id']}/revoke",
                                            f"csrf={csrf}")
        self.assertEqual(answer.code, 404, answer.body)
        self.assertEqual((await theirs.get("/v1/suppressions")).code, 200)
        tokens = len(await rig.storage.api_tokens(rig.login.account_id))
        await self.refused_without_csrf("/dashboard/credentials/tokens", fields="description=forged")
        await self.refused_without_csrf("/dashboard/credentials/logins", fields="username=forged")
        (first_token,) = [t for t in await rig.storage.api_tokens(rig.login.account_id) if not t["revoked"]]
        await self.refused_without_csrf(f"/dashboard/credentials/tokens/{first_token['id']}/revoke")
        self.assertEqual(len(await rig.storage.api_tokens(rig.login.account_id)), tokens)
        self.assertIsNone(await rig.storage.smtp_login("forged"))
        self.assertEqual((await self.api.get("/v1/suppressions")).code, 200)


class BounceCounts:
    """What the bounces page counts, and storage's sums of it by bucket, on both backends."""

    async def test_counted_by_reason_domain_and_bucket_per_account(self) -> None:
        storage = await self.open_storage()
        acme, other = (await storage.create_account("acme")).id, (await storage.create_account("other")).id
        day = 1_767_225_600  # a UTC midnight

        def event(kind: str, account: str, recipient: str, time: float, **data: Any) -> Event:
            return Event(1, account, "m", recipient, kind, time, data, FEED_START)

        hard = {"reason": "userunknown", "hardbounce": True}
        events = [
            event(FAILURE, acme, "x@gmail.com", day + 61, type="failed", **hard),
            event(BOUNCE, acme, "y@gmail.com", day + 62, reason="mailboxfull", hardbounce=False),
            # The failure a bounce reported is counted as that bounce; suppressed ones were never sent.
            event(FAILURE, acme, "y@gmail.com", day + 62, state="bounce", reason="mailboxfull"),
            event(FAILURE, acme, "z@mail.test", day + 3700, type="suppressed", reason="suppressed"),
            event(FAILURE, acme, "z@mail.test", day + 86405, type="expired", reason="expired"),
            event(FAILURE, acme, "w@mail.test", day + 61),  # no reason: not counted
            event(DELIVERY, acme, "v@mail.test", day + 61),
            event(FAILURE, other, "x@gmail.com", day + 61, **hard),
        ]
        rows = bounce_counts(events)
        await storage.db.transaction([storage.add_bounce_counts(rows)])
        await storage.db.transaction([storage.add_bounce_counts(rows)])  # counts add up
        by_minute = await storage.bounce_counts(acme, day, day + 3600, 60)
        self.assertEqual(sorted(by_minute), [
            BounceCount(day + 60, "bounce", "mailboxfull", "gmail.com", False, 2),
            BounceCount(day + 60, "failure", "userunknown", "gmail.com", True, 2)])
        by_hour = await storage.bounce_counts(acme, day, day + 2 * 86400, 3600)
        self.assertEqual(sorted((r.start, r.reason, r.count) for r in by_hour),
                         [(day, "mailboxfull", 2), (day, "userunknown", 2), (day + 86400, "expired", 2)])
        by_day = await storage.bounce_counts(acme, day - 29 * 86400, day + 86400, 86400)
        self.assertEqual(sorted((r.start, r.reason, r.count) for r in by_day),
                         [(day, "mailboxfull", 2), (day, "userunknown", 2)])
        self.assertEqual(await storage.bounce_counts(other, day, day + 60, 60), [])
        self.assertEqual(await storage.bounce_counts(other, day, day + 120, 60),
                         [BounceCount(day + 60, "failure", "userunknown", "gmail.com", True, 2)])


BounceCountsSQLite, BounceCountsPostgreSQL = both_backends(BounceCounts)


class Sessions:
    """Dashboard sessions end with the credential they were made with, on both backends."""

    async def test_revoking_a_token_ends_the_sessions_it_made(self) -> None:
        clock = ShiftedClock()
        storage = await self.open_storage(clock=clock)
        account = await storage.create_account("acme")
        first_id, first = await storage.create_api_token(account.id)
        _, second = await storage.create_api_token(account.id)
        made_with = {"by-first": token_credential(first), "by-second": token_credential(second),
                     "by-login": login_credential("acme")}
        for secret, credential in made_with.items():
            await storage.create_dashboard_session(secret, account.id, False, "c", 3600, credential)
        self.assertEqual((await storage.dashboard_session("by-first")).account_id, account.id)
        await storage.revoke_api_token(account.id, first_id)
        self.assertIsNone(await storage.dashboard_session("by-first"))
        self.assertIsNotNone(await storage.dashboard_session("by-second"))
        self.assertIsNotNone(await storage.dashboard_session("by-login"))
        # Expired sessions are not found, and go with the next log-in.
        clock.advance(3601)
        self.assertIsNone(await storage.dashboard_session("by-second"))


SessionsSQLite, SessionsPostgreSQL = both_backends(Sessions)
