"""TLS settings for both legs: the proxy terminates TLS on each side.

ALPN on the client-facing side: a client that offers ALPN gets ``imap`` (the
IANA-registered id; Delta Chat offers it on every port but 993) or, when it
offers only other protocols, a fatal ``no_application_protocol`` alert and
one log line (RFC 7301 3.2).  A client that offers none is served as before.
Clients can resume their TLS sessions (session tickets).
Twisted 26 installs an ALPN callback on every server context and, with no
acceptable protocols, aborts any handshake that offers one with an
``internal_error`` alert and no log line: hence our own callback.
"""

from __future__ import annotations

import logging
import ssl as stdlib_ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl

from pushproxy.config import ConfigError, UpstreamConfig
from pushproxy.proxy.transport import set_alpn_selector, tls_peer
from pushproxy.watch.connect import make_tls_context

log = logging.getLogger("pushproxy.tls")

IMAP_ALPN = b"imap"
_SHOWN_PROTOCOLS = 4  # a refused client's offer, as logged: the first few names, each cut short


class AlpnRefused(SSL.Error):
    """The client offered ALPN protocols, none of them ``imap`` (the handshake fails with an alert)."""


def select_alpn(conn: SSL.Connection, offered: Sequence[bytes]) -> bytes:
    """The ALPN selection callback: ``imap`` if offered, else refuse the handshake with one log line."""
    if IMAP_ALPN in offered:
        return IMAP_ALPN
    shown = ",".join(_printable(p) for p in offered[:_SHOWN_PROTOCOLS])
    if len(offered) > _SHOWN_PROTOCOLS:
        shown += ",..."
    log.info("TLS refused for %s: ALPN offered %s, only imap is spoken here", _peer(conn), shown or "(empty)")
    # pyOpenSSL turns an exception here into the fatal alert and re-raises it from the
    # handshake; Twisted sends the alert and closes the connection for an SSL.Error, quietly,
    # provided it carries an OpenSSL-style error queue (Twisted reads its last reason).
    raise AlpnRefused([("SSL routines", "alpn_select", "no application protocol")])


def _printable(protocol: bytes) -> str:
    """A client-chosen protocol name made safe for one log line (cut short, escaped)."""
    return protocol[:24].decode("ascii", "replace").encode("unicode_escape").decode()


def _peer(conn: SSL.Connection) -> str:
    try:
        return tls_peer(conn)
    except Exception:
        return "a client"


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
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=[IMAP_ALPN],
        # Clients may resume (stateless tickets, keys random per process, as nginx does by
        # default): a phone reconnecting skips the certificate and its signature. Twisted's
        # default (OP_NO_TICKET with the session cache off) offers tickets no one can use,
        # and costs the same memory per connection (bench/tls_floor.py: 22.1 vs 22.2 KB).
        enableSessionTickets=True,
    )
    set_alpn_selector(options, select_alpn)
    return options


def upstream_tls_context(cfg: UpstreamConfig) -> stdlib_ssl.SSLContext:
    """The upstream leg's context (:mod:`pushproxy.proxy.upstream_tls`): the watchers' verification rules."""
    try:
        return make_tls_context(cfg)
    except (OSError, stdlib_ssl.SSLError) as exc:
        raise ConfigError(f"invalid upstream.ca_file {cfg.ca_file}: {exc}") from exc
