"""The ``deltachat`` section of the YAML: the Delta Chat extension's own config model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from pushproxy.config_types import Duration, _Section

if TYPE_CHECKING:
    from pushproxy.config import Config

SECTION = "deltachat"

PUBLIC_GATEWAY = "https://notifications.delta.chat/notify"


class DeltaChatConfig(_Section):
    enabled: bool = False
    # Where tokens are POSTed: the public Delta Chat notification gateway (it alone can decrypt
    # them).  The admin's setting, not a client's: any URL is accepted (tests: a loopback stand-in).
    notify_url: str = PUBLIC_GATEWAY
    timeout: Duration = Field(10.0, gt=0)  # one POST, connect to last byte
    # New mail for the same token within this window goes as one POST (the gateway wakes the app,
    # which fetches everything new).
    coalesce: Duration = Field(1.0, ge=0)
    # 429 / 5xx / timeouts / transport errors: retried with exponential backoff and jitter
    # from retry_base up to retry_max_delay; a notification still failing retry_deadline after
    # its first attempt is dropped (one log line, a metric), as chatmail relays do (5 h).
    retry_base: Duration = Field(8.0, gt=0)
    retry_max_delay: Duration = Field(900.0, gt=0)
    retry_deadline: Duration = Field(5 * 3600.0, gt=0)
    max_concurrent: int = Field(16, ge=1)  # POSTs in flight at once
    token_expiry: Duration = Field(90 * 86400.0, gt=0)  # a token not set again for this long is removed
    max_tokens_per_account: int = Field(10, ge=1)  # more evict the least recently set
    max_token_size: int = Field(4096, ge=16, le=16384)  # bytes; Delta Chat's own bound is 4096
    # Also answer GETMETADATA /shared/vendor/deltachat/maxsmtprecipients with this value (Delta Chat
    # 2.58+ takes it as "push is supported", and as the SMTP server's recipient limit): only set it
    # to the real limit of the SMTP server the users submit to.  None: XDELTAPUSH alone says it.
    max_smtp_recipients: int | None = Field(None, ge=1)

    @field_validator("notify_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("https://") or v.startswith("http://")) or len(v) > 2048:
            raise ValueError("deltachat.notify_url must be an http(s) URL")
        return v


def deltachat_settings(config: Config) -> DeltaChatConfig:
    """``config.deltachat``, typed."""
    return config.section(SECTION, DeltaChatConfig)
