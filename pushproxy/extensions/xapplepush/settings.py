"""The ``apns`` section of the YAML: XAPPLEPUSHSERVICE's own config model (keys and variables unchanged)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from pushproxy.config_types import Duration, _check_hostport, _Section

if TYPE_CHECKING:
    from pushproxy.config import Config

SECTION = "apns"


class ApnsConfig(_Section):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    p12_password_file: Path | None = None
    token_key_file: Path | None = None
    key_id: str | None = None
    team_id: str | None = None
    topic: str | None = None
    sandbox: bool = False
    endpoint: str | None = None  # test hook: "host:port" instead of Apple's host
    ca_file: Path | None = None  # test hook: CA for the endpoint override
    debounce: Duration = 1.0
    # More registrations than this for one account evict the least recently renewed
    # (iOS must never get NO, so the cap cannot refuse the newest).
    max_devices_per_account: int = Field(20, ge=1)
    timeout: Duration = 10.0
    retry_budget: int = Field(5, ge=0)
    allow_untrusted_topic: bool = False  # start even if iOS Mail would ignore the topic
    allow_expired: bool = False

    _ep = field_validator("endpoint")(classmethod(lambda cls, v: _check_hostport(v) if v else v))


def apns_settings(config: Config) -> ApnsConfig:
    """``config.apns``, typed."""
    return config.section(SECTION, ApnsConfig)
