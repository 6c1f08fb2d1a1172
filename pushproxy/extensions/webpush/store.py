"""Web Push subscriptions and VAPID key metadata: the records, and the queries of their tables (every SQL back end).

Push endpoints are capability URLs and auth secrets are keys: both are
vault-encrypted, the associated data naming the row.  The tables and their
migrations are :data:`pushproxy.extensions.webpush.schema.WEBPUSH`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pushproxy.store.records import Row, record_from_row
from pushproxy.store.sql_base import Queries
from pushproxy.store.vault import Vault

__all__ = ["VapidKey", "WebPushQueries", "WebPushSubscription"]


@dataclass(slots=True)
class WebPushSubscription:
    """One WEBPUSH subscription. Key: (account, sub_id)."""

    account: str
    sub_id: str
    endpoint: str
    p256dh: str  # base64url, uncompressed P-256 point
    auth: str  # base64url, 16 bytes; encrypted at rest
    vapid_key_id: str  # which VAPID key signed / will sign for it
    active: bool = False
    ack_token_hash: bytes | None = None  # sha256 of the pending verification token
    ack_expires: float | None = None  # unix time: inactive subscriptions expire then
    silenced_until: float | None = None  # unix time
    silenced_session: str | None = None  # silenced until this proxy session ends
    want_changes: bool = False  # also expunges / flag changes, not only new mail
    created: float = 0.0
    updated: float = 0.0
    last_success: float | None = None
    failures: int = 0


@dataclass(slots=True)
class VapidKey:
    key_id: str
    public_key: str  # base64url uncompressed point (87 chars, starts with "B")
    private_key_path: str  # PEM file, mode 0600; never the key itself
    created: float
    current: bool


# Keep these exactly as they are: changing them makes every stored secret unreadable.
def auth_aad(account: str, sub_id: str) -> bytes:
    return b"webpush-auth\0" + account.encode() + b"\0" + sub_id.encode()


def endpoint_aad(account: str, sub_id: str) -> bytes:
    return b"webpush-endpoint\0" + account.encode() + b"\0" + sub_id.encode()


def subscription_from_row(row: Row, vault: Vault) -> WebPushSubscription:
    """Raises VaultError when the secrets cannot be decrypted (wrong key, moved row)."""
    account, sub_id = row["account"], row["sub_id"]
    return record_from_row(
        WebPushSubscription,
        row,
        endpoint=vault.decrypt(bytes(row["endpoint"]), endpoint_aad(account, sub_id)).decode(),
        auth=vault.decrypt(bytes(row["auth"]), auth_aad(account, sub_id)).decode(),
    )


def vapid_key_from_row(row: Row) -> VapidKey:
    return record_from_row(VapidKey, row)


# Advisory lock key serialising VAPID key changes across nodes (spells "pushvapi").
_VAPID_LOCK_KEY = 0x7075736876617069


class WebPushQueries(Queries):
    """The ``webpush_subscriptions`` and ``vapid_keys`` tables: ``store.queries(WebPushQueries)``."""

    # --- subscriptions -------------------------------------------------------
    async def put_subscription(self, sub: WebPushSubscription) -> None:
        now = time.time()
        endpoint = self._vault.encrypt(sub.endpoint.encode(), endpoint_aad(sub.account, sub.sub_id))
        auth = self._vault.encrypt(sub.auth.encode(), auth_aad(sub.account, sub.sub_id))
        async with self._in_call_order(("subscription", sub.account, sub.sub_id)):
            await self._change_registrations(
                """INSERT INTO webpush_subscriptions (account, sub_id, endpoint, p256dh, auth, vapid_key_id,
                       active, ack_token_hash, ack_expires, silenced_until, silenced_session, want_changes,
                       created, updated, last_success, failures)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                   ON CONFLICT (account, sub_id) DO UPDATE SET
                       endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth,
                       vapid_key_id = excluded.vapid_key_id, active = excluded.active,
                       ack_token_hash = excluded.ack_token_hash, ack_expires = excluded.ack_expires,
                       silenced_until = excluded.silenced_until, silenced_session = excluded.silenced_session,
                       want_changes = excluded.want_changes,
                       -- a replacement that does not say when it was created keeps the original time
                       created = CASE WHEN CAST($17 AS BOOLEAN) THEN excluded.created
                                      ELSE webpush_subscriptions.created END,
                       updated = excluded.updated, last_success = excluded.last_success,
                       failures = excluded.failures""",
                sub.account,
                sub.sub_id,
                endpoint,
                sub.p256dh,
                auth,
                sub.vapid_key_id,
                bool(sub.active),
                sub.ack_token_hash,
                sub.ack_expires,
                sub.silenced_until,
                sub.silenced_session,
                bool(sub.want_changes),
                sub.created or now,
                sub.updated or now,
                sub.last_success,
                sub.failures,
                bool(sub.created),
                account=sub.account,
            )

    async def get_subscription(self, account: str, sub_id: str) -> WebPushSubscription | None:
        row = await self._fetchone(
            "SELECT * FROM webpush_subscriptions WHERE account = $1 AND sub_id = $2", account, sub_id
        )
        return None if row is None else subscription_from_row(row, self._vault)

    async def subscriptions_for_account(self, account: str) -> list[WebPushSubscription]:
        """The account's subscriptions; from memory when the store is away (``pushproxy.store.regview``)."""
        return await self._registrations.get("webpush subscriptions", account, lambda: self.list_subscriptions(account))

    async def subscriptions_of_accounts(self, accounts: Sequence[str]) -> dict[str, list[WebPushSubscription]]:
        """:meth:`subscriptions_for_account` of many accounts, with one query (a lease batch, the start)."""
        return await self._registrations.get_many("webpush subscriptions", accounts, self._list_subscriptions_of)

    async def _list_subscriptions_of(self, accounts: list[str]) -> dict[str, list[WebPushSubscription]]:
        order = "account, created, sub_id"
        return await self._listing_of(
            "webpush_subscriptions", order, accounts, subscription_from_row, "Web Push subscription(s)"
        )

    async def list_subscriptions(self, account: str | None = None) -> list[WebPushSubscription]:
        order = "account, created, sub_id"
        return await self._listing(
            "webpush_subscriptions", order, account, subscription_from_row, "Web Push subscription(s)"
        )

    async def delete_subscription(self, account: str, sub_id: str) -> bool:
        count = await self._change_registrations(
            "DELETE FROM webpush_subscriptions WHERE account = $1 AND sub_id = $2", account, sub_id, account=account
        )
        return count > 0

    async def count_subscriptions(self, account: str) -> int:
        row = await self._fetchone("SELECT count(*) AS n FROM webpush_subscriptions WHERE account = $1", account)
        return int(row["n"]) if row else 0

    async def find_subscription_by_ack(self, account: str, token_hash: bytes) -> WebPushSubscription | None:
        row = await self._fetchone(
            "SELECT * FROM webpush_subscriptions WHERE account = $1 AND ack_token_hash = $2 LIMIT 1",
            account,
            token_hash,
        )
        return None if row is None else subscription_from_row(row, self._vault)

    async def expire_inactive_subscriptions(self, now: float, limit: int) -> list[tuple[str, str]]:
        """Delete at most ``limit`` subscriptions never acknowledged by ``ack_expires``; their (account, id).

        One statement, nothing decrypted: the condition is checked again as the
        rows are deleted, so one acknowledged or sent again meanwhile stays.
        What is left over waits for the next batch (the housekeeping's).
        """
        async with self._backend.write() as conn:
            rows = await conn.fetch(
                """DELETE FROM webpush_subscriptions
                   WHERE NOT active AND ack_expires IS NOT NULL AND ack_expires <= $1
                     AND (account, sub_id) IN (
                         SELECT account, sub_id FROM webpush_subscriptions
                         WHERE NOT active AND ack_expires IS NOT NULL AND ack_expires <= $1
                         ORDER BY ack_expires LIMIT $2)
                   RETURNING account, sub_id""",
                now,
                limit,
            )
            gone = [(r["account"], r["sub_id"]) for r in rows]
            await self._notify(conn, {account for account, _ in gone})
        self._registrations_changed(sorted({account for account, _ in gone}))
        return gone

    async def count_by_state(self, now: float, instance_id: str) -> dict[str, int]:
        """The gauge's census (``WebPushProcess.silence_remaining``'s rule), counted by the database.

        Expired unacknowledged ones are not counted (gone for the client);
        nothing is read or decrypted.
        """
        prefix = instance_id + ":"
        row = await self._fetchone(
            """SELECT COUNT(*) AS total,
                   COALESCE(SUM(CASE WHEN NOT active THEN 1 ELSE 0 END), 0) AS inactive,
                   COALESCE(SUM(CASE WHEN active AND (substr(silenced_session, 1, $3) = $2 OR silenced_until > $1)
                                     THEN 1 ELSE 0 END), 0) AS silenced
               FROM webpush_subscriptions
               WHERE active OR ack_expires IS NULL OR ack_expires > $1""",
            now,
            prefix,
            len(prefix),
        )
        if row is None:
            return {"inactive": 0, "active": 0, "silenced": 0}
        inactive, silenced = int(row["inactive"]), int(row["silenced"])
        return {"inactive": inactive, "active": int(row["total"]) - inactive - silenced, "silenced": silenced}

    async def clear_session_silences(self, session_id: str) -> int:
        return await self._modify(
            "UPDATE webpush_subscriptions SET silenced_session = NULL WHERE silenced_session = $1", session_id
        )

    # --- VAPID key metadata -----------------------------------------------------
    async def vapid_keys(self) -> list[VapidKey]:
        rows = await self._fetch("SELECT * FROM vapid_keys ORDER BY created, key_id")
        return [vapid_key_from_row(r) for r in rows]

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        """Insert (or update by key_id).  ``key.current`` is ignored: ``make_current`` decides.

        The first key always becomes current, so there is exactly one current
        key as soon as there is any.  Nodes changing keys at once are
        serialised (otherwise both could find "no current key" and one would
        fail on the unique index).
        """
        async with self._backend.write() as conn:
            if self.dialect.xact_lock is not None:
                await conn.execute(self.dialect.xact_lock, _VAPID_LOCK_KEY)
            if make_current:
                await conn.execute("UPDATE vapid_keys SET current = FALSE WHERE current AND key_id <> $1", key.key_id)
                current = True
            else:
                other = await conn.fetch("SELECT key_id FROM vapid_keys WHERE current AND key_id <> $1", key.key_id)
                current = not other
            await conn.execute(
                """INSERT INTO vapid_keys (key_id, public_key, private_key_path, created, current)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key,
                       private_key_path = excluded.private_key_path, created = excluded.created,
                       current = excluded.current""",
                key.key_id,
                key.public_key,
                key.private_key_path,
                key.created or time.time(),
                current,
            )
