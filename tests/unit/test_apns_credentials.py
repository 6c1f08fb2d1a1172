"""inspect_credentials / start() checks and the push body, without a network."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest

from pushproxy import metrics
from pushproxy.config import ConfigError
from pushproxy.extensions.xapplepush.apns import (
    ApnsPusher,
    PrometheusApnsMetrics,
    build_payload,
    inspect_credentials,
    mailbox_hash,
    short_token,
)
from pushproxy.extensions.xapplepush.settings import ApnsConfig
from tests.support.certs import ApnsTestCerts, make_apns_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    return make_apns_certs(tmp_path_factory.mktemp("apns-certs"))


class _Ignore:
    async def invalid_token(self, token: str, registered_before: float | None) -> None:
        pass


_ignore = _Ignore()


# -- payload -------------------------------------------------------------------------


def test_mailbox_hash_is_upper_md5_of_utf8() -> None:
    name = "Gesendete Objekte \u2013 Ärger"
    assert mailbox_hash(name) == hashlib.md5(name.encode("utf-8")).hexdigest().upper()
    assert mailbox_hash("Sent Messages") == hashlib.md5(b"Sent Messages").hexdigest().upper()


def test_payload_inbox_only_has_no_m() -> None:
    assert build_payload("ACC-1", ["INBOX"]) == {"aps": {"account-id": "ACC-1"}}
    assert build_payload("ACC-1", ["inbox", "INBOX"]) == {"aps": {"account-id": "ACC-1"}}


def test_payload_other_mailboxes_listed() -> None:
    sent = hashlib.md5(b"Sent Messages").hexdigest().upper()
    notes = hashlib.md5(b"Notes").hexdigest().upper()
    assert build_payload("A", ["Sent Messages"]) == {"aps": {"account-id": "A"}, "m": [sent]}
    assert build_payload("A", ["Sent Messages", "Notes", "Notes"])["m"] == sorted([sent, notes])


def test_payload_mixed_with_inbox_lists_inbox_too() -> None:
    inbox = hashlib.md5(b"INBOX").hexdigest().upper()
    sent = hashlib.md5(b"Sent Messages").hexdigest().upper()
    assert build_payload("A", ["INBOX", "Sent Messages"])["m"] == sorted([inbox, sent])


def test_short_token() -> None:
    assert short_token("0123456789abcdef") == "01234567…"


# -- inspect_credentials ---------------------------------------------------------------


def test_inspect_pem_pair(certs: ApnsTestCerts) -> None:
    info = inspect_credentials(ApnsConfig(cert_file=certs.client_cert, key_file=certs.client_key))
    assert info.auth == "certificate"
    assert info.topic == certs.topic
    assert info.topic_trusted
    assert "APSP:" in info.subject and f"UID={certs.topic}" in info.subject
    assert "pushproxy test CA" in info.issuer
    assert 360 <= info.days_left <= 365
    assert info.not_before < info.not_after
    assert info.sandbox is False


def test_inspect_combined_pem(certs: ApnsTestCerts) -> None:
    info = inspect_credentials(ApnsConfig(cert_file=certs.client_combined, sandbox=True))
    assert info.topic == certs.topic
    assert info.sandbox is True


def test_inspect_p12(certs: ApnsTestCerts) -> None:
    info = inspect_credentials(ApnsConfig(cert_file=certs.client_p12, p12_password_file=certs.client_p12_password_file))
    assert info.auth == "certificate"
    assert info.topic == certs.topic


def test_inspect_p12_wrong_or_missing_password(certs: ApnsTestCerts, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    with pytest.raises(ConfigError, match="PKCS#12"):
        inspect_credentials(ApnsConfig(cert_file=certs.client_p12, p12_password_file=wrong))
    with pytest.raises(ConfigError, match="p12_password_file"):
        inspect_credentials(ApnsConfig(cert_file=certs.client_p12))


def test_inspect_p8_token(certs: ApnsTestCerts) -> None:
    cfg = ApnsConfig(token_key_file=certs.token_key, key_id=certs.key_id, team_id=certs.team_id, topic=certs.topic)
    info = inspect_credentials(cfg)
    assert info.auth == "token"
    assert info.topic == certs.topic
    assert info.topic_trusted
    assert certs.key_id in info.subject and certs.team_id in info.subject
    assert info.days_left > 365 * 100


def test_inspect_p8_needs_ids_and_topic(certs: ApnsTestCerts) -> None:
    with pytest.raises(ConfigError, match=r"key_id.*team_id.*topic"):
        inspect_credentials(ApnsConfig(token_key_file=certs.token_key))


def test_inspect_p8_rejects_non_p256(certs: ApnsTestCerts) -> None:
    # The RSA client key is not an ES256 key.
    cfg = ApnsConfig(token_key_file=certs.client_key, key_id="K", team_id="T", topic=certs.topic)
    with pytest.raises(ConfigError, match="P-256"):
        inspect_credentials(cfg)


def test_inspect_errors(certs: ApnsTestCerts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no credentials"):
        inspect_credentials(ApnsConfig())
    with pytest.raises(ConfigError, match="not both"):
        inspect_credentials(ApnsConfig(cert_file=certs.client_cert, token_key_file=certs.token_key))
    with pytest.raises(ConfigError, match="cannot read certificate file"):
        inspect_credentials(ApnsConfig(cert_file=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="no private key"):
        inspect_credentials(ApnsConfig(cert_file=certs.client_cert))
    with pytest.raises(ConfigError, match="does not belong"):
        inspect_credentials(ApnsConfig(cert_file=certs.client_cert, key_file=certs.other_key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="no readable PEM certificate"):
        inspect_credentials(ApnsConfig(cert_file=garbage, key_file=certs.client_key))


def test_inspect_untrusted_and_expired(certs: ApnsTestCerts) -> None:
    untrusted = inspect_credentials(ApnsConfig(cert_file=certs.untrusted_cert, key_file=certs.untrusted_key))
    assert untrusted.topic == "com.example.not.mail"
    assert not untrusted.topic_trusted
    expired = inspect_credentials(ApnsConfig(cert_file=certs.expired_cert, key_file=certs.expired_key))
    assert expired.expired
    assert expired.days_left < 0
    # An explicit topic wins over the certificate's UID.
    override = inspect_credentials(
        ApnsConfig(cert_file=certs.client_cert, key_file=certs.client_key, topic="com.apple.mobilemail.push.x")
    )
    assert override.topic == "com.apple.mobilemail.push.x" and override.topic_trusted


# -- start() refusals -------------------------------------------------------------------


async def test_start_refuses_expired(certs: ApnsTestCerts) -> None:
    pusher = ApnsPusher(ApnsConfig(cert_file=certs.expired_cert, key_file=certs.expired_key), _ignore)
    with pytest.raises(ConfigError, match="expired"):
        await pusher.start()
    await pusher.close()


async def test_start_allows_expired_when_told(certs: ApnsTestCerts, caplog: pytest.LogCaptureFixture) -> None:
    cfg = ApnsConfig(cert_file=certs.expired_cert, key_file=certs.expired_key, allow_expired=True)
    pusher = ApnsPusher(cfg, _ignore)
    with caplog.at_level(logging.ERROR, logger="pushproxy.xapplepush.apns"):
        await pusher.start()
    assert any("expired" in r.getMessage() for r in caplog.records)
    await pusher.close()


async def test_start_refuses_untrusted_topic(certs: ApnsTestCerts) -> None:
    pusher = ApnsPusher(ApnsConfig(cert_file=certs.untrusted_cert, key_file=certs.untrusted_key), _ignore)
    assert pusher.topic == "com.example.not.mail"
    with pytest.raises(ConfigError, match="iOS Mail would ignore"):
        await pusher.start()
    await pusher.close()
    allowed = ApnsPusher(
        ApnsConfig(cert_file=certs.untrusted_cert, key_file=certs.untrusted_key, allow_untrusted_topic=True),
        _ignore,
    )
    await allowed.start()
    await allowed.close()


async def test_start_warns_when_expiring_soon(certs: ApnsTestCerts, caplog: pytest.LogCaptureFixture) -> None:
    class Metrics:
        days: list[int] = []
        expiries: list[float] = []

        def sent(self, status: str) -> None: ...
        def failed(self, reason: str) -> None: ...
        def latency(self, seconds: float) -> None: ...
        def cert_days_left(self, days: int) -> None:
            self.days.append(days)

        def cert_expires_at(self, timestamp: float) -> None:
            self.expiries.append(timestamp)

    metrics = Metrics()
    pusher = ApnsPusher(ApnsConfig(cert_file=certs.expiring_cert, key_file=certs.expiring_key), _ignore, metrics)
    with caplog.at_level(logging.WARNING, logger="pushproxy.xapplepush.apns"):
        await pusher.start()
    await pusher.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "expires in" in r.getMessage()]
    assert warnings
    assert metrics.days and 9 <= metrics.days[0] <= 10
    # The same expiry as a timestamp, for alert rules (pushproxy_apns_certificate_expiry_timestamp_seconds).
    assert metrics.expiries and 9 * 86400 <= metrics.expiries[0] - time.time() <= 11 * 86400


def test_constructor_raises_config_error_for_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ApnsPusher(ApnsConfig(cert_file=tmp_path / "nope.pem"), _ignore)


async def test_notify_before_start_is_an_error(certs: ApnsTestCerts) -> None:
    pusher = ApnsPusher(ApnsConfig(cert_file=certs.client_combined), _ignore)
    with pytest.raises(RuntimeError):
        pusher.notify("ab" * 32, "ACC", "INBOX")


def test_prometheus_adapter_uses_shared_registry() -> None:
    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before_sent = value("pushproxy_pushes_total", service="apns", status="410")
    before_fail = value("pushproxy_push_failures_total", service="apns", reason="Unregistered")
    before_other = value("pushproxy_push_failures_total", service="apns", reason="other")
    adapter = PrometheusApnsMetrics()
    adapter.sent("410")
    adapter.failed("Unregistered")
    adapter.failed("weird reason with spaces")
    adapter.latency(0.25)
    adapter.cert_days_left(42)
    adapter.cert_expires_at(1_800_000_000.0)
    assert value("pushproxy_pushes_total", service="apns", status="410") == before_sent + 1
    assert value("pushproxy_push_failures_total", service="apns", reason="Unregistered") == before_fail + 1
    assert value("pushproxy_push_failures_total", service="apns", reason="other") == before_other + 1
    assert value("pushproxy_apns_certificate_days_left") == 42
    assert value("pushproxy_apns_certificate_expiry_timestamp_seconds") == 1_800_000_000.0
