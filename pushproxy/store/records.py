"""Rows to records, shared by every back end (SQLite rows and asyncpg records both index by column name).

The associated data of each encrypted column binds a secret to its row: a blob
copied to another account or subscription fails to decrypt.  Keep these exactly
as they are: changing them makes every stored secret unreadable.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from pushproxy.store.base import ApnsDevice, MailboxState, StoredCredential, VapidKey, WebPushSubscription
from pushproxy.store.vault import Vault


class Row(Protocol):
    """A result row (sqlite3.Row, asyncpg.Record): indexable by column name."""

    def __getitem__(self, key: Any, /) -> Any: ...


def credential_aad(account: str) -> bytes:
    return b"credential\0" + account.encode()


def auth_aad(account: str, sub_id: str) -> bytes:
    return b"webpush-auth\0" + account.encode() + b"\0" + sub_id.encode()


def endpoint_aad(account: str, sub_id: str) -> bytes:
    return b"webpush-endpoint\0" + account.encode() + b"\0" + sub_id.encode()


def token_aad(account: str, aps_account_id: str) -> bytes:
    return b"apns-token\0" + account.encode() + b"\0" + aps_account_id.encode()


def token_hash(vault: Vault, device_token: str) -> bytes:
    """The keyed hash that identifies a device token in the database (lower-case hex in, 32 bytes out)."""
    return vault.keyed_hash(b"apns-token", device_token.lower().encode())


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def device_from_row(row: Row, vault: Vault) -> ApnsDevice:
    """Raises VaultError when the token cannot be decrypted."""
    account, aps_account_id = row["account"], row["aps_account_id"]
    token = vault.decrypt(bytes(row["device_token"]), token_aad(account, aps_account_id)).decode()
    mailboxes = row["mailboxes"]
    if isinstance(mailboxes, str | bytes):  # JSON text (SQLite, asyncpg's default jsonb codec)
        mailboxes = json.loads(mailboxes)
    return ApnsDevice(
        account=account,
        aps_account_id=aps_account_id,
        device_token=token,
        subtopic=row["subtopic"],
        version=int(row["version"]),
        mailboxes=list(mailboxes),
        first_registered=float(row["first_registered"]),
        last_registered=float(row["last_registered"]),
    )


def subscription_from_row(row: Row, vault: Vault) -> WebPushSubscription:
    """Raises VaultError when the secrets cannot be decrypted (wrong key, moved row)."""
    account, sub_id = row["account"], row["sub_id"]
    token_hash = row["ack_token_hash"]
    return WebPushSubscription(
        account=account,
        sub_id=sub_id,
        endpoint=vault.decrypt(bytes(row["endpoint"]), endpoint_aad(account, sub_id)).decode(),
        p256dh=row["p256dh"],
        auth=vault.decrypt(bytes(row["auth"]), auth_aad(account, sub_id)).decode(),
        vapid_key_id=row["vapid_key_id"],
        active=bool(row["active"]),
        ack_token_hash=None if token_hash is None else bytes(token_hash),
        ack_expires=opt_float(row["ack_expires"]),
        silenced_until=opt_float(row["silenced_until"]),
        silenced_session=row["silenced_session"],
        want_changes=bool(row["want_changes"]),
        created=float(row["created"]),
        updated=float(row["updated"]),
        last_success=opt_float(row["last_success"]),
        failures=int(row["failures"]),
    )


def credential_from_row(row: Row, vault: Vault) -> StoredCredential:
    """Raises VaultError when the secret cannot be decrypted."""
    secret = vault.decrypt(bytes(row["secret"]), credential_aad(row["account"]))
    return StoredCredential(
        account=row["account"],
        login=row["login"],
        secret=secret.decode(),
        stale=bool(row["stale"]),
        updated=float(row["updated"]),
    )


def mailbox_state_from_row(row: Row) -> MailboxState:
    return MailboxState(
        account=row["account"],
        mailbox=row["mailbox"],
        uidvalidity=int(row["uidvalidity"]),
        uidnext=int(row["uidnext"]),
        highestmodseq=None if row["highestmodseq"] is None else int(row["highestmodseq"]),
        updated=float(row["updated"]),
    )


def vapid_key_from_row(row: Row) -> VapidKey:
    return VapidKey(
        key_id=row["key_id"],
        public_key=row["public_key"],
        private_key_path=row["private_key_path"],
        created=float(row["created"]),
        current=bool(row["current"]),
    )
