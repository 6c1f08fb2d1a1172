"""Configuration: one pydantic model per section of the YAML file.

:class:`Config` has the core's sections and ``extensions``, the names of the
extensions this proxy loads (default: the push protocols that ship with
pushproxy).  Every other top-level key is an extension's section: validated by
that extension's own model (``Extension.settings``) when the file is loaded
with the extensions' :class:`~pushproxy.config_sections.Catalogue` (the CLI
does: ``load_config(path, catalogue())``), when the extension manager
configures the extensions
(:meth:`pushproxy.extensions.manager.ExtensionManager.for_config`), or when
code first reads it typed with :meth:`Config.section` (e.g.
``webpush_settings(config)``).  A key that is neither the core's nor an
enabled extension's section is an error there, and so is the section of an
installed extension the list does not enable.  This module knows no extension.

Every key can be overridden by ``PUSHPROXY_<SECTION>__<KEY>`` environment
variables (environment wins over the file), extension sections' keys too, and
the list by ``PUSHPROXY_EXTENSIONS`` (a JSON list or ``a,b,c``).  Unknown keys
are errors.  Durations accept numbers (seconds) or strings such as ``30s``,
``25m``, ``2h``, ``30d``.  Secrets are read from ``*_file`` paths so that they
never have to sit in the YAML file itself.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pushproxy.config_sections import (
    ENV,
    Catalogue,
    ConfigError,
    Problem,
    check_extensions,
    extension_list,
    layered,
    problem_message,
    problems_of,
    validate_section,
)

# Re-exported: sections and extensions build on these.
from pushproxy.config_types import Duration, _check_hostport, _Section, parse_duration, parse_hostport

__all__ = ["Catalogue", "Config", "ConfigError", "Duration", "parse_duration", "parse_hostport"]

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
    # Rows per step of a periodic sweep (registration expiry, push ledger pruning); the loop runs
    # everything else between two steps, so a sweep never stalls it however much is stored.
    housekeeping_batch: int = Field(500, ge=1, le=100_000)

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
    # Watcher connections being opened and logged in at once; default 2 x connect_rate (4 to 100).
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


class Config(BaseSettings):
    """The core's sections; any other top-level key is an extension's (see :meth:`section`)."""

    # extra="allow": the extensions' sections, as read, until their models validate them
    # (check_extensions refuses a key that is no enabled extension's section).
    model_config = SettingsConfigDict(**ENV, extra="allow")
    _source: Path | None = PrivateAttr(None)  # the YAML file it was read from (error messages)

    # The extensions this proxy loads, by name, in this order (their hooks are called so): their
    # sections are validated and each still decides from its section whether it runs (e.g.
    # webpush.enabled).  None: the push protocols that ship with pushproxy; load_config with the
    # catalogue puts the effective list here.
    extensions: Annotated[list[str] | None, NoDecode] = None

    listen: ListenConfig = Field(default_factory=ListenConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    _listed = field_validator("extensions", mode="before")(classmethod(lambda cls, v: extension_list(v)))

    def section(self, name: str, model: type[S]) -> S:
        """An extension's section (``Extension.section``), validated by its model (``Extension.settings``).

        Validated once (YAML, then its ``PUSHPROXY_<NAME>__*`` variables); raises ConfigError
        naming each bad key under the section's name.
        """
        if name in type(self).model_fields:
            raise TypeError(f"config section {name!r} is the core's, not an extension's")
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        value = extra.get(name)
        if isinstance(value, BaseModel):
            if not isinstance(value, model):
                raise TypeError(f"config section {name!r} is a {type(value).__name__}, not a {model.__name__}")
            return value
        if value is not None and not isinstance(value, dict):
            raise ConfigError(self._where([(f"  {name}: must be a mapping of keys", False)]))
        validated = validate_section(name, model, value or {}, self._where)
        extra[name] = validated  # config.<name> is the typed section from now on
        return validated

    def check_extensions(self, catalogue: Catalogue) -> list[str]:
        """The enabled extensions' names, every key beyond the core's checked and their sections validated.

        Raises one ConfigError with every problem, each under its section's name.
        """
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        enabled, validated, problems = check_extensions(catalogue, self.extensions, extra, type(self).model_fields)
        if problems:
            raise ConfigError(self._where(problems), problems)
        extra.update(validated)  # config.<name> is the typed section from now on
        return enabled

    def _where(self, lines: list[Problem]) -> str:
        return problem_message(lines, self._source)

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

    def vault_key_path(self) -> Path:
        return self.watch.vault_key_file or self.store.state_dir / "vault.key"

    def master_password(self) -> str | None:
        if self.watch.master_password is not None:
            return self.watch.master_password.get_secret_value()
        if self.watch.master_password_file is not None:
            return read_secret_file(self.watch.master_password_file)
        return None


def read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


def load_config(path: Path | str | None, catalogue: Catalogue | None = None, **overrides: Any) -> Config:
    """Read the YAML file (if any), apply env overrides, validate.

    ``catalogue``: the extensions installed here (the CLI passes ``pushproxy.extensions.catalogue()``):
    the ``extensions`` list must name some of them, each enabled one's section is validated by its
    model, a top-level key that is neither the core's nor an enabled extension's section is an
    error (naming the likely intended key), and every problem of every section is in the one
    ConfigError; ``config.extensions`` is then the effective list.  Without it only the core's
    sections are validated here; an extension's is when first read (:meth:`Config.section`).
    """
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
    source = Path(path) if path is not None else None
    # YAML, then PUSHPROXY_* variables over it, then the caller's overrides; validated
    # once (model_validate: the settings sources are not consulted again).
    merged = layered(data, EnvSettingsSource(Config)(), overrides)
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        problems = problems_of(exc, model=Config)
    validated: dict[str, BaseModel] = {}
    enabled: list[str] | None = None
    if catalogue is not None:
        extra = {key: value for key, value in merged.items() if key not in Config.model_fields}
        listed = config.extensions if config is not None else _listed_as_given(merged.get("extensions"), catalogue)
        enabled, validated, more = check_extensions(catalogue, listed, extra, Config.model_fields)
        problems += more
    if problems or config is None:
        raise ConfigError(problem_message(problems, source), problems)
    config._source = source
    if enabled is not None:
        config.extensions = enabled
    if config.__pydantic_extra__ is not None:
        config.__pydantic_extra__.update(validated)
    return config


def _listed_as_given(value: Any, catalogue: Catalogue) -> list[str] | None:
    """The ``extensions`` list of a config the core's model refused: as given if it reads, else every one.

    (Every available one when the list itself is bad: each section is still validated by its
    model, and no section is refused as "not enabled" by a list that could not be read.)
    """
    try:
        value = extension_list(value)
    except ValueError:
        return list(catalogue.sections)
    if value is None or (isinstance(value, list) and all(isinstance(name, str) for name in value)):
        return value
    return list(catalogue.sections)


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
