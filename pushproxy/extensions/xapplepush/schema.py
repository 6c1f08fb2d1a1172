"""XAPPLEPUSHSERVICE's tables: APNs device registrations, numbered migrations of its own part."""

from __future__ import annotations

from pushproxy.extensions.xapplepush.store import token_aad
from pushproxy.store.dialect import Dialect
from pushproxy.store.schema import SchemaPart, SqlConn
from pushproxy.store.vault import Vault

__all__ = ["XAPPLEPUSH"]


async def _encrypt_device_tokens(conn: SqlConn, dialect: Dialect, vault: Vault) -> None:
    """Copy every registration into the new table with its token encrypted and keyed-hashed."""
    rows = await conn.fetch("SELECT * FROM apns_devices")
    for row in rows:
        token = str(row["device_token"]).lower()
        await conn.execute(
            # The f-string only inserts the dialect's JSON placeholder, no input.
            f"""INSERT INTO apns_devices_v2 (account, aps_account_id, token_hash, device_token, subtopic,
                    version, mailboxes, first_registered, last_registered)
                VALUES ($1, $2, $3, $4, $5, $6, {dialect.json_param(7)}, $8, $9)
                ON CONFLICT DO NOTHING""",  # noqa: S608
            row["account"],
            row["aps_account_id"],
            vault.keyed_hash(b"apns-token", token.encode()),
            vault.encrypt(token.encode(), token_aad(row["account"], row["aps_account_id"])),
            row["subtopic"],
            row["version"],
            row["mailboxes"],
            row["first_registered"],
            row["last_registered"],
        )


XAPPLEPUSH = SchemaPart(
    "xapplepush",
    (
        # 1: device registrations, token in clear (single-version schema)
        (
            """CREATE TABLE apns_devices (
                account TEXT NOT NULL,
                aps_account_id TEXT NOT NULL,
                device_token TEXT NOT NULL,
                subtopic TEXT NOT NULL,
                version INTEGER NOT NULL,
                mailboxes {json} NOT NULL,          -- JSON list of mailbox names
                first_registered {real} NOT NULL,
                last_registered {real} NOT NULL,
                PRIMARY KEY (account, aps_account_id, device_token)
            )""",
            "CREATE INDEX apns_devices_by_token ON apns_devices (device_token)",
            "CREATE INDEX apns_devices_by_last_registered ON apns_devices (last_registered)",
        ),
        # 2: device tokens encrypted at rest; a keyed hash (vault key) keeps them unique and searchable
        (
            """CREATE TABLE apns_devices_v2 (
                account TEXT NOT NULL,
                aps_account_id TEXT NOT NULL,
                token_hash {blob} NOT NULL,         -- HMAC of the token under a key derived from the vault key
                device_token {blob} NOT NULL,       -- vault-encrypted, aad names account and aps_account_id
                subtopic TEXT NOT NULL,
                version INTEGER NOT NULL,
                mailboxes {json} NOT NULL,
                first_registered {real} NOT NULL,
                last_registered {real} NOT NULL,
                PRIMARY KEY (account, aps_account_id, token_hash)
            )""",
            _encrypt_device_tokens,
            "DROP TABLE apns_devices",
            "ALTER TABLE apns_devices_v2 RENAME TO apns_devices",
            "CREATE INDEX apns_devices_by_token_hash ON apns_devices (token_hash)",
            "CREATE INDEX apns_devices_by_last_registered ON apns_devices (last_registered)",
        ),
    ),
    legacy_version=1,
    registered_accounts="SELECT account FROM apns_devices",
)
