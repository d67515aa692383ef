"""The OpenAPI 3.0 document served at /v1/openapi.json, describing exactly what app.py answers.

The test suite runs schemathesis against it over a real socket, so a route,
parameter or response shape that drifts from this document fails CI.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
       "description": "A message id, as /v1/send answered it (one per recipient)."}
_WINDOW = [
    {"name": "start", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "First day (UTC, yyyy-mm-dd); the window is a month at most."},
    {"name": "end", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "Day after the last (UTC, yyyy-mm-dd)."},
    {"name": "tags", "in": "query", "schema": {"type": "string"},
     "description": "Only events of messages with all these tags, separated by ';'."},
]
_ADDRESSES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_BOOLEAN = {"type": "boolean"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in codes}


def _get(summary: str, parameters: list, ok: dict[str, Any], *errors: int, secure: bool = True) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": parameters,
        # Everything behind a token reads storage, which may be down for a while.
        "responses": {"200": ok, **_errors(*errors, *((401, 503) if secure else ()))},
    }
    if not secure:
        operation["security"] = []
    return {"get": operation}


SEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "recipient": {**_ADDRESSES, "description": "RCPT TO address (or several)."},
        "recipients": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                                 {"type": "object", "additionalProperties": {"type": "object"}}],
                       "description": "Addresses, or an object of address -> that recipient's "
                                      "personalization data (which turns personalization on)."},
        "bcc": {**_ADDRESSES, "description": "More envelope recipients; never written into a header."},
        "data": {"type": "object", "description": "Personalization data for every recipient: {$name} "
                 "in from, to, cc, replyto, subject, text, html, extra, unsubscribe or mime. Built in: "
                 "{$recipient}, {$envelope}. Each recipient then gets a message of its own."},
        "access_token": {"type": "string", "description": "The API token, if not in the URL or header."},
        "envelope": {"type": "string", "description": "MAIL FROM address; without it, no bounces come back."},
        "mime": {"type": "string", "description": "The whole message (RFC 5322)."},
        "from": {"type": "string"},
        "to": _ADDRESSES, "cc": _ADDRESSES, "replyto": _ADDRESSES,
        "subject": {"type": "string"}, "text": {"type": "string"}, "html": {"type": "string"},
        "unsubscribe": {"type": "object", "properties": {
            "email": {"type": "string"}, "url": {"type": "string"}, "oneclick": _BOOLEAN}},
        "extra": {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "x-* headers to add."},
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "From, To, Cc, Reply-To and Subject (any case) set those fields, X-* "
                                   "headers join extra; any other header is refused. A field given here "
                                   "and at the top level must hold the same value."},
        "replyTo": {**_ADDRESSES, "description": "Another name for replyto."},
        "attachments": {"type": "array", "items": {"type": "object", "properties": {
            "data": {"type": "string", "format": "byte"}, "name": {"type": "string"},
            "type": {"type": "string"}}}},
        "inlinecss": _BOOLEAN, "trackclicks": _BOOLEAN, "trackopens": _BOOLEAN, "trackbounces": _BOOLEAN,
        "preventscam": _BOOLEAN,
        "oneclick": {**_BOOLEAN, "description": "Our one-click unsubscribe (RFC 8058) when the message "
                                                "has no unsubscribe URL of its own"},
        # The 2015 documentation's names for the same options.
        "clicktracking": _BOOLEAN, "bouncetracking": _BOOLEAN, "openstracking": _BOOLEAN,
        "inlinizecss": _BOOLEAN,
        "images": {"type": "string", "enum": ["hosted", "default"]},
        "tags": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "maxdelivertime": {"type": "string", "description":
                           "YYYY-MM-DD hh:mm:ss, UTC; at most 30 days ahead (later times are capped)."},
        "dsn": {"type": "object", "properties": {
            "notify": {"type": "string"}, "ret": {"type": "string", "enum": ["FULL", "HDRS"]},
            "envid": {"type": "string"}, "orcpt": {"type": "string"}}},
    },
}

SEND_EXAMPLES: dict[str, Any] = {
    "mime": {"summary": "A whole message", "value": {
        "recipient": "john@doe.example",
        "mime": "MIME-Version: 1.0\r\nFrom: <info@example.com>\r\nSubject: Hi\r\n\r\nHello John.\r\n"}},
    "fields": {"summary": "Built from fields", "value": {
        "recipient": "john@doe.example", "from": "info@example.com", "to": "john@doe.example",
        "subject": "This is the subject", "text": "This is example content"}},
    "options": {"summary": "With options", "value": {
        "recipients": ["one@example.net", "two@example.net"], "from": "info@example.com",
        "html": "<p>Hi</p>", "trackclicks": True, "trackopens": False, "tags": ["tag1", "tag2"],
        "maxdelivertime": "2099-01-01 00:00:00", "dsn": {"notify": "FAILURE", "ret": "HDRS"}}},
}

_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "enum": ["attempt", "delivery", "failure", "bounce", "click", "open",
                                         "response", "abuse"]},
    "data": {"type": "object"}}}
_EVENTS = {"description": "Events, oldest first.",
           "content": {"application/json": {"schema": {"type": "array", "items": _EVENT}}}}
_STRINGS = {"content": {"application/json": {"schema": {"type": "array", "items": {"type": "string"}}}}}
_PART_LIST = {"description": "Parts by rank (from 0)", "content": {"application/json": {"schema": {
    "type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "rank": {"type": "integer"}, "type": {"type": "string"},
        "size": {"type": "integer"}}}}}}}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
         "description": "A sender domain."}
_SELECTOR = {"name": "selector", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_JSON = {"application/json": {}}
_DOMAIN = {"description": "The sender domain", "content": _JSON}
_SETTINGS = {"type": "object", "properties": {
    "bounces": {"type": "string"}, "tracking": {"type": "string"}, "https": _BOOLEAN,
    "policy": {"type": "string", "enum": ["none", "quarantine", "reject"]},
    "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
    "startdate": {"type": "string", "format": "date"}, "enddate": {"type": "string", "format": "date"},
    "address": _ADDRESSES}}


def _write(method: str, summary: str, parameters: list, ok: str, *errors: int,
           body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": parameters, "responses": {
        "200": {"description": ok, "content": _JSON}, **_errors(*errors, 401, 503)}}
    if body is not None:
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return {method: operation}


def _domain_paths() -> dict[str, Any]:
    """Sender domains, their DNS records and status, SPF mechanisms and DKIM keys (domains.py)."""
    keys = {"description": "Keys (never a private key)", "content": _JSON}
    return {
        "/v1/domain/{name}": {
            **_get("A sender domain", [_NAME], _DOMAIN, 404),
            **_write("post", "Register a sender domain (its ownership record), approve it once that "
                             "record is in DNS, change its settings", [_NAME],
                     "The ownership record to publish, or the approved domain", 400, 409, body=_SETTINGS),
            **_write("delete", "Remove a sender domain and its keys", [_NAME], "true", 404)},
        "/v1/domain/{name}/{address}": _write(
            "delete", "Remove an extra DMARC report address", [_NAME, {
                "name": "address", "in": "path", "required": True, "schema": {"type": "string"}}],
            "The domain", 404),
        "/v1/domains": _get("The account's sender domains", [], {"description": "Domains", "content": _JSON}),
        "/v1/dns/{name}/{variant}": _get(
            "The DNS records to publish (recommended: CNAMEs to our hosted zone; selfhosted), or the "
            "live status of each (status)", [_NAME, {
                "name": "variant", "in": "path", "required": True,
                "schema": {"type": "string", "enum": ["recommended", "selfhosted", "status"]}}],
            {"description": "Records or status", "content": _JSON}, 404),
        "/v1/spf/{name}": {
            **_get("Extra mechanisms of the hosted SPF record", [_NAME], _STRINGS, 404),
            **_write("post", "Add SPF mechanisms", [_NAME], "The mechanisms", 400, 404, body={
                "type": "object", "additionalProperties": _ADDRESSES}),
            **_write("delete", "Remove every added mechanism", [_NAME], "The mechanisms (none)", 404)},
        "/v1/dkimkey/{name}": _get("The key that signs the domain's mail", [_NAME],
                                   {"description": "selector, algorithm, public key", "content": _JSON}, 404),
        "/v1/dkimkey/{name}/{selector}": {
            **_get("One part of that key: publickey, algorithm or selector", [_SELECTOR | {
                "schema": {"type": "string", "enum": ["publickey", "algorithm", "selector"]}}, _NAME],
                {"description": "Text", "content": _TEXT}, 404),
            **_write("post", "Install a key of the customer's (or have one made) under a selector",
                     [_NAME, _SELECTOR], "The key (public parts)", 400, 404, 409, body={
                         "type": "object", "properties": {
                             "privatekey": {"type": "string"}, "always": _BOOLEAN,
                             "start": {"type": "string"}, "end": {"type": "string"}}}),
            **_write("delete", "Remove a key", [_NAME, _SELECTOR], "true", 404)},
        "/v1/dkimkeys": _get("Every DKIM key of the account", [], keys),
        "/v1/dkimkeys/{name}": _get("A domain's DKIM keys", [_NAME], keys, 404),
        "/v1/dkimkeys/{name}/{selector}": _get("A domain's key under a selector", [_NAME, _SELECTOR], keys,
                                               404),
    }


_HOOK_ID = {"name": "hook_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
            "description": "A webhook's id, as POST /v1/webhook answered it."}
_HOOK = {"type": "object", "required": ["id", "type", "url", "state"], "properties": {
    "id": {"type": "string"}, "type": {"type": "string"}, "url": {"type": "string"},
    "state": {"type": "string", "enum": ["pending", "active", "disabled"]},
    "proof": {"type": "string", "nullable": True, "enum": ["network", "file", "challenge", None]},
    "problem": {"type": "string"}, "created": {"type": "string"},
    "active_since": {"type": "string", "nullable": True},
    "verification": {"type": "object", "properties": {"file": {"type": "string"},
                                                      "token": {"type": "string"}}},
    "secret": {"type": "string",
               "description": "whsec_...: only when the hook is made or its secret rotated"},
    "calls": {"type": "object", "additionalProperties": {"type": "integer"}}}}
_HOOK_REPLY = {"description": "The webhook", "content": {"application/json": {"schema": _HOOK}}}
_HOOK_TYPES = ["delivery", "failure", "bounce", "response", "click", "open", "abuse", "unsubscribe",
               "feedbackloop", "feedbackloops"]
_NEW_HOOK = {"type": "object", "required": ["type", "url"], "properties": {
    "type": {"type": "string", "enum": _HOOK_TYPES,
             "description": "The events it gets (feedbackloop(s): the old name of abuse)"},
    "url": {"type": "string", "description": "http(s) URL the events are POSTed to"},
    "access_token": {"type": "string"}}}


def _hook_post(summary: str, ok: dict[str, Any], *errors: int, parameters: list | None = None,
               body: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": parameters or [],
                                 "responses": {"200": ok, **_errors(*errors, 401, 503)}}
    if body:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _NEW_HOOK, "example": {
                "type": "delivery", "url": "https://hooks.example.com/smtpeter"}},
            "application/x-www-form-urlencoded": {"schema": _NEW_HOOK}}}
    return {"post": operation}


_ADDRESS = {"name": "address", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
            "description": "An address on the account's suppression list (any case)."}
_SUPPRESSION = {"type": "object", "required": ["address", "reason", "source", "created", "expires"],
                "properties": {"address": {"type": "string"}, "reason": {"type": "string"},
                               "source": {"type": "string"}, "created": {"type": "string"},
                               "expires": {"type": "string", "nullable": True}}}
_NEW_SUPPRESSION = {"type": "object", "properties": {
    "address": {"type": "string", "description": "The address (or MailerQ's 'value')"},
    "reason": {"type": "string", "description": "A word: manual (the default), complaint, ..."},
    "expires": {"type": "string", "description": "UTC 'YYYY-MM-DD hh:mm:ss' (or seconds since 1970)"},
    "type": {"type": "string", "enum": ["address"]}, "value": {"type": "string"},
    "description": {"type": "string"}, "access_token": {"type": "string"}}}


def _suppression_paths() -> dict[str, Any]:
    """The suppression list (suppressions.py)."""
    entry = {"description": "The entry", "content": {"application/json": {"schema": _SUPPRESSION}}}
    listed = {"description": "Entries by address, or all of them as CSV (format=csv)", "content": {
        "application/json": {"schema": {"type": "array", "items": _SUPPRESSION}},
        "text/csv": {"schema": {"type": "string"}}}}
    add = {"post": {"summary": "Put an address on the list (replacing its entry, if any)", "parameters": [],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _NEW_SUPPRESSION,
                                             "example": {"address": "john@doe.example", "reason": "manual"}},
                        "application/x-www-form-urlencoded": {"schema": _NEW_SUPPRESSION}}},
                    "responses": {"200": entry, **_errors(400, 401, 415, 503)}}}
    return {
        "/v1/suppressions": {**_get("The account's suppression list", [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
            {"name": "after", "in": "query", "schema": {"type": "string"},
             "description": "Only entries after this address (for paging)"},
            {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]}}],
            listed, 400), **add},
        "/v1/suppression": add,
        "/v1/suppressions/csv": _get("The whole list as CSV", [], {"description": "CSV with a header line",
                                                                  "content": {"text/csv": {}}}),
        "/v1/suppression/{address}": {
            **_get("An address's entry", [_ADDRESS], entry, 404),
            **_write("delete", "Take an address off the list", [_ADDRESS], "true", 404)},
    }


def _webhook_paths() -> dict[str, Any]:
    """Webhooks (webhooks.py): made pending, proven, signed calls, their attempts."""
    hooks = {"description": "The account's webhooks", "content": {"application/json": {
        "schema": {"type": "array", "items": _HOOK}}}}
    make = _hook_post("Make a webhook: its id and signing secret (Standard Webhooks); it gets events "
                      "once control of its URL is proven", _HOOK_REPLY, 400, 415, body=True)
    return {
        "/v1/webhook": make,
        "/v1/feedbackloop": make,
        "/v1/webhooks": _get("The account's webhooks", [], hooks),
        "/v1/feedbackloops": _get("The account's webhooks (older name)", [], hooks),
        "/v1/webhook/{hook_id}": {
            **_get("A webhook, with its calls counted by state", [_HOOK_ID], _HOOK_REPLY, 404),
            **_write("delete", "Remove a webhook and its calls", [_HOOK_ID], "true", 404)},
        "/v1/webhook/{hook_id}/verify": _hook_post(
            "Check now that the owner controls the URL (the ownership file, then the verification call)",
            _HOOK_REPLY, 404, parameters=[_HOOK_ID]),
        "/v1/webhook/{hook_id}/enable": _hook_post(
            "Take up a webhook disabled by a 410 Gone again, for events from now on", _HOOK_REPLY, 404,
            parameters=[_HOOK_ID]),
        "/v1/webhook/{hook_id}/secret": _hook_post(
            "A new signing secret; the old one signs too for a day", _HOOK_REPLY, 404, parameters=[_HOOK_ID]),
        "/v1/webhook/{hook_id}/calls": _get("The webhook's latest attempts, newest first", [
            _HOOK_ID, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                  "maximum": 1000}}],
            {"description": "Attempts: time, status (null: no answer), duration (s), error, call, event, "
                            "attempt, state, next", "content": {"application/json": {"schema": {
                                "type": "array", "items": {"type": "object"}}}}}, 400, 404),
    }


def _dmarc_paths() -> dict[str, Any]:
    """Received DMARC aggregate reports (dmarc.py): DATE is the UTC day a report arrived."""
    segment = {"in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    where = [{"name": "date", **segment, "description": "The day (UTC, yyyy-mm-dd) the report arrived."},
             {"name": "reporter", **segment, "description": "The reporter's domain (FROM)."},
             {"name": "domain", **segment, "description": "The domain reported on (FOR)."}]
    xml = {"description": "The report's XML (RFC 7489 Appendix C), as it came",
           "content": {"application/xml": {"schema": {"type": "string"}}}}
    return {
        "/v1/dmarc": _get("Days (UTC) on which reports arrived", [], {**_STRINGS, "description": "Days"}),
        "/v1/dmarc/{date}/{reporter}/{domain}": _get("The first such report", where, xml, 404),
        "/v1/dmarc/{date}/{reporter}/{domain}/{index}": _get("The index-th such report (from 0)", [
            *where, {"name": "index", "in": "path", "required": True,
                     "schema": {"type": "integer", "minimum": 0}}], xml, 404),
    }


def document(server_url: str) -> dict[str, Any]:
    text_view = {"description": "Text", "content": _TEXT}
    paths: dict[str, Any] = {
        "/v1/send": {"post": {
            "summary": "Send a message to one or more recipients",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": SEND_SCHEMA, "examples": SEND_EXAMPLES},
                "application/x-www-form-urlencoded": {"schema": SEND_SCHEMA}}},
            "responses": {
                "200": {"description": "Stored: one message id per recipient", "content": {
                    "application/json": {"schema": {"type": "object",
                                                    "additionalProperties": {"type": "string"}}}}},
                **_errors(400, 401, 403, 413, 415, 503)}}},
        "/v1/resend": {"post": {
            "summary": "Send an earlier message again, under a new id",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["message"],
                "properties": {"message": {"type": "string"}}}}}},
            "responses": {"200": {"description": "The new id", "content": {"application/json": {
                "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}},
                **_errors(400, 401, 403, 404, 413, 415, 503)}}},
        "/v1/events/messageid/{id}": _get("Events of one message", [_ID, *_WINDOW], _EVENTS,
                                          400, 401, 404),
        "/v1/events/email/{address}": _get("Events of one recipient address", [
            {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}, *_WINDOW],
            _EVENTS, 400, 401, 404),
        "/v1/events/tags/{tags}": _get("Events of messages with all these tags (';'-separated)", [
            {"name": "tags", "in": "path", "required": True, "schema": {"type": "string"}}, *_WINDOW],
            _EVENTS, 400, 401, 404),
        "/v1/logfiles": _get("Days (UTC) with log files", [], {**_STRINGS, "description": "Days"}, 401),
        "/v1/logfiles/{item}": _get(
            "A day's log file names (item = yyyy-mm-dd), or a log file as CSV (item = NAME.DATE.log)",
            [{"name": "item", "in": "path", "required": True, "schema": {"type": "string"}}],
            {"description": "A list of file names, or CSV without a header line", "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "string"}}},
                "text/csv": {"schema": {"type": "string"}}}}, 401, 404),
        "/v1/logfiles/{item}/{format}": _get(
            "A log file as CSV with a header line, JSON or XML",
            [{"name": "item", "in": "path", "required": True, "schema": {"type": "string"}},
             {"name": "format", "in": "path", "required": True,
              "schema": {"type": "string", "enum": ["header", "json", "xml", "csv"]}}],
            {"description": "The log file", "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/xml": {"schema": {"type": "string"}}}}, 401, 404),
        "/v1/recipient/{id}": _get("The recipient address", [_ID], text_view, 401, 404),
        "/v1/envelope/{id}": _get("The envelope sender ('' if none)", [_ID], text_view, 401, 404),
        "/v1/headers/{id}": _get("The message header", [_ID], text_view, 401, 404),
        "/v1/header/{id}": _get("The message header (older name)", [_ID], text_view, 401, 404),
        "/v1/text/{id}": _get("The text/plain body", [_ID], text_view, 401, 404, 422),
        "/v1/html/{id}": _get("The text/html body", [_ID], text_view, 401, 404, 422),
        "/v1/attachments/{id}": _get("The attachments", [_ID], _PART_LIST, 401, 404, 422),
        "/v1/embeds/{id}": _get("The embedded (cid:) parts", [_ID], _PART_LIST, 401, 404, 422),
        "/v1/attachments/{id}/{item}": _get("One attachment, by rank or name", [_ID, {
            "name": "item", "in": "path", "required": True, "schema": {"type": "string"}}],
            {"description": "The attachment", "content": {"*/*": {"schema": {"type": "string",
                                                                               "format": "binary"}}}},
            401, 404, 422),
        "/v1/embeds/{id}/{item}": _get("One embedded part, by rank or name", [_ID, {
            "name": "item", "in": "path", "required": True, "schema": {"type": "string"}}],
            {"description": "The part", "content": {"*/*": {"schema": {"type": "string",
                                                                         "format": "binary"}}}},
            401, 404, 422),
        **_domain_paths(),
        **_webhook_paths(),
        **_suppression_paths(),
        **_dmarc_paths(),
        "/v1/openapi.json": _get("This document", [], {"description": "OpenAPI 3.0",
                                                        "content": {"application/json": {}}}, secure=False),
        "/.well-known/autoconfig/mail/config-v1.1.xml": _get(
            "Thunderbird autoconfig for SMTP submission",
            [{"name": "emailaddress", "in": "query", "schema": {"type": "string"}}],
            {"description": "Mozilla autoconfig XML", "content": {"application/xml": {}}}, secure=False),
        "/mail/config-v1.1.xml": _get(
            "Thunderbird autoconfig (on the mail domain)",
            [{"name": "emailaddress", "in": "query", "schema": {"type": "string"}}],
            {"description": "Mozilla autoconfig XML", "content": {"application/xml": {}}}, secure=False),
        "/metrics": _get("Prometheus metrics (localhost, or with the metrics token)", [],
                         {"description": "Prometheus text format", "content": {"text/plain": {}}}, 403,
                         secure=False),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "smtpeter REST API", "version": "1",
                 "description": "SMTPeter v1 compatible. Authenticate with ?access_token=TOKEN "
                                "or Authorization: Bearer TOKEN."},
        "servers": [{"url": server_url}],
        "security": [{"token": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "query", "name": "access_token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "responses": {"Error": {"description": "An error", "content": {"application/json": {
                "schema": {"type": "object", "required": ["error"], "additionalProperties": False,
                           "properties": {"error": {"type": "string"}}}}}}},
        },
    }
