"""SMTP AUTH through Twisted cred: a checker over our hashed logins, and a realm."""

from __future__ import annotations

from typing import Any

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from zope.interface import Interface, implementer

from smtpeter import credentials
from smtpeter.storage import Storage

# Verified by hashing the offered password against this, so a missing user
# costs as much time as a wrong password and usernames cannot be probed.
_DUMMY_HASH = credentials.hash_password("not a password")


class ISMTPLogin(Interface):
    """An authenticated SMTP login (avatar: smtpeter.storage.models.SMTPLogin)."""


@implementer(ICredentialsChecker)
class LoginChecker:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def requestAvatarId(self, offered: IUsernamePassword) -> Deferred:
        return Deferred.fromCoroutine(self._check(offered))

    async def _check(self, offered: IUsernamePassword) -> str:
        try:
            username = offered.username.decode("utf-8")
            password = offered.password.decode("utf-8")
        except UnicodeDecodeError:
            raise error.UnauthorizedLogin() from None
        login = await self.storage.smtp_login(username)
        stored = login.password_hash if login and not login.disabled else _DUMMY_HASH
        valid = await deferToThread(credentials.verify_password, password, stored)
        if not valid or login is None or login.disabled:
            raise error.UnauthorizedLogin()
        return username


@implementer(IRealm)
class LoginRealm:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Deferred:
        if ISMTPLogin not in interfaces:
            raise NotImplementedError("only ISMTPLogin avatars")

        async def avatar() -> tuple:
            login = await self.storage.smtp_login(avatar_id)
            if login is None:
                raise error.UnauthorizedLogin()
            return ISMTPLogin, login, lambda: None

        return Deferred.fromCoroutine(avatar())


def login_portal(storage: Storage) -> Portal:
    return Portal(LoginRealm(storage), [LoginChecker(storage)])
