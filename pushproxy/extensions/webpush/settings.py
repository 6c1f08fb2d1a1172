"""The ``webpush`` section of the YAML: WEBPUSH's own config model (keys and variables unchanged)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from pushproxy.accounts import is_inbox
from pushproxy.config_types import Duration, _Section

if TYPE_CHECKING:
    from pushproxy.config import Config

SECTION = "webpush"


class WebPushConfig(_Section):
    enabled: bool = False
    vapid_private_key_file: Path | None = None  # default: <state dir>/vapid.pem, generated 0600
    subject: str = "mailto:postmaster@localhost"
    allow_private_endpoints: bool = False  # test hook: accept loopback/private push endpoints
    max_subscriptions_per_account: int = Field(16, ge=1)
    ttl: int = Field(86400, ge=0)
    # The verification push's TTL; None: as long as the subscription waits for its ACK
    # (ack_expiry), so a push distributor that is offline for a while can still deliver it.
    ack_ttl: int | None = Field(None, ge=0)
    ack_expiry: Duration = Field(86400.0, gt=0)  # unacknowledged subscriptions are deleted after this
    # Verification pushes go to URLs nobody has proved to control yet: bounded (NO [LIMIT] beyond).
    verification_per_endpoint_per_hour: int = Field(5, ge=1)
    verification_per_account_per_hour: int = Field(20, ge=1)
    timeout: Duration = 10.0
    retry_budget: int = Field(5, ge=0)
    # "subscribed": the account's subscribed mailboxes at the upstream, minus \\Junk and \\Trash
    # (listed by its watcher, again after (UN)SUBSCRIBE/CREATE/DELETE/RENAME through the proxy and
    # every mailboxes_refresh); or a fixed list.  INBOX is always included.
    mailboxes: Literal["subscribed"] | list[str] = "subscribed"
    mailboxes_refresh: Duration = Field(900.0, gt=0)
    max_mailboxes: int = Field(50, ge=1)  # watched per account in "subscribed" mode (INBOX included)

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            names = [name for name in v if name]
            return names if any(is_inbox(name) for name in names) else ["INBOX", *names]
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if not (v.startswith("mailto:") or v.startswith("https://")):
            raise ValueError("webpush.subject must be a mailto: or https: URI (RFC 8292)")
        return v


def webpush_settings(config: Config) -> WebPushConfig:
    """``config.webpush``, typed."""
    return config.section(SECTION, WebPushConfig)


def vapid_key_path(config: Config) -> Path:
    """The current VAPID key's file: ``webpush.vapid_private_key_file``, else ``vapid.pem`` in the state directory."""
    return webpush_settings(config).vapid_private_key_file or config.store.state_dir / "vapid.pem"
