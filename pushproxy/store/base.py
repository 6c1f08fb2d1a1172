"""The store interface: one async API, several back ends (SQLite now, PostgreSQL later).

Callers depend only on :class:`Store` and the record types here.  Secrets
(upstream passwords, WebPush auth secrets) are handed to the store in clear
text and encrypted by the back end with the :class:`~pushproxy.store.vault.Vault`
it was given; the key never enters the database.

Every write is durable when the coroutine returns (SQLite: committed in WAL
mode with ``synchronous=FULL``), because callers answer the client's tagged OK
only after it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


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
class StoredCredential:
    account: str  # normalised
    login: str  # exactly as the user typed it: what the watcher sends upstream
    secret: str  # clear text here; encrypted at rest, bound to the account
    stale: bool = False  # upstream said AUTHENTICATIONFAILED: wait for a new login
    updated: float = 0.0


@dataclass(slots=True)
class MailboxState:
    account: str
    mailbox: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int | None = None
    updated: float = 0.0


@dataclass(slots=True)
class VapidKey:
    key_id: str
    public_key: str  # base64url uncompressed point (87 chars, starts with "B")
    private_key_path: str  # PEM file, mode 0600; never the key itself
    created: float
    current: bool


class StoreUnavailable(Exception):
    """The back end cannot be reached right now (transient)."""


class Store(ABC):
    """Async persistence for registrations, subscriptions, credentials and watch state."""

    @property
    def shared_by_nodes(self) -> bool:
        """True when several nodes may open this store at once (PostgreSQL): keys every
        node must share are then checked against what the others recorded."""
        return False

    # --- lifecycle -----------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the back end answers a trivial query (for /readyz)."""

    # --- APNs devices --------------------------------------------------------
    @abstractmethod
    async def upsert_device(self, device: ApnsDevice) -> ApnsDevice:
        """Insert or refresh (mailboxes, subtopic, version, last_registered).

        first_registered is kept from the existing row.  Returns the stored row.
        """

    @abstractmethod
    async def devices_for_account(self, account: str) -> list[ApnsDevice]: ...

    @abstractmethod
    async def list_devices(self, account: str | None = None) -> list[ApnsDevice]: ...

    @abstractmethod
    async def remove_device(self, account: str, aps_account_id: str | None, device_token: str) -> int:
        """Remove matching rows (any aps_account_id when None). Returns how many."""

    @abstractmethod
    async def remove_device_token(self, device_token: str, registered_before: float | None = None) -> int:
        """Remove every registration of a token (APNs 400/410).

        With ``registered_before`` only rows whose last_registered is older
        than it (the 410 timestamp) are removed: a device that re-registered
        after Apple's timestamp is alive again.
        """

    @abstractmethod
    async def expire_devices(self, not_registered_since: float) -> int: ...

    # --- WebPush subscriptions ----------------------------------------------
    @abstractmethod
    async def put_subscription(self, sub: WebPushSubscription) -> None:
        """Insert or replace by (account, sub_id)."""

    @abstractmethod
    async def get_subscription(self, account: str, sub_id: str) -> WebPushSubscription | None: ...

    @abstractmethod
    async def subscriptions_for_account(self, account: str) -> list[WebPushSubscription]: ...

    @abstractmethod
    async def list_subscriptions(self, account: str | None = None) -> list[WebPushSubscription]: ...

    @abstractmethod
    async def delete_subscription(self, account: str, sub_id: str) -> bool: ...

    @abstractmethod
    async def count_subscriptions(self, account: str) -> int: ...

    @abstractmethod
    async def find_subscription_by_ack(self, account: str, token_hash: bytes) -> WebPushSubscription | None: ...

    @abstractmethod
    async def expire_inactive_subscriptions(self, now: float) -> int:
        """Delete inactive subscriptions whose ack_expires is past."""

    @abstractmethod
    async def clear_session_silences(self, session_id: str) -> int:
        """A proxy session ended: lift silences bound to it."""

    # --- credentials ----------------------------------------------------------
    @abstractmethod
    async def put_credential(self, cred: StoredCredential) -> None: ...

    @abstractmethod
    async def get_credential(self, account: str) -> StoredCredential | None:
        """None when absent; raises VaultError when the record cannot be decrypted."""

    @abstractmethod
    async def mark_credential_stale(self, account: str) -> None: ...

    @abstractmethod
    async def delete_credential(self, account: str) -> None: ...

    # --- watch state ------------------------------------------------------------
    @abstractmethod
    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None: ...

    @abstractmethod
    async def put_mailbox_state(self, state: MailboxState) -> None: ...

    @abstractmethod
    async def delete_mailbox_states(self, account: str) -> None: ...

    # --- accounts -----------------------------------------------------------------
    @abstractmethod
    async def accounts_with_registrations(self) -> list[str]:
        """Accounts with at least one APNs device or active WebPush subscription."""

    # --- VAPID key metadata -----------------------------------------------------
    @abstractmethod
    async def vapid_keys(self) -> list[VapidKey]: ...

    @abstractmethod
    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None: ...
