"""Configuration: one pydantic model per section of the YAML file.

:class:`CoreConfig` has the core's sections; :data:`Config` adds one field
per extension in :data:`pushproxy.extensions.EXTENSIONS` (``Extension.section``
validated by ``Extension.settings``: ``apns``, ``webpush``, ...), built with
pydantic's ``create_model`` from the same list ``wiring.py`` iterates.  Code
that needs an extension's section reads it typed through that extension's
accessor (e.g. ``webpush_settings(config)``) or :meth:`CoreConfig.section`.

Every key can be overridden by ``PUSHPROXY_<SECTION>__<KEY>`` environment
variables (environment wins over the file).  Unknown keys are errors.
Durations accept numbers (seconds) or strings such as ``30s``, ``25m``, ``2h``,
``30d``.  Secrets are read from ``*_file`` paths so that they never have to sit
in the YAML file itself.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, SecretStr, create_model, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Re-exported: sections and extensions build on these.
from pushproxy.config_types import Duration, _check_hostport, _Section, parse_duration, parse_hostport

__all__ = ["Config", "ConfigError", "CoreConfig", "Duration", "parse_duration", "parse_hostport"]

S = TypeVar("S", bound=BaseModel)


class ListenConfig(_Section):
    imap: str = "127.0.0.1:1143"
    imaps: str = ""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # A HAProxy PROXY v2 header from a load balancer in front: accepted (and then
    # required) only from these networks; anyone else sending one is refused.
    proxy_protocol: bool = False
    proxy_protocol_trusted: list[str] = Field(default_factory=list)

    _hp = field_validator("imap", "imaps")(classmethod(lambda cls, v: _check_hostport(v)))

    @field_validator("proxy_protocol_trusted")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad entry
        return v


class SessionConfig(_Section):
    """Limits of one client session (an addition to contracts.md)."""

    max_line_length: int = Field(65536, ge=1024)
    max_preauth_literal: int = Field(8192, ge=0)
    # Plaintext LOGIN / AUTHENTICATE PLAIN on a connection without TLS: refused
    # (LOGINDISABLED) unless the peer is on loopback or this is true.
    allow_plaintext_auth: bool = False
    autologout: Duration = 30 * 60.0  # RFC 9051 section 5.4: at least 30 minutes
    # From connect to a successful login, whatever the client sends meanwhile.
    preauth_timeout: Duration = Field(60.0, gt=0)
    # Beyond these a new connection gets "* BYE [UNAVAILABLE]" (per IP: the client's
    # address after PROXY header resolution).
    max_connections: int = Field(5000, ge=1)
    max_connections_per_ip: int = Field(50, ge=1)
    # Failed logins from one client IP delay its next NO: 2 s, 4 s, 8 s ... up to this
    # (0 disables); forgotten after auth_penalty_reset without a failure.
    auth_penalty_max: Duration = 15.0
    auth_penalty_reset: Duration = Field(300.0, gt=0)
    drain_timeout: Duration = 30.0


class UpstreamConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(143, gt=0, lt=65536)
    security: Literal["none", "starttls", "tls"] = "starttls"
    ca_file: Path | None = None
    verify: bool = True
    server_name: str | None = None  # TLS name to verify; default: host
    connect_timeout: Duration = 10.0
    # How upstream learns the client's address: "id" sends ID ("x-originating-ip" ...)
    # before the login (Dovecot: login_trusted_networks), "proxy-v2" a HAProxy PROXY
    # v2 header (Dovecot: haproxy_trusted_networks).
    forward_client_ip: Literal["none", "id", "proxy-v2"] = "none"


class StoreConfig(_Section):
    url: str = "sqlite:///var/lib/pushproxy/pushproxy.db"
    device_expiry: Duration = 30 * 86400.0

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite://") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("store.url must start with sqlite:/// or postgresql://")
        return v

    @property
    def state_dir(self) -> Path:
        """Directory for generated keys next to a SQLite database."""
        if self.url.startswith("sqlite:///"):
            # The path after "sqlite://" is absolute (sqlite:///var/lib/x.db -> /var/lib/x.db),
            # matching pushproxy.store.factory.sqlite_path_from_url.
            rest = self.url[len("sqlite://") :]
            if rest.lstrip("/") == ":memory:":
                return Path(".")
            return Path("/" + rest.lstrip("/")).parent
        return Path("/var/lib/pushproxy")


class WatchConfig(_Section):
    credentials: Literal["vault", "master", "memory"] = "vault"
    vault_key_file: Path | None = None  # default: <state dir>/vault.key, generated 0600
    master_user: str | None = None
    master_password_file: Path | None = None
    master_password: SecretStr | None = None
    # separator: LOGIN "<user>*<master_user>" (Dovecot); sasl: AUTHENTICATE PLAIN with authzid=<user>
    master_login: Literal["separator", "sasl"] = "separator"
    idle_refresh: Duration = 25 * 60.0
    poll_interval: Duration = 60.0  # polled mailboxes on a quiet account (see poll_interval_active)
    poll_interval_active: Duration = 10.0  # polled mailboxes right after activity; doubles per quiet poll
    # Without NOTIFY: IDLE connections per account (the first mailboxes of its list); the rest is polled.
    idle_connections: int = Field(1, ge=1, le=20)
    connect_rate: float = Field(50.0, gt=0)  # new watcher connections per second at most
    # Watcher connections being opened and logged in at once; default 2 x connect_rate (at least 4).
    connect_in_flight: int | None = Field(None, ge=1)
    backoff_min: Duration = 1.0
    backoff_max: Duration = 300.0
    command_timeout: Duration = 30.0


class AdminConfig(_Section):
    listen: str = "127.0.0.1:9143"  # "" disables
    ox_secret_file: Path | None = None  # enables POST /events/dovecot-ox with this shared secret

    _hp = field_validator("listen")(classmethod(lambda cls, v: _check_hostport(v)))


class ClusterConfig(_Section):
    """Several nodes on one PostgreSQL (``store.url: postgresql://...``); SQLite: one node owns everything."""

    node_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")  # default: host + listener
    lease_ttl: Duration = Field(30.0, ge=3.0)  # a dead node's accounts are taken over after this
    ledger_retention: Duration = Field(6 * 3600.0, gt=0)  # how long a sent push is remembered
    address: str | None = None  # shown by `pushproxy cluster status`; default: host name + listener


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class RuntimeConfig(_Section):
    # The asyncio loop Twisted's reactor runs on. "auto" takes uvloop when it is
    # installed (it is a default dependency: measured faster on the relay path,
    # see bench/passthrough.py) and the standard loop otherwise.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"


def _layered(*layers: dict[str, Any]) -> dict[str, Any]:
    """Mappings merged key by key, later ones winning (as pydantic-settings merges its sources)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            below = out.get(key)
            out[key] = _layered(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return out


class CoreConfig(BaseSettings):
    """The core's sections; :data:`Config` is this plus every extension's section."""

    model_config = SettingsConfigDict(
        env_prefix="PUSHPROXY_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    listen: ListenConfig = Field(default_factory=ListenConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def section(self, name: str, model: type[S]) -> S:
        """An extension's section (``Extension.section``), typed as its model (``Extension.settings``)."""
        value = getattr(self, name, None)
        if not isinstance(value, model):
            raise TypeError(f"config section {name!r} is not a {model.__name__} (is its extension listed?)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file is not a source: load_config layers it under the environment itself.
        return (init_settings, env_settings)

    @property
    def push_enabled(self) -> bool:
        """Some extension is enabled: the store, the watchers and the dispatcher are needed."""
        from pushproxy.extensions import extension_classes

        return any(cls().configure(self) for cls in extension_classes())

    def vault_key_path(self) -> Path:
        return self.watch.vault_key_file or self.store.state_dir / "vault.key"

    def master_password(self) -> str | None:
        if self.watch.master_password is not None:
            return self.watch.master_password.get_secret_value()
        if self.watch.master_password_file is not None:
            return read_secret_file(self.watch.master_password_file)
        return None


def _with_extension_sections(core: type[CoreConfig]) -> type[CoreConfig]:
    """``core`` plus one field per listed extension that has a section: its YAML key and env prefix."""
    from pushproxy.extensions import extension_classes

    fields: dict[str, Any] = {}
    for extension in extension_classes():
        if extension.section is not None and extension.settings is not None:
            if extension.section in core.model_fields or extension.section in fields:
                raise RuntimeError(f"config section {extension.section!r} claimed twice")
            fields[extension.section] = (extension.settings, Field(default_factory=extension.settings))
    config: type[CoreConfig] = create_model("Config", __base__=core, __module__=__name__, **fields)
    config.__doc__ = "The whole configuration: the core's sections and every listed extension's."
    return config


if TYPE_CHECKING:
    Config = CoreConfig  # extensions' sections are read through CoreConfig.section (typed)
else:
    Config = _with_extension_sections(CoreConfig)


class ConfigError(Exception):
    """A configuration problem, with a message meant for the admin."""


def read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


def load_config(path: Path | str | None, **overrides: Any) -> Config:
    """Read the YAML file (if any), apply env overrides, validate."""
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = raw
    try:
        # YAML, then PUSHPROXY_* variables over it, then the caller's overrides; validated
        # once (model_validate: the settings sources are not consulted again).
        return Config.model_validate(_layered(data, EnvSettingsSource(Config)(), overrides))
    except ValidationError as exc:
        lines = []
        from_env = 0
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            variable = _env_variable_for([str(p) for p in err["loc"]])
            if variable is not None:
                from_env += 1
                lines.append(f"  {loc} (environment variable {variable}): {msg}")
            else:
                lines.append(f"  {loc}: {msg}")
        if from_env == len(lines):
            where = " in the environment"
        elif from_env:
            where = f" in {path} and the environment" if path else ""
        else:
            where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines)) from None


def _env_variable_for(loc: list[str]) -> str | None:
    """The ``PUSHPROXY_...`` variable that set the value at ``loc`` (or a section containing it), if any."""
    import os

    names = {name.upper(): name for name in os.environ if name.upper().startswith("PUSHPROXY_")}
    for depth in range(len(loc), 0, -1):
        candidate = "PUSHPROXY_" + "__".join(part.upper() for part in loc[:depth])
        if candidate in names:
            return names[candidate]
    return None


_URL_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]+)(@)")


def masked_dict(config: Config) -> dict[str, Any]:
    """The effective configuration with secrets masked, for printing."""
    data = config.model_dump(mode="json")
    for section in data.values():
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            if isinstance(value, str) and ("password" in key or "secret" in key) and not key.endswith("_file"):
                section[key] = "********"
    data["store"]["url"] = _URL_PASSWORD.sub(r"\1********\3", data["store"]["url"])
    return data
