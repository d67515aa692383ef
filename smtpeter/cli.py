"""The ``smtpeter`` admin command: accounts, logins, tokens, admin logins, sender domains, the queue."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer, task

from smtpeter.address import domain_key
from smtpeter.config import Config, ConfigError, load_config
from smtpeter.domains.registry import SenderDomains
from smtpeter.envelope import BOOLEAN_OPTIONS, IMAGES_VALUES, OPTION_NAMES, MessageOptions, OptionError
from smtpeter.ingress.mx.cli import received_list, received_show
from smtpeter.storage import Conflict, NotFound, Storage, StorageError, open_storage
from smtpeter.suppressions import cli as suppressions


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


Command = Callable[[Storage, argparse.Namespace, Config], Coroutine[Any, Any, Any]]
Printer = Callable[[Any, argparse.Namespace], None]


def _time(value: float | None) -> str | None:
    """UTC in ISO 8601 ("2026-12-02T05:11:38Z"): unambiguous, and --since/--until read it back."""
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _login_options(args: argparse.Namespace) -> MessageOptions:
    """The options given as --NAME / --no-NAME (those not given stay unset)."""
    try:
        return MessageOptions.parse({name: getattr(args, name) for name in OPTION_NAMES
                                     if getattr(args, name, None) is not None})
    except OptionError as exc:
        raise CommandError(f"--{exc}") from None


# -- accounts, logins, tokens ------------------------------------------------


async def account_create(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.create_account(args.name)
    _, token = await storage.create_api_token(account.id, "created with the account")
    username = args.smtp_username or args.name
    password = await storage.create_smtp_login(account.id, username, _login_options(args))
    return {"account": account.name, "account_id": account.id, "api_token": token,
            "smtp_username": username, "smtp_password": password}


async def account_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    return [{"account": a.name, "account_id": a.id, "created": _time(a.created)}
            for a in await storage.accounts()]


async def login_create(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.account(args.account)
    password = await storage.create_smtp_login(account.id, args.username, _login_options(args))
    return {"account": account.name, "smtp_username": args.username, "smtp_password": password,
            "options": _login_options(args).as_dict()}


async def token_create(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.account(args.account)
    token_id, token = await storage.create_api_token(account.id, args.description)
    return {"account": account.name, "token_id": token_id, "api_token": token}


async def token_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    account = await storage.account(args.account)
    return [{"token_id": t["id"], "description": t["description"], "created": _time(t["created"]),
             "revoked": _time(t["revoked"])} for t in await storage.api_tokens(account.id)]


async def token_revoke(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.account(args.account)
    await storage.revoke_api_token(account.id, args.token_id)
    return {"account": account.name, "revoked": args.token_id}


async def admin_create(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    """An operator's log-in for the dashboard (username and password on its log-in page)."""
    if not args.name or len(args.name) > 64 or any(c.isspace() for c in args.name):
        raise CommandError("an admin name is 1 to 64 characters without spaces")
    return {"admin": args.name, "password": await storage.create_admin_login(args.name)}


async def admin_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    return [{"admin": name, "created": _time(created)} for name, created in await storage.admin_logins()]


async def admin_delete(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    await storage.delete_admin_login(args.name)
    return {"deleted": args.name}


# -- sender domains ------------------------------------------------------------


def _sender_domains(storage: Storage, config: Config) -> SenderDomains:
    from twisted.internet import reactor

    return SenderDomains.for_config(storage, config, reactor)


async def domain_add(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    """Register a domain with its DKIM keys; the records to publish (the ownership record first
    unless approved here)."""
    account = await storage.account(args.account)
    domains = _sender_domains(storage, config)
    record = await storage.add_domain(account.id, args.domain, approved=args.approve)
    await domains.keystore.setup_new_domain(account.id, record.domain, tuple(config.domains.dkim_algorithms))
    variant = "selfhosted" if args.selfhosted else "recommended"
    return {"domain": record.domain, "account": account.name, "approved": record.approved,
            "dns": await domains.records(account.id, record.domain, variant)}


async def domain_check(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    """A live check of a domain's DNS, as GET /v1/dns/NAME/status (recorded; keys rotate)."""
    settings = await _domain(storage, args.domain)
    found = await _sender_domains(storage, config).check(settings)
    return {"domain": found.domain, **found.items, "remarks": found.remarks}


def _print_check(result: dict, args: argparse.Namespace) -> None:
    print(f"{result['domain']}:")
    for item, remark in result["remarks"].items():
        print(f"  {item:<10} {result.get(item, ''):<5}  {remark}")


async def domain_records(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    settings = await _domain(storage, args.domain)
    variant = "selfhosted" if args.selfhosted else "recommended"
    return await _sender_domains(storage, config).records(settings.account_id, settings.domain, variant)


async def _domain(storage: Storage, name: str) -> Any:
    settings = await storage.sender_domain(domain_key(name))
    if settings is None:
        raise NotFound(f"no sender domain {name!r}")
    return settings


async def domain_approve(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    account = await storage.account(args.account)
    await storage.approve_domain(account.id, args.domain)
    return {"domain": args.domain.lower(), "account": account.name, "approved": True}


async def domain_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    account = await storage.account(args.account)
    return [{"domain": d.domain, "approved": d.approved} for d in await storage.domains(account.id)]


# -- the queue -------------------------------------------------------------------


def _entry(entry: Any) -> dict:
    return {
        "id": entry.id, "recipient": entry.address, "envelope": entry.envelope,
        "state": entry.state, "attempts": entry.attempts, "size": entry.size,
        "created": _time(entry.created),
        # Only waiting mail has a next attempt.
        "next_attempt": _time(entry.next_attempt) if entry.state == "queued" else None,
        "last_code": entry.last_code, "last_status": entry.last_status,
        "last_description": entry.last_description, "last_state": entry.last_state,
    }


_EVENT_TIMES = {"retry"}


def _event(event: Any) -> dict:
    """An event as the REST API names it: its kind is "event"; "type" in the data is
    a failure's kind (failed or expired). Times, the retry time too, are UTC ISO 8601."""
    data = {key: _time(value) if key in _EVENT_TIMES else value for key, value in event.data.items()}
    return {"event": event.type, "time": _time(event.time), **data}


async def queue_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    state = None if args.state == "all" else args.state
    # The newest, shown oldest first so the latest is the last line, as in a log.
    newest = await storage.queue(state=state, limit=args.limit, newest_first=True)
    return [_entry(e) for e in reversed(newest)]


async def queue_show(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    entry = _entry(await storage.recipient(args.id))
    stored = await storage.message_content(args.id)
    account = await storage.account(stored.account_id)
    headers = stored.mime.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    entry.update({"account": account.name, "account_id": account.id, "options": stored.options.as_dict(),
                  "tags": stored.tags, "expires": _time(stored.expires),
                  "headers": headers, "events": [_event(e) for e in await storage.events(args.id)]})
    return entry


async def queue_retry(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    count = await storage.retry_now(None if args.id == "all" else args.id)
    return {"due_now": count}


async def events_list(storage: Storage, args: argparse.Namespace, config: Config) -> list:
    account = await storage.account(args.account)
    until = _parse_time(args.until) if args.until else storage.now()
    since = _parse_time(args.since) if args.since else until - 86400
    events = await storage.account_events(account.id, since, until, types=args.type or ())
    return [{"id": e.message_id, **_event(e)} for e in events]


def _parse_time(text: str) -> float:
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"not a date/time: {text!r} (use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


async def queue_delete(storage: Storage, args: argparse.Namespace, config: Config) -> dict:
    await storage.delete_recipient(args.id)
    return {"deleted": args.id}


# -- output and plumbing ---------------------------------------------------------


def _human(value: Any) -> str:
    """A value as a person reads it: "-" for nothing, yes/no, lists and tables spelled out."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_human(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_human(v)}" for k, v in value.items())
    return str(value)


def _table(rows: list[dict], columns: list[str], indent: str = "") -> None:
    cells = [[c.replace("_", " ").upper() for c in columns]]
    cells += [[_human(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print((indent + "  ".join(padded)).rstrip())


def _print_human(result: Any, args: argparse.Namespace) -> None:
    if isinstance(result, list):
        if result:
            _table(result, list(result[0]))
        else:
            print("(none)")
        return
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key}:")
            _table(value, list(value[0]), indent="  ")
        else:
            print(f"{key}: {_human(value)}")


def _reply(item: dict) -> str:
    return " ".join(str(item[k]) for k in ("code", "status", "description") if item.get(k) not in (None, ""))


def _event_details(event: dict) -> str:
    """What one event says, in a line: the host and its reply, the next try."""
    kind = event["event"]
    host = f"{event['mx']} [{event['to']}]" if event.get("mx") else event.get("to") or ""
    if event.get("tls"):
        host += f" ({event['tls']['version']})"
    reply = f"{host}: {_reply(event)}" if host else _reply(event)
    if kind == "attempt":
        return "accepted" + (f", tags {_human(event['tags'])}" if event.get("tags") else "")
    if kind == "delivery":
        return reply
    if kind == "deferred":
        return f"{reply}; next try {_human(event.get('retry'))}"
    if kind == "failure":
        return f"{event.get('type', 'failed')}, {reply}"
    return _human({k: v for k, v in event.items() if k not in ("id", "event", "time", "recipient")})


def _print_queue(entries: list[dict], args: argparse.Namespace) -> None:
    if not entries:
        print(f"(no {'' if args.state == 'all' else args.state + ' '}messages)")
        return
    rows = [{**e, "tries": e["attempts"], "next_try": e["next_attempt"],
             "last_reply": " ".join(v for v in (e["last_status"], e["last_description"]) if v)}
            for e in entries]
    _table(rows, ["id", "created", "state", "tries", "next_try", "recipient", "last_reply"])
    if len(entries) == args.limit:
        print(f"(the newest {args.limit}: --limit N shows more, --state STATE filters)")


def _print_message(shown: dict, args: argparse.Namespace) -> None:
    # The null sender is a real envelope ("<>"); None means the message has none.
    envelope = "<>" if shown["envelope"] == "" else shown["envelope"]
    last = _reply({"code": shown["last_code"], "status": shown["last_status"],
                   "description": shown["last_description"]})
    fields = [
        ("message", shown["id"]), ("recipient", shown["recipient"]), ("envelope", envelope),
        ("account", shown["account"]), ("state", shown["state"]), ("attempts", shown["attempts"]),
        ("created", shown["created"]), ("next attempt", shown["next_attempt"]),
        ("expires", shown["expires"]),
        ("last reply", f"{last} (at {shown['last_state']})" if last and shown["last_state"] else last),
        ("size", f"{shown['size']} bytes"), ("options", shown["options"]), ("tags", shown["tags"]),
    ]
    for label, value in fields:
        print(f"{label + ':':<14}{_human(value)}")
    print("events:")
    _table([{**e, "details": _event_details(e)} for e in shown["events"]], ["time", "event", "details"],
           indent="  ")
    print("headers:")
    print("  " + shown["headers"].replace("\r\n", "\n").replace("\n", "\n  "))


def _print_events(events: list[dict], args: argparse.Namespace) -> None:
    if not events:
        print("(no events)")
        return
    rows = [{**e, "details": _event_details(e)} for e in events]
    _table(rows, ["time", "id", "recipient", "event", "details"])


# -- inline-css: no storage, no configuration ------------------------------------


def inline_css(args: argparse.Namespace) -> int:
    """HTML on stdin, the inlined HTML on stdout; --json: the HTML with what stayed and what went."""
    from smtpeter.outbound.inline_css import InlineError, inline_html

    as_json = getattr(args, "json", False)
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    extra = ""
    if args.css:
        try:
            with open(args.css, encoding="utf-8") as file:
                extra = file.read()
        except OSError as exc:
            _fail(f"cannot read {args.css}: {exc.strerror}", 1, as_json)
    try:
        result = inline_html(text, extra_css=extra)
    except InlineError as exc:
        _fail(f"cannot inline: {exc}", 1, as_json)
    if as_json:
        print(json.dumps({"html": result.html.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                          "kept": result.report.kept, "dropped": result.report.dropped},
                         indent=2, ensure_ascii=False))
    else:
        sys.stdout.buffer.write(result.html.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    return 0


def bounce_parse(args: argparse.Namespace) -> int:
    from smtpeter.bounces.cli import bounce_parse  # its phrase tables compile only when used
    return bounce_parse(args)


def dmarc_parse(args: argparse.Namespace) -> int:
    from smtpeter.bounces.dmarc_cli import dmarc_parse
    return dmarc_parse(args)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: built-in defaults)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON")

    def options(p: argparse.ArgumentParser) -> None:
        for name in BOOLEAN_OPTIONS:
            p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"mail sent with this login has {name} on (--no-{name}: off) unless it says")
        p.add_argument("--images", choices=IMAGES_VALUES, default=None,
                       help="mail sent with this login has this images option unless it says")

    parser = argparse.ArgumentParser(prog="smtpeter", parents=[common],
                                     description="Administer an smtpeter installation.")
    groups = parser.add_subparsers(dest="group", required=True,
                                   metavar="{account,login,token,admin,domain,queue,events,suppression,"
                                           "inline-css,bounce,received,dmarc}")

    def command(group: Any, name: str, fn: Command, help: str,
                human: Printer = _print_human) -> argparse.ArgumentParser:
        p = group.add_parser(name, parents=[common], help=help)
        p.set_defaults(fn=fn, human=human)
        return p

    account = groups.add_parser("account", help="accounts").add_subparsers(dest="action", required=True)
    p = command(account, "create", account_create, "create an account with an API token and an SMTP login")
    p.add_argument("name")
    p.add_argument("--smtp-username", help="username of the first SMTP login (default: NAME)")
    options(p)
    command(account, "list", account_list, "list accounts")

    login = groups.add_parser("login", help="SMTP logins").add_subparsers(dest="action", required=True)
    p = command(login, "create", login_create, "create another SMTP login for an account")
    p.add_argument("account")
    p.add_argument("username")
    options(p)

    token = groups.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    p = command(token, "create", token_create, "create an API token")
    p.add_argument("account")
    p.add_argument("--description", default="")
    p = command(token, "list", token_list, "list an account's API tokens (never their secrets)")
    p.add_argument("account")
    p = command(token, "revoke", token_revoke, "revoke an API token by its id")
    p.add_argument("account")
    p.add_argument("token_id")

    admin = groups.add_parser("admin", help="operators' dashboard logins").add_subparsers(dest="action",
                                                                                          required=True)
    p = command(admin, "create", admin_create, "create an operator's dashboard login (its password is "
                                               "shown once)")
    p.add_argument("name")
    command(admin, "list", admin_list, "list the operators' dashboard logins")
    p = command(admin, "delete", admin_delete, "delete an operator's dashboard login (and end every "
                                               "operator's dashboard session)")
    p.add_argument("name")

    domain = groups.add_parser("domain", help="sender domains").add_subparsers(dest="action", required=True)
    p = command(domain, "add", domain_add, "register a sender domain")
    p.add_argument("account")
    p.add_argument("domain")
    p.add_argument("--approve", action="store_true", help="approve it now, without DNS validation")
    p.add_argument("--selfhosted", action="store_true", help="records without CNAMEs into our hosted zone")
    p = command(domain, "approve", domain_approve, "approve a registered sender domain")
    p.add_argument("account")
    p.add_argument("domain")
    p = command(domain, "list", domain_list, "list an account's sender domains")
    p.add_argument("account")
    p = command(domain, "check", domain_check, "check a sender domain's DNS records now", _print_check)
    p.add_argument("domain")
    p = command(domain, "records", domain_records, "the DNS records to publish for a sender domain")
    p.add_argument("domain")
    p.add_argument("--selfhosted", action="store_true", help="records without CNAMEs into our hosted zone")

    queue = groups.add_parser("queue", help="the delivery queue").add_subparsers(dest="action", required=True)
    p = command(queue, "list", queue_list, "list messages (one per recipient), oldest first", _print_queue)
    p.add_argument("--state", default="all", choices=["queued", "delivered", "failed", "expired", "all"],
                   help="only messages in this state (default: all)")
    p.add_argument("--limit", type=int, default=100)
    p = command(queue, "show", queue_show, "show one message (by message id) with its events", _print_message)
    p.add_argument("id")
    p = command(queue, "delete", queue_delete, "delete one message (by message id) from the queue")
    p.add_argument("id")
    p = command(queue, "retry", queue_retry, "make a waiting message due now (ID, or 'all')")
    p.add_argument("id")

    events = groups.add_parser("events", help="delivery events").add_subparsers(dest="action", required=True)
    p = command(events, "list", events_list, "an account's events (UTC times; default: the last day)",
                _print_events)
    p.add_argument("account")
    p.add_argument("--since", help="YYYY-MM-DD[ HH:MM:SS]")
    p.add_argument("--until", help="YYYY-MM-DD[ HH:MM:SS]")
    p.add_argument("--type", action="append",
                   choices=["attempt", "delivery", "deferred", "failure", "bounce", "response", "abuse",
                            "click", "open", "unsubscribe", "warning"])

    suppression = groups.add_parser("suppression", help="the suppression list")
    suppression = suppression.add_subparsers(dest="action", required=True)
    p = command(suppression, "list", suppressions.suppression_list, "an account's suppressed addresses")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=None)
    p = command(suppression, "add", suppressions.suppression_add, "suppress an address (replacing its entry)")
    p.add_argument("account")
    p.add_argument("address")
    p.add_argument("--reason", default="manual")
    p.add_argument("--expires", help="'YYYY-MM-DD hh:mm:ss' (UTC); default: until removed")
    p = command(suppression, "remove", suppressions.suppression_remove, "take an address off the list")
    p.add_argument("account")
    p.add_argument("address")
    p = command(suppression, "export", suppressions.suppression_export,
                "the whole list as CSV (--json: JSON)", suppressions.print_csv)
    p.add_argument("account")

    p = groups.add_parser("inline-css", parents=[common],
                          help="inline the <style> rules of HTML on stdin (to stdout)",
                          description="Reads HTML on stdin and writes it with the rules of its <style> "
                                      "elements inlined, as outbound mail with inlinecss on gets it. "
                                      "--json also says what stayed in <style> and what was dropped.")
    p.add_argument("--css", metavar="FILE", help="a stylesheet applied after the page's own")
    p.set_defaults(local=inline_css)

    bounce = groups.add_parser("bounce", help="received bounces").add_subparsers(dest="action", required=True)
    p = bounce.add_parser("parse", parents=[common], help="classify bounces in files, per recipient")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(local=bounce_parse)

    received = groups.add_parser("received", help="what mx.listen received")
    received = received.add_subparsers(dest="action", required=True)
    p = command(received, "list", received_list, "the newest received messages and what they were")
    p.add_argument("--state", default="all", choices=["new", "done", "failed", "all"])
    p.add_argument("--limit", type=int, default=100)
    p = command(received, "show", received_show, "one received message, whole")
    p.add_argument("id")

    dmarc = groups.add_parser("dmarc", help="DMARC aggregate reports")
    dmarc = dmarc.add_subparsers(dest="action", required=True)
    p = dmarc.add_parser("parse", parents=[common], help="read DMARC aggregate reports in files (messages, "
                                                        "or the XML, zip or gzip itself)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(local=dmarc_parse)
    return parser


def _fail(message: str, status: int, as_json: bool) -> None:
    """Exit with ``message``: on stderr, or with --json as {"error": "text"} on stdout,
    the shape of the REST API's errors."""
    message = " ".join(message.split())  # one line, even when a driver's message has several
    if as_json:
        print(json.dumps({"error": message}, ensure_ascii=False))
    else:
        print(f"smtpeter: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "local", None) is not None:
        sys.exit(args.local(args))
    as_json = getattr(args, "json", False)
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        _fail(str(exc), 2, as_json)
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        try:
            storage = await open_storage(config.storage_url, reactor, 1)
        except StorageError as exc:
            outcome["error"] = f"cannot open storage {config.storage_label}: {exc}"
            return
        try:
            outcome["result"] = await args.fn(storage, args, config)
        except (NotFound, Conflict, CommandError) as exc:
            outcome["error"] = str(exc)
        except StorageError as exc:
            outcome["error"] = f"storage error: {exc}"
        finally:
            await storage.close()

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    if "error" in outcome:
        _fail(outcome["error"], 1, as_json)
    if as_json:
        print(json.dumps(outcome["result"], indent=2, ensure_ascii=False))
    else:
        args.human(outcome["result"], args)
