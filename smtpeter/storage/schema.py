"""Versioned schema, created and migrated by the program itself.

Each migration is a list of DDL statements written once with ``{type}``
markers that each dialect fills in. Migrations only ever append: a released
migration is never edited.
"""

from __future__ import annotations

from smtpeter.storage.db import SQL, Database, StorageError

_TYPES = {
    "sqlite": {
        "blob": "BLOB",
        "time": "REAL",
        "bigint": "INTEGER",
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "current_xid": "0",
    },
    "postgresql": {
        "blob": "BYTEA",
        "time": "DOUBLE PRECISION",
        "bigint": "BIGINT",
        "serial_pk": "BIGSERIAL PRIMARY KEY",
        "current_xid": "(pg_current_xact_id()::text::bigint)",
    },
}

MIGRATIONS: list[list[str]] = [
    # 1: accounts and their secrets, sender domains, the queue, events.
    [
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created {time} NOT NULL
        )""",
        """CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            token_hash TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            created {time} NOT NULL,
            revoked {time}
        )""",
        """CREATE TABLE smtp_logins (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            options TEXT NOT NULL,
            created {time} NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE sender_domains (
            domain TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            approved INTEGER NOT NULL DEFAULT 0,
            validation_token TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{{}}',
            created {time} NOT NULL
        )""",
        "CREATE INDEX sender_domains_account ON sender_domains (account_id)",
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            envelope TEXT,
            mime {blob} NOT NULL,
            size {bigint} NOT NULL,
            options TEXT NOT NULL,
            tags TEXT NOT NULL,
            body TEXT,
            smtputf8 INTEGER NOT NULL DEFAULT 0,
            dsn_ret TEXT,
            dsn_envid TEXT,
            created {time} NOT NULL,
            expires {time} NOT NULL
        )""",
        """CREATE TABLE recipients (
            id TEXT PRIMARY KEY,
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            account_id TEXT NOT NULL,
            address TEXT NOT NULL,
            domain TEXT NOT NULL,
            orcpt TEXT,
            notify TEXT,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            -- When the recipient is next due; while a node holds a lease on it,
            -- the lease's expiry (so a crashed node's work comes back by itself).
            next_attempt {time} NOT NULL,
            lease_owner TEXT,
            delay_notified INTEGER NOT NULL DEFAULT 0,
            last_code INTEGER,
            last_status TEXT,
            last_description TEXT,
            last_state TEXT,
            created {time} NOT NULL,
            updated {time} NOT NULL
        )""",
        "CREATE INDEX recipients_due ON recipients (next_attempt) WHERE state = 'queued'",
        "CREATE INDEX recipients_message ON recipients (message_id)",
        """CREATE TABLE events (
            id {serial_pk},
            account_id TEXT NOT NULL,
            message_id TEXT,
            -- In lower case, for lookups; data holds the address as it was given.
            recipient TEXT,
            type TEXT NOT NULL,
            time {time} NOT NULL,
            -- UTC day number (time // 86400): the unit of SMTPeter's log files.
            day INTEGER NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_message ON events (message_id)",
        "CREATE INDEX events_account_time ON events (account_id, time)",
        "CREATE INDEX events_account_day ON events (account_id, day, type)",
        "CREATE INDEX events_account_recipient ON events (account_id, recipient, time)",
    ],
    # 2: the event feed: a reading order safe on both backends, and each consumer's position.
    [
        # The id of the transaction that wrote the event (0 on SQLite): the feed is
        # read in (xid, id) order (see Database.feed_horizon).
        "ALTER TABLE events ADD COLUMN xid {bigint} NOT NULL DEFAULT {current_xid}",
        "CREATE INDEX events_feed ON events (xid, id)",
        """CREATE TABLE feed_positions (
            consumer TEXT PRIMARY KEY,
            xid {bigint} NOT NULL,
            event_id {bigint} NOT NULL,
            updated {time} NOT NULL
        )""",
    ],
    # 3: claims that leave busy destinations out find the rest without reading their rows.
    # Without next_attempt, which every lease and retry rewrites: in a domain-ordered
    # index each such row would move within a page of its own.
    [
        "CREATE INDEX recipients_domain ON recipients (domain) WHERE state = 'queued'",
    ],
    # 4: hosted images (images: hosted), decoded, by message and position (storage/hosted.py).
    [
        """CREATE TABLE hosted_images (
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            data {blob} NOT NULL,
            size {bigint} NOT NULL,
            created {time} NOT NULL,
            PRIMARY KEY (message_id, position)
        )""",
    ],
    # 5: sender domains' settings, their last DNS check, and their DKIM keys (storage/domains.py).
    [
        # NULL bounces/tracking: bounces.DOMAIN and clicks.DOMAIN (rows written by an older node
        # during a rolling upgrade); rows already there get them written out here.
        "ALTER TABLE sender_domains ADD COLUMN bounces TEXT",
        "ALTER TABLE sender_domains ADD COLUMN tracking TEXT",
        "UPDATE sender_domains SET bounces = 'bounces.' || domain, tracking = 'clicks.' || domain",
        "ALTER TABLE sender_domains ADD COLUMN https INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE sender_domains ADD COLUMN dmarc_policy TEXT NOT NULL DEFAULT 'none'",
        "ALTER TABLE sender_domains ADD COLUMN dmarc_percentage INTEGER NOT NULL DEFAULT 100",
        # ISO dates (yyyy-mm-dd) of the DMARC ramp.
        "ALTER TABLE sender_domains ADD COLUMN dmarc_start TEXT",
        "ALTER TABLE sender_domains ADD COLUMN dmarc_end TEXT",
        # JSON lists: extra DMARC report addresses, extra mechanisms of the hosted SPF record.
        "ALTER TABLE sender_domains ADD COLUMN dmarc_addresses TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE sender_domains ADD COLUMN spf_mechanisms TEXT NOT NULL DEFAULT '[]'",
        # The last live DNS check: JSON {items, remarks, published_selectors}, and when.
        "ALTER TABLE sender_domains ADD COLUMN dns_status TEXT",
        "ALTER TABLE sender_domains ADD COLUMN dns_checked {time}",
        # For the keys' foreign key: a key's account is always its domain's.
        "CREATE UNIQUE INDEX sender_domains_owner ON sender_domains (domain, account_id)",
        """CREATE TABLE dkim_keys (
            domain TEXT NOT NULL,
            selector TEXT NOT NULL,
            account_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            -- Sealed (AES-256-GCM, smtpeter/domains/sealing.py): never in the clear here.
            private_key {blob} NOT NULL,
            public_record TEXT NOT NULL,
            managed INTEGER NOT NULL,
            state TEXT NOT NULL,
            always INTEGER NOT NULL DEFAULT 0,
            created {time} NOT NULL,
            start_time {time},
            end_time {time},
            activated {time},
            PRIMARY KEY (domain, selector),
            FOREIGN KEY (domain, account_id) REFERENCES sender_domains (domain, account_id) ON DELETE CASCADE
        )""",
        "CREATE INDEX dkim_keys_account ON dkim_keys (account_id)",
    ],
    # 6: webhooks, the calls made to them (one per event and hook) and each attempt (storage/webhooks.py).
    [
        """CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            type TEXT NOT NULL,
            url TEXT NOT NULL,
            -- pending (control of the URL not proven yet: gets nothing), active, disabled (410 Gone)
            state TEXT NOT NULL,
            -- how control was proven: network (inside webhooks.allow_networks), file, challenge
            proof TEXT,
            token TEXT NOT NULL,
            problem TEXT NOT NULL DEFAULT '',
            -- Sealed (AES-256-GCM, smtpeter/domains/sealing.py): never in the clear here.
            secret {blob} NOT NULL,
            old_secret {blob},
            old_secret_until {time},
            active_since {time},
            created {time} NOT NULL,
            updated {time} NOT NULL
        )""",
        "CREATE INDEX webhooks_account ON webhooks (account_id, state)",
        """CREATE TABLE webhook_calls (
            id TEXT PRIMARY KEY,
            webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            event_id {bigint} NOT NULL,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            -- When it is due; while a node holds a lease on it, the lease's end.
            next_attempt {time} NOT NULL,
            lease_owner TEXT,
            created {time} NOT NULL,
            updated {time} NOT NULL,
            UNIQUE (webhook_id, event_id)
        )""",
        "CREATE INDEX webhook_calls_due ON webhook_calls (webhook_id, next_attempt) WHERE state = 'pending'",
        "CREATE INDEX webhook_calls_next ON webhook_calls (next_attempt) WHERE state = 'pending'",
        "CREATE INDEX webhook_calls_finished ON webhook_calls (updated) WHERE state <> 'pending'",
        """CREATE TABLE webhook_attempts (
            id {serial_pk},
            call_id TEXT NOT NULL REFERENCES webhook_calls(id) ON DELETE CASCADE,
            webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            time {time} NOT NULL,
            status INTEGER,
            duration {time} NOT NULL,
            error TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX webhook_attempts_hook ON webhook_attempts (webhook_id, time)",
        "CREATE INDEX webhook_attempts_call ON webhook_attempts (call_id)",
    ],
    # 7: what mx.listen receives (bounces, auto-replies, complaints, DMARC reports), kept from
    # before the 250 until it is processed, and after as the raw MIME its events point to.
    [
        """CREATE TABLE inbound_messages (
            id TEXT PRIMARY KEY,
            received {time} NOT NULL,
            client TEXT NOT NULL,
            helo TEXT NOT NULL,
            tls INTEGER NOT NULL,
            mail_from TEXT NOT NULL,
            -- JSON: a list of objects with address, route (verp, report, postmaster), recipient_id
            recipients TEXT NOT NULL,
            mime {blob} NOT NULL,
            size INTEGER NOT NULL,
            -- new (to process, or leased until next_attempt), done, failed (kept, not retried)
            state TEXT NOT NULL,
            next_attempt {time} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            -- what it turned out to be: bounce, response, abuse, dmarc, undefined, postmaster
            kind TEXT,
            account_id TEXT,
            result TEXT,
            processed {time}
        )""",
        "CREATE INDEX inbound_due ON inbound_messages (next_attempt) WHERE state = 'new'",
        "CREATE INDEX inbound_account ON inbound_messages (account_id, received)",
    ],
    # 8: DMARC aggregate reports received for the accounts' sender domains (storage/dmarc.py).
    [
        """CREATE TABLE dmarc_reports (
            id {serial_pk},
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            received {time} NOT NULL,
            -- UTC day number of received: the DATE of /v1/dmarc and of the dmarc log file.
            day INTEGER NOT NULL,
            org_name TEXT NOT NULL,
            email TEXT NOT NULL,
            -- The reporter's domain (FROM) and the domain reported on (FOR), in lower case.
            reporter TEXT NOT NULL,
            report_id TEXT NOT NULL,
            begin_time {bigint} NOT NULL,
            end_time {bigint} NOT NULL,
            domain TEXT NOT NULL,
            sending_domains TEXT NOT NULL,
            messages {bigint} NOT NULL,
            failed_spf {bigint} NOT NULL,
            failed_dkim {bigint} NOT NULL,
            -- The report's XML exactly as it came (unpacked).
            xml {blob} NOT NULL,
            UNIQUE (account_id, reporter, report_id)
        )""",
        "CREATE INDEX dmarc_reports_day ON dmarc_reports (account_id, day, reporter, domain, id)",
    ],
    # 9: each account's suppression list, the hard failures its two-strikes rule counts, and a
    # revision per list that moves with every change (storage/suppressions.py).
    [
        """CREATE TABLE suppressions (
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            -- How it is looked up: the local part in lower case, the domain as an A-label.
            address_key TEXT NOT NULL,
            -- As given, the domain in lower case.
            address TEXT NOT NULL,
            reason TEXT NOT NULL,
            -- The message id of the event that added it, or who did.
            source TEXT NOT NULL,
            created {time} NOT NULL,
            expires {time},
            PRIMARY KEY (account_id, address_key)
        )""",
        "CREATE INDEX suppressions_expires ON suppressions (expires) WHERE expires IS NOT NULL",
        """CREATE TABLE suppression_strikes (
            account_id TEXT NOT NULL,
            address_key TEXT NOT NULL,
            message_id TEXT NOT NULL,
            time {time} NOT NULL,
            PRIMARY KEY (account_id, address_key, message_id)
        )""",
        "CREATE INDEX suppression_strikes_time ON suppression_strikes (time)",
        """CREATE TABLE suppression_revisions (
            account_id TEXT PRIMARY KEY,
            revision {bigint} NOT NULL
        )""",
    ],
    # 10: the dashboard's log-in sessions, and the event counts its charts draw (storage/dashboard.py).
    [
        """CREATE TABLE dashboard_sessions (
            -- SHA-256 of the cookie's secret: the secret itself is never stored.
            id_hash TEXT PRIMARY KEY,
            -- NULL for an operator's session.
            account_id TEXT REFERENCES accounts(id) ON DELETE CASCADE,
            admin INTEGER NOT NULL DEFAULT 0,
            -- What it logged in with (token:HASH, login:NAME, admin:NAME, admin-token): revoking
            -- that ends the session.
            credential TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created {time} NOT NULL,
            expires {time} NOT NULL
        )""",
        "CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires)",
        "CREATE INDEX dashboard_sessions_credential ON dashboard_sessions (credential)",
        """CREATE TABLE event_counts (
            account_id TEXT NOT NULL,
            minute {bigint} NOT NULL,
            series TEXT NOT NULL,
            bot INTEGER NOT NULL,
            count {bigint} NOT NULL,
            PRIMARY KEY (account_id, minute, series, bot)
        )""",
    ],
    # 11: bounces and failures counted by reason and receiving domain for the dashboard
    # (storage/dashboard.py): per minute for the last hour and day, per day for 30 days.
    [
        """CREATE TABLE bounce_counts (
            account_id TEXT NOT NULL,
            -- 60: a minute's row, 86400: a day's; start is the bucket's first second
            span INTEGER NOT NULL,
            start {bigint} NOT NULL,
            -- bounce: a report that came back; failure: refused or expired while we delivered
            kind TEXT NOT NULL,
            reason TEXT NOT NULL,
            domain TEXT NOT NULL,
            hard INTEGER NOT NULL,
            count {bigint} NOT NULL,
            PRIMARY KEY (account_id, span, start, kind, reason, domain, hard)
        )""",
    ],
    # 12: operators' logins to the dashboard, made with `smtpeter admin create` (storage/operator.py).
    [
        """CREATE TABLE admin_logins (
            name TEXT PRIMARY KEY,
            -- scrypt, as SMTP logins' (credentials.py): the password itself is never stored.
            password_hash TEXT NOT NULL,
            created {time} NOT NULL
        )""",
    ],
]

LATEST = len(MIGRATIONS)


def _ddl(dialect: str, statement: str) -> str:
    return statement.format(**_TYPES[dialect])


async def current_version(db: Database) -> int:
    await db.transaction([SQL("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")])
    rows = await db.query("SELECT MAX(version) FROM schema_version")
    return rows[0][0] or 0


async def migrate(db: Database) -> int:
    """Bring the schema up to date; return the version now in place."""
    version = await current_version(db)
    if version > LATEST:
        raise StorageError(
            f"database schema version {version} is newer than this program ({LATEST}); upgrade smtpeter"
        )
    for number in range(version + 1, LATEST + 1):
        statements = [SQL(_ddl(db.dialect, ddl)) for ddl in MIGRATIONS[number - 1]]
        if db.dialect == "postgresql":
            # Two processes starting at once must not both migrate.
            statements.insert(0, SQL("SELECT pg_advisory_xact_lock(7270631)"))
        statements.append(SQL("INSERT INTO schema_version (version) VALUES (?)", (number,)))
        try:
            await db.transaction(statements)
        except Exception:
            # Another process may have applied it meanwhile; that is fine.
            if await current_version(db) < number:
                raise
    return LATEST
