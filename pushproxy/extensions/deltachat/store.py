"""Delta Chat device tokens: the record, and the queries of the ``deltachat_tokens`` table (every SQL back end).

A token is what Delta Chat sets as ``/private/devicetoken``: the device's
APNs / FCM / Web Push / UBports token, padded and OpenPGP-encrypted to the
notification gateway (``openpgp:...``).  Only the gateway can read it, but it
still addresses a user's phone: it is vault-encrypted (the associated data
names the account) and found by a keyed hash.  The table and its migrations
are :data:`pushproxy.extensions.deltachat.schema.DELTACHAT`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pushproxy.store.records import Row, record_from_row
from pushproxy.store.sql_base import Queries
from pushproxy.store.vault import Vault

__all__ = ["DeltaChatQueries", "DeltaChatToken", "token_aad", "token_hash"]


@dataclass(frozen=True, slots=True)
class DeltaChatToken:
    """One device's token for one account. Key: (account, token)."""

    account: str  # normalised login
    token: str = ""
    first_registered: float = 0.0  # unix time
    last_registered: float = 0.0  # unix time; set again by the device: renewed
    token_id: str = ""  # hex prefix of the keyed hash: what logs and the CLI show

    def __repr__(self) -> str:  # never the token
        return f"DeltaChatToken({self.account!r}, {self.token_id})"


# Keep these exactly as they are: changing them makes every stored token unreadable.
def token_aad(account: str) -> bytes:
    return b"deltachat-token\0" + account.encode()


def token_hash(vault: Vault, token: str) -> bytes:
    """The keyed hash that identifies a token in the database (32 bytes)."""
    return vault.keyed_hash(b"deltachat-token", token.encode())


def token_id(digest: bytes) -> str:
    return digest[:6].hex()


def _record(row: Row, vault: Vault) -> DeltaChatToken:
    """Raises VaultError when the token cannot be decrypted."""
    token = vault.decrypt(bytes(row["token"]), token_aad(row["account"])).decode()
    return record_from_row(DeltaChatToken, row, token=token, token_id=token_id(bytes(row["token_hash"])))


class DeltaChatQueries(Queries):
    """The ``deltachat_tokens`` table: ``store.queries(DeltaChatQueries)``."""

    async def set_token(self, account: str, token: str, now: float | None = None) -> DeltaChatToken:
        """Add the token, or renew it (its expiry starts again)."""
        now = now or time.time()
        digest = token_hash(self._vault, token)
        secret = self._vault.encrypt(token.encode(), token_aad(account))
        async with self._in_call_order(("deltachat", account, digest)):
            async with self._backend.write() as conn:
                (row,) = await conn.fetch(
                    """INSERT INTO deltachat_tokens (account, token_hash, token, first_registered, last_registered)
                       VALUES ($1, $2, $3, $4, $4)
                       ON CONFLICT (account, token_hash) DO UPDATE SET last_registered = excluded.last_registered
                       RETURNING *""",
                    account,
                    digest,
                    secret,
                    now,
                )
                await self._notify(conn, [account])
        self._registrations_changed([account])
        return _record(row, self._vault)

    async def list_tokens(self, account: str | None = None) -> list[DeltaChatToken]:
        """The account's tokens (every account's with None), least recently set first."""
        order = "account, last_registered, token_hash"
        return await self._listing("deltachat_tokens", order, account, _record, "Delta Chat token(s)")

    async def tokens_for_account(self, account: str) -> list[DeltaChatToken]:
        """The account's tokens; from memory when the store is away (``pushproxy.store.regview``)."""
        return await self._registrations.get("deltachat tokens", account, lambda: self.list_tokens(account))

    async def tokens_of_accounts(self, accounts: Sequence[str]) -> dict[str, list[DeltaChatToken]]:
        """:meth:`tokens_for_account` of many accounts (each least recently set first), with one query."""
        return await self._registrations.get_many("deltachat tokens", accounts, self._list_tokens_of)

    async def _list_tokens_of(self, accounts: Sequence[str]) -> dict[str, list[DeltaChatToken]]:
        order = "account, last_registered, token_hash"
        return await self._listing_of("deltachat_tokens", order, accounts, _record, "Delta Chat token(s)")

    async def remove_token(self, account: str, token: str) -> int:
        return await self._change_registrations(
            "DELETE FROM deltachat_tokens WHERE account = $1 AND token_hash = $2",
            account,
            token_hash(self._vault, token),
            account=account,
        )

    async def remove_token_everywhere(self, token: str, registered_before: float | None = None) -> int:
        """The gateway says the token is gone (410): every account's row of it, unless set again since."""
        return await self._forget_token("deltachat_tokens", token_hash(self._vault, token), registered_before)

    async def remove_account(self, account: str) -> int:
        return await self._change_registrations(
            "DELETE FROM deltachat_tokens WHERE account = $1", account, account=account
        )

    async def expire_tokens(self, not_registered_since: float, limit: int) -> int:
        """Delete at most ``limit`` (the oldest) of the tokens not set again since then; how many."""
        return await self._expire("deltachat_tokens", "account, token_hash", not_registered_since, limit)

    async def count_tokens(self) -> int:
        """How many tokens there are (nothing decrypted: the gauge's census)."""
        return await self._count("deltachat_tokens")
