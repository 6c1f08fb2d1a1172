"""Loading and checking APNs credentials: PEM pair, PKCS#12 (+ password file) or a .p8 token key.

Apple no longer issues mail push certificates automatically (the macOS Server
self-service endpoint has refused requests since late October 2024), so all we can do
is load what the admin has, show its topic and expiry, refuse what iOS Mail would
not accept (:func:`check_usable`) and watch the certificate's expiry while the
sender runs (:class:`CertificateExpiry`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from pushproxy.background import BackgroundTask
from pushproxy.config import ConfigError, read_secret_file
from pushproxy.extensions.xapplepush.metrics import ApnsMetrics
from pushproxy.extensions.xapplepush.settings import ApnsConfig

log = logging.getLogger("pushproxy.xapplepush.apns")

EXPIRY_WARNING_DAYS = 30
EXPIRY_CHECK_INTERVAL = 6 * 3600.0

# iOS Mail drops pushes whose topic does not start with one of these.
TRUSTED_TOPIC_PREFIXES = ("com.apple.mail.", "com.apple.mobilemail.push.")
_FAR_FUTURE = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class CertificateInfo:
    topic: str | None
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime  # token keys do not expire: datetime.max (UTC)
    days_left: int  # whole days until not_after; negative once expired
    sandbox: bool
    auth: Literal["certificate", "token"]
    topic_trusted: bool  # iOS Mail would accept pushes with this topic

    @property
    def expired(self) -> bool:
        return dt.datetime.now(dt.UTC) >= self.not_after

    @property
    def not_yet_valid(self) -> bool:
        return dt.datetime.now(dt.UTC) < self.not_before


@dataclass(frozen=True)
class LoadedCredentials:
    """What the pusher needs to connect, plus the description of it."""

    info: CertificateInfo
    cert_chain_pem: bytes | None = None  # certificate (+ chain) + unencrypted key, certificate auth
    token_key_pem: str | None = None  # PKCS#8 PEM of the .p8 key, token auth


def is_trusted_topic(topic: str | None) -> bool:
    return topic is not None and topic.startswith(TRUSTED_TOPIC_PREFIXES)


def certificate_uid(cert: x509.Certificate) -> str | None:
    """The subject's UID attribute (OID 0.9.2342.19200300.100.1.1): the APNs topic."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(attrs[0].value) if attrs else None


def inspect_credentials(cfg: ApnsConfig) -> CertificateInfo:
    """Describe the configured credentials; ConfigError with a clear message if they are unusable."""
    return load_credentials(cfg).info


def load_credentials(cfg: ApnsConfig) -> LoadedCredentials:
    if cfg.cert_file is not None and cfg.token_key_file is not None:
        raise ConfigError("apns: set either cert_file (certificate auth) or token_key_file (token auth), not both")
    if cfg.cert_file is not None:
        return _load_certificate(cfg)
    if cfg.token_key_file is not None:
        return _load_token_key(cfg)
    raise ConfigError(
        "apns: no credentials: set apns.cert_file (PEM with key_file, or .p12 with p12_password_file) "
        "or apns.token_key_file (.p8 with key_id, team_id and topic)"
    )


def check_usable(cfg: ApnsConfig, info: CertificateInfo) -> None:
    """ConfigError for credentials APNs or iOS Mail would not take; one line instead where the config allows them."""
    if info.expired or info.not_yet_valid:
        when = f"expired on {info.not_after:%Y-%m-%d}" if info.expired else f"not valid before {info.not_before}"
        if not cfg.allow_expired:
            raise ConfigError(
                f"apns: the certificate ({info.subject}) {when}; APNs would refuse it "
                "(set apns.allow_expired to start anyway)"
            )
        log.error("APNs certificate (%s) %s; starting anyway as configured", info.subject, when)
    if not info.topic_trusted:
        if not cfg.allow_untrusted_topic:
            raise ConfigError(
                f"apns: topic {info.topic!r} does not start with com.apple.mail. or "
                "com.apple.mobilemail.push., so iOS Mail would ignore every push "
                "(set apns.allow_untrusted_topic to start anyway)"
            )
        log.warning("APNs topic %r is one iOS Mail ignores; starting anyway as configured", info.topic)


class CertificateExpiry(BackgroundTask):
    """The client certificate's expiry, at start and every :data:`EXPIRY_CHECK_INTERVAL`: gauges and warnings."""

    def __init__(self, cfg: ApnsConfig, metrics: ApnsMetrics | None) -> None:
        self._cfg = cfg
        self._metrics = metrics

    def report(self, info: CertificateInfo) -> None:
        """The gauges, and a warning within :data:`EXPIRY_WARNING_DAYS` of the end (certificate auth only)."""
        if info.auth != "certificate":
            return
        if self._metrics is not None:
            self._metrics.cert_days_left(info.days_left)
            self._metrics.cert_expires_at(info.not_after.timestamp())
        if 0 <= info.days_left < EXPIRY_WARNING_DAYS:
            log.warning(
                "APNs certificate (%s) expires in %d days, on %s: renew it before then",
                info.subject,
                info.days_left,
                f"{info.not_after:%Y-%m-%d}",
            )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
            try:
                info = inspect_credentials(self._cfg)
            except ConfigError as exc:
                log.error("APNs credentials became unreadable: %s", exc)
                continue
            self.report(info)
            if info.expired:
                log.error("APNs certificate (%s) has expired: pushes will fail", info.subject)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"apns: cannot read {what} {path}: {exc.strerror}") from exc


def _days_left(not_after: dt.datetime) -> int:
    return (not_after - dt.datetime.now(dt.UTC)).days


def _load_certificate(cfg: ApnsConfig) -> LoadedCredentials:
    assert cfg.cert_file is not None
    data = _read(cfg.cert_file, "certificate file")
    if b"-----BEGIN" in data:
        cert, chain, key = _load_pem(cfg, data)
    else:
        cert, chain, key = _load_p12(cfg, data)

    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"apns: the private key does not belong to the certificate in {cfg.cert_file}")

    topic = cfg.topic or certificate_uid(cert)
    if not topic:
        raise ConfigError(
            f"apns: the certificate {cfg.cert_file} has no UID in its subject ({cert.subject.rfc4514_string()}); "
            "set apns.topic"
        )
    not_after = cert.not_valid_after_utc
    info = CertificateInfo(
        topic=topic,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        days_left=_days_left(not_after),
        sandbox=cfg.sandbox,
        auth="certificate",
        topic_trusted=is_trusted_topic(topic),
    )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])
    pem += key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return LoadedCredentials(info=info, cert_chain_pem=pem)


def _load_pem(cfg: ApnsConfig, data: bytes) -> tuple[x509.Certificate, list[x509.Certificate], PrivateKeyTypes]:
    assert cfg.cert_file is not None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"apns: {cfg.cert_file} holds no readable PEM certificate: {exc}") from exc
    # The key is either in key_file or in the same file as the certificate.
    key_source, key_data = (cfg.cert_file, data)
    if cfg.key_file is not None:
        key_source, key_data = cfg.key_file, _read(cfg.key_file, "key file")
    if b"PRIVATE KEY-----" not in key_data:
        raise ConfigError(
            f"apns: no private key in {key_source}: set apns.key_file, or put the key in the certificate file"
        )
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError as exc:
        raise ConfigError(
            f"apns: the private key in {key_source} is encrypted; decrypt it "
            "(openssl pkey -in KEY -out KEY.plain) and protect the file with permissions"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"apns: cannot read the private key in {key_source}: {exc}") from exc
    return certs[0], certs[1:], key


def _load_p12(cfg: ApnsConfig, data: bytes) -> tuple[x509.Certificate, list[x509.Certificate], PrivateKeyTypes]:
    assert cfg.cert_file is not None
    password = read_secret_file(cfg.p12_password_file) if cfg.p12_password_file is not None else None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except ValueError as exc:
        hint = "set apns.p12_password_file" if password is None else "wrong password in apns.p12_password_file?"
        raise ConfigError(
            f"apns: cannot read {cfg.cert_file} as PKCS#12 ({hint}; files from old macOS keychains may need "
            f"'openssl pkcs12 -legacy' to convert): {exc}"
        ) from exc
    if cert is None or key is None:
        raise ConfigError(f"apns: {cfg.cert_file} must contain both the certificate and its private key")
    return cert, list(extra), key


def _load_token_key(cfg: ApnsConfig) -> LoadedCredentials:
    assert cfg.token_key_file is not None
    missing = [name for name in ("key_id", "team_id", "topic") if not getattr(cfg, name)]
    if missing:
        raise ConfigError(f"apns: token auth (token_key_file) also needs apns.{', apns.'.join(missing)}")
    data = _read(cfg.token_key_file, "token key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"apns: {cfg.token_key_file} is not a readable .p8 key (PKCS#8 PEM): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"apns: {cfg.token_key_file} must be an EC P-256 key (ES256), as Apple issues")
    try:
        not_before = dt.datetime.fromtimestamp(cfg.token_key_file.stat().st_mtime, dt.UTC)
    except OSError:
        not_before = dt.datetime.now(dt.UTC)
    info = CertificateInfo(
        topic=cfg.topic,
        subject=f"token key {cfg.key_id} (team {cfg.team_id})",
        issuer="Apple Developer (token auth)",
        not_before=not_before,
        not_after=_FAR_FUTURE,
        days_left=_days_left(_FAR_FUTURE),
        sandbox=cfg.sandbox,
        auth="token",
        topic_trusted=is_trusted_topic(cfg.topic),
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return LoadedCredentials(info=info, token_key_pem=pem)
