"""Sender domains: ownership and approval, settings, the last DNS check, and DKIM keys.

A domain belongs to one account; asked for by another account it is not found. Private keys
come in and go out sealed (``smtpeter.domains.sealing``): storage never holds one in the clear,
and refuses a key whose ``private_key`` is filled in. A domain's keys go when the domain goes.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpeter.domains.model import DkimKey, DmarcPolicy, DomainSettings, DomainStatus
from smtpeter.storage.db import SQL, Conflict, NotFound, Tables
from smtpeter.storage.models import SenderDomain


@dataclass(frozen=True)
class StoredDkimKey:
    """A DKIM key as storage keeps it: ``key.private_key`` is empty, ``sealed_private_key`` holds it
    sealed for the context ``dkim:DOMAIN/SELECTOR``."""

    key: DkimKey
    sealed_private_key: bytes


def default_bounces(domain: str) -> str:
    return f"bounces.{domain}"


def default_tracking(domain: str) -> str:
    return f"clicks.{domain}"


_SETTINGS = ("domain, account_id, approved, validation_token, created, bounces, tracking, https, "
             "dmarc_policy, dmarc_percentage, dmarc_start, dmarc_end, dmarc_addresses, spf_mechanisms")
_KEY = ("domain, selector, algorithm, public_record, managed, state, always, created, start_time, end_time, "
        "activated, private_key")


def _date(value: str | None) -> datetime.date | None:
    return datetime.date.fromisoformat(value) if value else None


def _settings(row: Sequence[Any]) -> DomainSettings:
    domain = row[0]
    return DomainSettings(
        domain=domain, account_id=row[1], approved=bool(row[2]), validation_token=row[3], created=row[4],
        # NULL: a row an older node wrote, before these settings existed.
        bounces=row[5] or default_bounces(domain), tracking=row[6] or default_tracking(domain),
        https=bool(row[7]),
        dmarc=DmarcPolicy(policy=row[8], percentage=row[9], start=_date(row[10]), end=_date(row[11]),
                          addresses=tuple(json.loads(row[12]))),
        spf_mechanisms=tuple(json.loads(row[13])),
    )


def _stored_key(row: Sequence[Any]) -> StoredDkimKey:
    key = DkimKey(domain=row[0], selector=row[1], algorithm=row[2], private_key=b"", public_record=row[3],
                  managed=bool(row[4]), state=row[5], always=bool(row[6]), created=row[7], start=row[8],
                  end=row[9], activated=row[10])
    return StoredDkimKey(key, bytes(row[11]))


class Domains(Tables):
    """Sender domains, their settings and DNS status, and their DKIM keys."""

    # -- ownership ---------------------------------------------------------------------------------

    async def add_domain(self, account_id: str, domain: str, approved: bool = False) -> SenderDomain:
        record = SenderDomain(domain.lower(), account_id, approved, secrets.token_hex(10), self.now())
        try:
            await self.db.transaction([SQL(
                "INSERT INTO sender_domains (domain, account_id, approved, validation_token, created, "
                "bounces, tracking) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.domain, account_id, int(approved), record.validation_token, record.created,
                 default_bounces(record.domain), default_tracking(record.domain)))])
        except Conflict:
            raise Conflict(f"the domain {domain!r} is already registered") from None
        return record

    async def approve_domain(self, account_id: str, domain: str) -> None:
        rows = await self.db.transaction(
            [SQL("UPDATE sender_domains SET approved = 1 "
                 "WHERE account_id = ? AND domain = ? RETURNING domain", (account_id, domain.lower()))]
        )
        if not rows:
            raise NotFound(f"no domain {domain!r} for this account")

    async def domains(self, account_id: str) -> list[SenderDomain]:
        rows = await self.db.query(
            "SELECT domain, account_id, approved, validation_token, created FROM sender_domains "
            "WHERE account_id = ? ORDER BY domain",
            (account_id,),
        )
        return [SenderDomain(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    async def approved_domains(self, account_id: str) -> set[str]:
        rows = await self.db.query(
            "SELECT domain FROM sender_domains WHERE account_id = ? AND approved = 1", (account_id,)
        )
        return {row[0] for row in rows}

    async def delete_domain(self, account_id: str, domain: str) -> None:
        """Delete the account's ``domain``, its keys with it."""
        rows = await self.db.transaction([SQL(
            "DELETE FROM sender_domains WHERE account_id = ? AND domain = ? RETURNING domain",
            (account_id, domain.lower()))])
        if not rows:
            raise NotFound(f"no domain {domain!r} for this account")

    # -- settings ----------------------------------------------------------------------------------

    async def domain_settings(self, account_id: str, domain: str) -> DomainSettings:
        rows = await self.db.query(
            f"SELECT {_SETTINGS} FROM sender_domains WHERE account_id = ? AND domain = ?",  # noqa: S608
            (account_id, domain.lower()))
        if not rows:
            raise NotFound(f"no domain {domain!r} for this account")
        return _settings(rows[0])

    async def domain_settings_list(self, account_id: str) -> list[DomainSettings]:
        rows = await self.db.query(
            f"SELECT {_SETTINGS} FROM sender_domains WHERE account_id = ? ORDER BY domain",  # noqa: S608
            (account_id,))
        return [_settings(row) for row in rows]

    async def sender_domain(self, domain: str) -> DomainSettings | None:
        """``domain`` whichever account it belongs to (for the hosted DNS server and the checks)."""
        rows = await self.db.query(
            f"SELECT {_SETTINGS} FROM sender_domains WHERE domain = ?", (domain.lower(),))  # noqa: S608
        return _settings(rows[0]) if rows else None

    async def all_sender_domains(self) -> list[DomainSettings]:
        rows = await self.db.query(f"SELECT {_SETTINGS} FROM sender_domains ORDER BY domain")  # noqa: S608
        return [_settings(row) for row in rows]

    async def update_domain_settings(
        self, account_id: str, domain: str, *, bounces: str | None = None, tracking: str | None = None,
        https: bool | None = None, dmarc: DmarcPolicy | None = None,
        spf_mechanisms: Sequence[str] | None = None,
    ) -> DomainSettings:
        """Change the settings given (None: left as they are); the settings as they are now."""
        changes: dict[str, object] = {}
        if bounces is not None:
            changes["bounces"] = bounces
        if tracking is not None:
            changes["tracking"] = tracking
        if https is not None:
            changes["https"] = int(https)
        if dmarc is not None:
            changes.update(
                dmarc_policy=dmarc.policy, dmarc_percentage=dmarc.percentage,
                dmarc_start=dmarc.start.isoformat() if dmarc.start else None,
                dmarc_end=dmarc.end.isoformat() if dmarc.end else None,
                dmarc_addresses=json.dumps(list(dmarc.addresses)))
        if spf_mechanisms is not None:
            changes["spf_mechanisms"] = json.dumps(list(spf_mechanisms))
        if not changes:
            return await self.domain_settings(account_id, domain)
        # Column names are the constants above, never input.
        assignments = ", ".join(f"{column} = ?" for column in changes)
        rows = await self.db.transaction([SQL(
            f"UPDATE sender_domains SET {assignments} WHERE account_id = ? AND domain = ? "  # noqa: S608
            f"RETURNING {_SETTINGS}", (*changes.values(), account_id, domain.lower()))])
        if not rows:
            raise NotFound(f"no domain {domain!r} for this account")
        return _settings(rows[0])

    # -- the last DNS check ------------------------------------------------------------------------

    async def record_domain_status(self, status: DomainStatus) -> None:
        """Keep ``status`` as its domain's last check (NotFound if the domain is gone meanwhile)."""
        found = json.dumps({"items": status.items, "remarks": status.remarks,
                            "published_selectors": list(status.published_selectors)})
        rows = await self.db.transaction([SQL(
            "UPDATE sender_domains SET dns_status = ?, dns_checked = ? WHERE domain = ? RETURNING domain",
            (found, status.checked, status.domain.lower()))])
        if not rows:
            raise NotFound(f"no domain {status.domain!r}")

    async def domain_status(self, domain: str) -> DomainStatus | None:
        """The last check of ``domain``; None if it was never checked (or there is no such domain)."""
        rows = await self.db.query(
            "SELECT domain, dns_status, dns_checked FROM sender_domains WHERE domain = ?", (domain.lower(),))
        if not rows or rows[0][1] is None:
            return None
        found = json.loads(rows[0][1])
        return DomainStatus(domain=rows[0][0], items=found["items"], remarks=found["remarks"],
                            published_selectors=tuple(found["published_selectors"]), checked=rows[0][2])

    # -- DKIM keys ---------------------------------------------------------------------------------

    async def add_dkim_key(self, account_id: str, key: DkimKey, sealed_private_key: bytes) -> None:
        """Keep ``key`` of the account's domain ``key.domain``, its private key only as sealed.

        NotFound if the domain is not the account's; Conflict if the selector is taken.
        """
        if key.private_key:
            raise ValueError("storage keeps DKIM private keys sealed only: pass the key without it")
        # One statement: the row goes in only if the domain is the account's (no rows back: it is not).
        statement = SQL(
            "INSERT INTO dkim_keys (domain, selector, account_id, algorithm, private_key, public_record, "
            "managed, state, always, created, start_time, end_time, activated) "
            "SELECT domain, ?, account_id, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM sender_domains "
            "WHERE domain = ? AND account_id = ? RETURNING domain",
            (key.selector.lower(), key.algorithm, self.db.blob(sealed_private_key), key.public_record,
             int(key.managed), key.state, int(key.always), key.created, key.start, key.end, key.activated,
             key.domain.lower(), account_id))
        try:
            rows = await self.db.transaction([statement])
        except Conflict:
            raise Conflict(f"{key.domain} already has a DKIM key with selector {key.selector!r}") from None
        if not rows:
            raise NotFound(f"no domain {key.domain!r} for this account")

    async def dkim_key_rows(self, domain: str | None = None, *, account_id: str | None = None,
                            selector: str | None = None) -> list[StoredDkimKey]:
        """The keys that match every filter given, sealed, by domain and selector."""
        conditions, params = [], []
        for column, value in (("domain", domain), ("account_id", account_id), ("selector", selector)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value.lower() if column != "account_id" else value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self.db.query(
            f"SELECT {_KEY} FROM dkim_keys{where} ORDER BY domain, selector", params)  # noqa: S608
        return [_stored_key(row) for row in rows]

    async def update_dkim_key(self, domain: str, selector: str, *, state: str | None = None,
                              end: float | None = None, activated: float | None = None) -> None:
        """Change what is given of a key (None: left as it is); for rotation, which acts on whichever
        account owns the domain. NotFound if there is no such key."""
        changes = {column: value for column, value in
                   (("state", state), ("end_time", end), ("activated", activated)) if value is not None}
        if not changes:
            return
        assignments = ", ".join(f"{column} = ?" for column in changes)
        rows = await self.db.transaction([SQL(
            f"UPDATE dkim_keys SET {assignments} WHERE domain = ? AND selector = ? "  # noqa: S608
            "RETURNING domain", (*changes.values(), domain.lower(), selector.lower()))])
        if not rows:
            raise NotFound(f"no DKIM key {selector!r} for {domain!r}")

    async def delete_dkim_key(self, account_id: str, domain: str, selector: str) -> None:
        rows = await self.db.transaction([SQL(
            "DELETE FROM dkim_keys WHERE account_id = ? AND domain = ? AND selector = ? RETURNING domain",
            (account_id, domain.lower(), selector.lower()))])
        if not rows:
            raise NotFound(f"no DKIM key {selector!r} for {domain!r} in this account")
