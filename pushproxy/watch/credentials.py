"""Where the watchers' upstream credentials come from (``watch.credentials``).

- ``vault``: the user's own login, captured from a successful client login,
  stored encrypted by the store (AES-GCM, bound to the account; the key lives
  in ``watch.vault_key_file``, never in the database).  Survives restarts.
- ``master``: a Dovecot master user logs in on behalf of every account
  (``user*master`` + master password, or SASL PLAIN with authzid=user).  No
  user password is kept anywhere.
- ``memory``: like vault, but only in this process's memory; after a restart a
  watcher resumes when the user next logs in through the proxy.

A login upstream refuses (AUTHENTICATIONFAILED) marks the credential failed:
the watcher stops and waits for the user's next successful login instead of
retrying a wrong password in a loop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pushproxy.config import Config, ConfigError
from pushproxy.store.base import Store, StoredCredential
from pushproxy.store.vault import VaultError
from pushproxy.watch.upstream_types import LoginCredentials

__all__ = [
    "CredentialProvider",
    "CredentialStatus",
    "MasterCredentials",
    "MasterLoginStyle",
    "MemoryCredentials",
    "VaultCredentials",
    "make_provider",
]

log = logging.getLogger(__name__)

CredentialStatus = Literal["ok", "failed", "missing"]
MasterLoginStyle = Literal["separator", "sasl"]


class CredentialProvider(ABC):
    """Gives the watcher of an account the credentials to log in with."""

    mode: str = "?"

    @abstractmethod
    async def get(self, account: str) -> LoginCredentials | None:
        """Credentials to use now; None when missing or failed (see :meth:`status`)."""

    @abstractmethod
    async def status(self, account: str) -> CredentialStatus: ...

    async def statuses(self, accounts: Sequence[str]) -> dict[str, CredentialStatus]:
        """:meth:`status` of many accounts (a batch of watcher starts; the vault reads them with one query)."""
        return {account: await self.status(account) for account in accounts}

    @abstractmethod
    async def remember(self, account: str, login: str, secret: str) -> bool:
        """A successful client login with an account that wants push.

        Returns True when something changed for the watcher (new or
        different credentials, or a failed credential that is good again).
        """

    @abstractmethod
    async def mark_failed(self, account: str) -> None:
        """Upstream refused these credentials."""

    @abstractmethod
    async def forget(self, account: str) -> None:
        """The account has no registrations left."""

    @property
    def needs_user_login(self) -> bool:
        """True when nothing can be watched before the user logged in once (vault, memory)."""
        return True


@dataclass(slots=True)
class _Secret:
    login: str
    secret: str
    failed: bool = False

    def __repr__(self) -> str:
        return f"_Secret(login={self.login!r}, failed={self.failed})"


class MemoryCredentials(CredentialProvider):
    """Captured credentials kept in process memory only."""

    mode = "memory"

    def __init__(self) -> None:
        self._secrets: dict[str, _Secret] = {}

    async def get(self, account: str) -> LoginCredentials | None:
        s = self._secrets.get(account)
        if s is None or s.failed:
            return None
        return LoginCredentials(s.login, s.secret)

    async def status(self, account: str) -> CredentialStatus:
        s = self._secrets.get(account)
        if s is None:
            return "missing"
        return "failed" if s.failed else "ok"

    async def remember(self, account: str, login: str, secret: str) -> bool:
        old = self._secrets.get(account)
        if old is not None and not old.failed and old.login == login and hmac.compare_digest(old.secret, secret):
            return False
        self._secrets[account] = _Secret(login, secret)
        return True

    async def mark_failed(self, account: str) -> None:
        s = self._secrets.get(account)
        if s is not None:
            s.failed = True

    async def forget(self, account: str) -> None:
        self._secrets.pop(account, None)


class VaultCredentials(CredentialProvider):
    """Captured credentials stored encrypted by the store.

    A keyed digest of the last stored (login, secret) per account is kept in
    memory so that the many logins of a mail client do not each cost a
    database read and decryption; the digest key is random per process.
    """

    mode = "vault"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._digest_key = os.urandom(32)
        self._known: dict[str, bytes] = {}  # account -> digest of the stored, non-stale credential

    def _digest(self, login: str, secret: str) -> bytes:
        return hmac.new(self._digest_key, login.encode() + b"\0" + secret.encode(), hashlib.sha256).digest()

    async def _load(self, account: str) -> StoredCredential | None:
        try:
            return await self._store.get_credential(account)
        except VaultError as exc:
            # Written with another key, or tampered with: unusable until the next login replaces it.
            log.warning("stored credential of %s cannot be decrypted (%s); waiting for the next login", account, exc)
            return None

    async def get(self, account: str) -> LoginCredentials | None:
        cred = await self._load(account)
        if cred is None or cred.stale:
            return None
        return LoginCredentials(cred.login, cred.secret)

    async def status(self, account: str) -> CredentialStatus:
        cred = await self._load(account)
        if cred is None:
            return "missing"
        return "failed" if cred.stale else "ok"

    async def statuses(self, accounts: Sequence[str]) -> dict[str, CredentialStatus]:
        stored = await self._store.get_credentials(accounts)
        return {
            account: "missing" if cred is None else "failed" if cred.stale else "ok"
            for account in accounts
            for cred in [stored.get(account)]
        }

    async def remember(self, account: str, login: str, secret: str) -> bool:
        digest = self._digest(login, secret)
        known = self._known.get(account)
        if known is not None and hmac.compare_digest(known, digest):
            return False
        cred = await self._load(account)
        if cred is not None and not cred.stale and cred.login == login and hmac.compare_digest(cred.secret, secret):
            self._known[account] = digest
            return False
        await self._store.put_credential(StoredCredential(account=account, login=login, secret=secret))
        self._known[account] = digest
        return True

    async def mark_failed(self, account: str) -> None:
        self._known.pop(account, None)
        await self._store.mark_credential_stale(account)

    async def forget(self, account: str) -> None:
        self._known.pop(account, None)
        await self._store.delete_credential(account)


class MasterCredentials(CredentialProvider):
    """Log in as each account with a master user's password; nothing per user is stored.

    ``style``: ``separator`` sends ``LOGIN "<user>*<master>" <password>``
    (Dovecot's ``auth_master_user_separator``); ``sasl`` sends AUTHENTICATE
    PLAIN with authzid=<user>, authcid=<master>.
    """

    mode = "master"

    def __init__(
        self,
        master_user: str,
        master_password: str,
        *,
        style: MasterLoginStyle = "separator",
        separator: str = "*",
    ) -> None:
        if not master_user or not master_password:
            raise ConfigError("watch.credentials: master needs watch.master_user and a master password")
        self._user = master_user
        self._password = master_password
        self._style = style
        self._separator = separator
        self._logins: dict[str, str] = {}  # account -> login spelling seen from the user
        self._failed: set[str] = set()

    @property
    def needs_user_login(self) -> bool:
        return False

    def _login_for(self, account: str) -> str:
        return self._logins.get(account, account)

    async def get(self, account: str) -> LoginCredentials | None:
        if account in self._failed:
            return None
        user = self._login_for(account)
        if self._style == "sasl":
            return LoginCredentials(self._user, self._password, mechanism="plain", authzid=user)
        return LoginCredentials(f"{user}{self._separator}{self._user}", self._password)

    async def status(self, account: str) -> CredentialStatus:
        return "failed" if account in self._failed else "ok"

    async def remember(self, account: str, login: str, secret: str) -> bool:
        changed = account in self._failed or self._logins.get(account) != login
        self._failed.discard(account)
        self._logins[account] = login
        return changed

    async def mark_failed(self, account: str) -> None:
        self._failed.add(account)

    async def forget(self, account: str) -> None:
        self._failed.discard(account)
        self._logins.pop(account, None)


def make_provider(config: Config, store: Store, *, master_style: MasterLoginStyle = "separator") -> CredentialProvider:
    mode = config.watch.credentials
    if mode == "vault":
        return VaultCredentials(store)
    if mode == "memory":
        return MemoryCredentials()
    password = config.master_password()
    if config.watch.master_user is None or password is None:
        raise ConfigError(
            "watch.credentials: master needs watch.master_user and watch.master_password_file (or master_password)"
        )
    return MasterCredentials(config.watch.master_user, password, style=master_style)
