"""APNs device registrations: the record, and the queries of the ``apns_devices`` table (every SQL back end).

Device tokens address a user's phone: they are vault-encrypted (the
associated data names the row) and found by a keyed hash.  The table and its
migrations are :data:`pushproxy.extensions.xapplepush.schema.XAPPLEPUSH`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pushproxy.store.records import Row, record_from_row
from pushproxy.store.sql_base import Queries
from pushproxy.store.vault import Vault

__all__ = ["ApnsDevice", "ApnsQueries", "device_from_row", "token_aad", "token_hash"]


@dataclass(slots=True)
class ApnsDevice:
    """One iOS Mail registration. Key: (account, aps_account_id, device_token)."""

    account: str  # normalised login
    aps_account_id: str
    device_token: str  # hex, lower case
    subtopic: str = "com.apple.mobilemail"
    version: int = 2
    mailboxes: list[str] = field(default_factory=lambda: ["INBOX"])
    first_registered: float = 0.0  # unix time
    last_registered: float = 0.0  # unix time


# Keep these exactly as they are: changing them makes every stored token unreadable.
def token_aad(account: str, aps_account_id: str) -> bytes:
    return b"apns-token\0" + account.encode() + b"\0" + aps_account_id.encode()


def token_hash(vault: Vault, device_token: str) -> bytes:
    """The keyed hash that identifies a device token in the database (lower-case hex in, 32 bytes out)."""
    return vault.keyed_hash(b"apns-token", device_token.lower().encode())


def device_from_row(row: Row, vault: Vault) -> ApnsDevice:
    """Raises VaultError when the token cannot be decrypted."""
    account, aps_account_id = row["account"], row["aps_account_id"]
    token = vault.decrypt(bytes(row["device_token"]), token_aad(account, aps_account_id)).decode()
    mailboxes = row["mailboxes"]
    if isinstance(mailboxes, str | bytes):  # JSON text (SQLite, asyncpg's default jsonb codec)
        mailboxes = json.loads(mailboxes)
    return record_from_row(ApnsDevice, row, device_token=token, mailboxes=list(mailboxes))


class ApnsQueries(Queries):
    """The ``apns_devices`` table: ``store.queries(ApnsQueries)``."""

    async def upsert_device(self, device: ApnsDevice) -> ApnsDevice:
        last = device.last_registered or time.time()
        first = device.first_registered or last
        token = device.device_token.lower()
        digest = token_hash(self._vault, token)
        secret = self._vault.encrypt(token.encode(), token_aad(device.account, device.aps_account_id))
        async with self._in_call_order(("device", device.account, device.aps_account_id, digest)):
            async with self._backend.write() as conn:
                (row,) = await conn.fetch(
                    # The f-string only inserts the dialect's JSON placeholder, no input.
                    f"""INSERT INTO apns_devices (account, aps_account_id, token_hash, device_token, subtopic,
                            version, mailboxes, first_registered, last_registered)
                        VALUES ($1, $2, $3, $4, $5, $6, {self.dialect.json_param(7)}, $8, $9)
                        ON CONFLICT (account, aps_account_id, token_hash) DO UPDATE SET
                            subtopic = excluded.subtopic,
                            version = excluded.version,
                            mailboxes = excluded.mailboxes,
                            last_registered = excluded.last_registered
                        RETURNING *""",  # noqa: S608
                    device.account,
                    device.aps_account_id,
                    digest,
                    secret,
                    device.subtopic,
                    device.version,
                    json.dumps(list(device.mailboxes)),
                    first,
                    last,
                )
                await self._notify(conn, [device.account])
        self._registrations_changed([device.account])
        return device_from_row(row, self._vault)

    async def devices_for_account(self, account: str) -> list[ApnsDevice]:
        """The account's devices; from memory when the store is away (``pushproxy.store.regview``)."""
        return await self._registrations.get("apns devices", account, lambda: self.list_devices(account))

    async def devices_of_accounts(self, accounts: Sequence[str]) -> dict[str, list[ApnsDevice]]:
        """:meth:`devices_for_account` of many accounts, with one query (a lease batch, the start)."""
        return await self._registrations.get_many("apns devices", accounts, self._list_devices_of)

    async def _list_devices_of(self, accounts: list[str]) -> dict[str, list[ApnsDevice]]:
        order = "account, aps_account_id, token_hash"
        return await self._listing_of("apns_devices", order, accounts, device_from_row, "APNs registration(s)")

    async def list_devices(self, account: str | None = None) -> list[ApnsDevice]:
        order = "account, aps_account_id, token_hash"
        return await self._listing("apns_devices", order, account, device_from_row, "APNs registration(s)")

    async def remove_device(self, account: str, aps_account_id: str | None, device_token: str) -> int:
        return await self._change_registrations(
            """DELETE FROM apns_devices
               WHERE account = $1 AND (CAST($2 AS TEXT) IS NULL OR aps_account_id = $2) AND token_hash = $3""",
            account,
            aps_account_id,
            token_hash(self._vault, device_token),
            account=account,
        )

    async def remove_device_token(self, device_token: str, registered_before: float | None = None) -> int:
        """APNs says the token is gone: every account's registration of it, unless registered again since."""
        return await self._forget_token("apns_devices", token_hash(self._vault, device_token), registered_before)

    async def count_devices(self) -> int:
        """How many registrations there are (nothing decrypted: the gauge's census, once a minute)."""
        return await self._count("apns_devices")

    async def expire_devices(self, not_registered_since: float, limit: int) -> int:
        """Delete at most ``limit`` (the oldest) of the registrations not renewed since then; how many."""
        return await self._expire("apns_devices", "account, aps_account_id, token_hash", not_registered_since, limit)
