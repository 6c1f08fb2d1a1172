"""TLS settings for both legs: the proxy terminates TLS on each side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import crypto
from twisted.internet import ssl

from pushproxy.config import ConfigError, UpstreamConfig


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def server_tls_options(cert_file: Path, key_file: Path | None) -> Any:
    """Options for the client-facing side (implicit TLS and STARTTLS)."""
    cert_pem = _read(cert_file, "listen.tls_cert_file")
    key_pem = _read(key_file, "listen.tls_key_file") if key_file else cert_pem
    try:
        blocks = [b"-----BEGIN CERTIFICATE-----" + part for part in cert_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as exc:
        raise ConfigError(f"invalid TLS certificate or key ({cert_file}): {exc}") from exc
    if not certs:
        raise ConfigError(f"{cert_file}: no PEM certificate found")
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def client_tls_options(cfg: UpstreamConfig) -> Any:
    """Options for the upstream side; verification is on unless ``verify: false``."""
    if not cfg.verify:
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    trust: Any = None
    if cfg.ca_file is not None:
        data = _read(cfg.ca_file, "upstream.ca_file")
        try:
            blocks = [b"-----BEGIN CERTIFICATE-----" + p for p in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
        except Exception as exc:
            raise ConfigError(f"invalid upstream.ca_file {cfg.ca_file}: {exc}") from exc
    name = cfg.server_name or cfg.host
    return ssl.optionsForClientTLS(name, trustRoot=trust)
