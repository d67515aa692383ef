"""Accounts and what belongs to them: API tokens, SMTP logins (sender domains: domains.py)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.threads import deferToThread

from smtpeter import credentials
from smtpeter.envelope import MessageOptions
from smtpeter.ids import new_id, new_secret
from smtpeter.storage.dashboard import TOKEN_PREFIX
from smtpeter.storage.db import SQL, Conflict, NotFound, Tables
from smtpeter.storage.models import Account, SMTPLogin


class Accounts(Tables):
    """Accounts, their API tokens and SMTP logins."""

    # -- accounts -------------------------------------------------------------

    async def create_account(self, name: str) -> Account:
        account = Account(id=new_id(), name=name, created=self.now())
        try:
            await self.db.transaction(
                [SQL("INSERT INTO accounts (id, name, created) VALUES (?, ?, ?)",
                     (account.id, account.name, account.created))]
            )
        except Conflict:
            raise Conflict(f"an account named {name!r} already exists") from None
        return account

    async def account(self, name_or_id: str) -> Account:
        rows = await self.db.query(
            "SELECT id, name, created FROM accounts WHERE name = ? OR id = ?", (name_or_id, name_or_id)
        )
        if not rows:
            raise NotFound(f"no account {name_or_id!r}")
        return Account(*rows[0])

    async def accounts(self) -> list[Account]:
        rows = await self.db.query("SELECT id, name, created FROM accounts ORDER BY name")
        return [Account(*row) for row in rows]

    # -- API tokens -----------------------------------------------------------

    async def create_api_token(self, account_id: str, description: str = "") -> tuple[str, str]:
        """Return (token id, token); only the token's hash is stored."""
        token_id, token = new_id(), new_secret(32)
        await self.db.transaction(
            [SQL("INSERT INTO api_tokens (id, account_id, token_hash, description, created) "
                 "VALUES (?, ?, ?, ?, ?)",
                 (token_id, account_id, credentials.hash_token(token), description, self.now()))]
        )
        return token_id, token

    async def api_tokens(self, account_id: str) -> list[dict[str, Any]]:
        rows = await self.db.query(
            "SELECT id, description, created, revoked FROM api_tokens WHERE account_id = ? ORDER BY created",
            (account_id,))
        return [{"id": r[0], "description": r[1], "created": r[2], "revoked": r[3]} for r in rows]

    async def revoke_api_token(self, account_id: str, token_id: str) -> None:
        rows = await self.db.transaction([
            # A dashboard session logged in with the token ends with it.
            SQL("DELETE FROM dashboard_sessions WHERE credential = ? || "
                "(SELECT token_hash FROM api_tokens WHERE id = ? AND account_id = ?)",
                (TOKEN_PREFIX, token_id, account_id)),
            SQL("UPDATE api_tokens SET revoked = ? WHERE id = ? AND account_id = ? AND revoked IS NULL "
                "RETURNING id", (self.now(), token_id, account_id))])
        if not rows:
            raise NotFound(f"no active token {token_id!r} for this account")

    async def account_for_token(self, token: str) -> str | None:
        rows = await self.db.query(
            "SELECT account_id FROM api_tokens WHERE token_hash = ? AND revoked IS NULL",
            (credentials.hash_token(token),),
        )
        return rows[0][0] if rows else None

    # -- SMTP logins ----------------------------------------------------------

    async def create_smtp_login(
        self, account_id: str, username: str, options: MessageOptions | None = None
    ) -> str:
        """Create a login and return its generated password (shown once, stored hashed)."""
        password = new_secret(24)
        password_hash = await deferToThread(credentials.hash_password, password)
        try:
            await self.db.transaction(
                [SQL("INSERT INTO smtp_logins (id, account_id, username, password_hash, options, created) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (new_id(), account_id, username, password_hash,
                      json.dumps((options or MessageOptions()).as_dict()), self.now()))]
            )
        except Conflict:
            raise Conflict(f"the SMTP username {username!r} is taken") from None
        return password

    async def smtp_logins(self, account_id: str) -> list[tuple[SMTPLogin, float]]:
        """The account's logins, each with when it was made, by username."""
        rows = await self.db.query(
            "SELECT id, account_id, username, password_hash, options, disabled, created "
            "FROM smtp_logins WHERE account_id = ? ORDER BY username", (account_id,))
        return [(SMTPLogin(r[0], r[1], r[2], r[3], MessageOptions(**json.loads(r[4])), bool(r[5])), r[6])
                for r in rows]

    async def smtp_login(self, username: str) -> SMTPLogin | None:
        rows = await self.db.query(
            "SELECT id, account_id, username, password_hash, options, disabled "
            "FROM smtp_logins WHERE username = ?",
            (username,),
        )
        if not rows:
            return None
        row = rows[0]
        return SMTPLogin(row[0], row[1], row[2], row[3], MessageOptions(**json.loads(row[4])), bool(row[5]))
