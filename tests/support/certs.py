"""Test PKI for APNs: a CA, a server certificate for the stand-in, and client credentials like Apple's.

Apple's mail push certificates have a subject such as::

    UID=com.apple.mail.XServer.<uuid>, CN=APSP:<uuid>, C=US

and the topic is the UID attribute.  ``make_apns_certs(directory)`` writes all the
variants the tests need (PEM pair, PKCS#12 + password file, expired, untrusted topic,
expiring soon, and a .p8 token key) and returns their paths.

Everything is signed by one throw-away test CA, which the APNs stand-in uses both as
its server CA (the pusher verifies the stand-in with ``apns.ca_file``) and to verify
client certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

TEST_KEY_ID = "ABC123DEFG"
TEST_TEAM_ID = "DEF123GHIJ"
P12_PASSWORD = "test-p12-password"


@dataclass(frozen=True)
class ApnsTestCerts:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path  # CN/SAN localhost + 127.0.0.1, for the stand-in
    server_key: Path
    # The good client certificate, as a PEM pair, a combined PEM and a PKCS#12 file.
    client_cert: Path
    client_key: Path
    client_combined: Path  # cert + key in one PEM file
    client_p12: Path
    client_p12_password_file: Path
    topic: str  # UID of client_cert: com.apple.mail.XServer.<uuid4>
    # Variants.
    expired_cert: Path
    expired_key: Path
    untrusted_cert: Path  # UID com.example.not.mail (iOS Mail would ignore it)
    untrusted_key: Path
    untrusted_topic: str
    expiring_cert: Path  # valid for 10 more days
    expiring_key: Path
    other_key: Path  # a key that matches none of the certificates
    # Token auth.
    token_key: Path  # .p8, EC P-256 (PKCS#8 PEM, as Apple hands it out)
    key_id: str
    team_id: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "pushproxy test CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushproxy tests"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    key: PrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def apple_like_subject(topic: str) -> x509.Name:
    """``UID=<topic>, CN=APSP:<uuid>, C=US`` like Apple's mail push certificates."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, topic),
            x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{uuid.uuid4()}"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def make_apns_certs(directory: Path | str) -> ApnsTestCerts:
    """Write the whole test PKI into ``directory`` (created if missing)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = _now()
    ca_cert, ca_key = _make_ca()

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        ca_cert,
        ca_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        server_key,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=365),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )

    # Apple's push certificates are RSA 2048.  One key serves all client variants
    # (generating RSA keys is the slow part of this function).
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    topic = f"com.apple.mail.XServer.{uuid.uuid4()}"
    untrusted_topic = "com.example.not.mail"

    def client(subject_topic: str, not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
        return _issue(
            ca_cert,
            ca_key,
            apple_like_subject(subject_topic),
            client_key,
            not_before=not_before,
            not_after=not_after,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )

    good = client(topic, now - dt.timedelta(days=1), now + dt.timedelta(days=365))
    expired = client(topic, now - dt.timedelta(days=400), now - dt.timedelta(days=35))
    untrusted = client(untrusted_topic, now - dt.timedelta(days=1), now + dt.timedelta(days=365))
    expiring = client(topic, now - dt.timedelta(days=355), now + dt.timedelta(days=10))

    key_pem = _key_pem(client_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    token_key = ec.generate_private_key(ec.SECP256R1())

    p12 = pkcs12.serialize_key_and_certificates(
        b"pushproxy test APNs",
        client_key,
        good,
        [ca_cert],
        serialization.BestAvailableEncryption(P12_PASSWORD.encode()),
    )

    return ApnsTestCerts(
        directory=d,
        ca_cert=_write(d / "ca.pem", _cert_pem(ca_cert)),
        ca_key=_write(d / "ca.key", _key_pem(ca_key), private=True),
        server_cert=_write(d / "server.pem", _cert_pem(server_cert)),
        server_key=_write(d / "server.key", _key_pem(server_key), private=True),
        client_cert=_write(d / "apns.pem", _cert_pem(good)),
        client_key=_write(d / "apns.key", key_pem, private=True),
        client_combined=_write(d / "apns-combined.pem", _cert_pem(good) + key_pem, private=True),
        client_p12=_write(d / "apns.p12", p12, private=True),
        client_p12_password_file=_write(d / "apns.p12.password", P12_PASSWORD.encode() + b"\n", private=True),
        topic=topic,
        expired_cert=_write(d / "apns-expired.pem", _cert_pem(expired)),
        expired_key=_write(d / "apns-expired.key", key_pem, private=True),
        untrusted_cert=_write(d / "apns-untrusted.pem", _cert_pem(untrusted)),
        untrusted_key=_write(d / "apns-untrusted.key", key_pem, private=True),
        untrusted_topic=untrusted_topic,
        expiring_cert=_write(d / "apns-expiring.pem", _cert_pem(expiring)),
        expiring_key=_write(d / "apns-expiring.key", key_pem, private=True),
        other_key=_write(d / "other.key", _key_pem(other_key), private=True),
        token_key=_write(d / f"AuthKey_{TEST_KEY_ID}.p8", _key_pem(token_key), private=True),
        key_id=TEST_KEY_ID,
        team_id=TEST_TEAM_ID,
    )
