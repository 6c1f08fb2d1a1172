"""APNs device registrations (the XAPPLEPUSHSERVICE extension's table), written once for every SQL back end.

Device tokens address a user's phone: they are vault-encrypted (the
associated data names the row) and found by a keyed hash.
"""

from __future__ import annotations

import json
import logging
import time

from pushproxy.store.base import ApnsDevice
from pushproxy.store.records import Row, device_from_row, token_aad, token_hash
from pushproxy.store.sql_base import SqlBase
from pushproxy.store.vault import VaultError

log = logging.getLogger("pushproxy.store")


class ApnsQueries(SqlBase):
    # --- APNs devices --------------------------------------------------------
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
        return await self.list_devices(account)

    async def list_devices(self, account: str | None = None) -> list[ApnsDevice]:
        # A NULL account selects every row (one static query).
        rows = await self._fetch(
            """SELECT * FROM apns_devices WHERE (CAST($1 AS TEXT) IS NULL OR account = $1)
               ORDER BY account, aps_account_id, token_hash""",
            account,
        )
        return self._devices(rows)

    def _devices(self, rows: list[Row]) -> list[ApnsDevice]:
        """Rows that decrypt; the others are skipped with one log line.

        One unreadable row (tampered, or written under another key, which
        the factory refuses at start) must not stop the pushes of the rest.
        """
        devices: list[ApnsDevice] = []
        for row in rows:
            try:
                devices.append(device_from_row(row, self._vault))
            except VaultError:
                pass
        if len(devices) < len(rows):
            log.warning("skipped %d APNs registration(s) whose device token does not decrypt", len(rows) - len(devices))
        return devices

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
        return await self._change_registrations(
            """DELETE FROM apns_devices
               WHERE token_hash = $1 AND (CAST($2 AS DOUBLE PRECISION) IS NULL OR last_registered < $2)
               RETURNING account""",
            token_hash(self._vault, device_token),
            registered_before,
        )

    async def expire_devices(self, not_registered_since: float) -> int:
        return await self._change_registrations(
            "DELETE FROM apns_devices WHERE last_registered < $1 RETURNING account", not_registered_since
        )
