"""What pushproxy/extensions/xapplepush/apns_h2.py assumes of aioapns' internals, one test each.

pyproject.toml pins aioapns to the series these were checked against; an
upgrade that breaks one fails the test named after it, not a push in production.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl

from aioapns import connection as aioapns_connection
from aioapns.common import NotificationResult
from aioapns.exceptions import ConnectionClosed

from pushproxy.extensions.xapplepush import apns_h2


def test_pools_take_the_arguments_we_pass() -> None:
    cert = inspect.signature(aioapns_connection.APNsCertConnectionPool)
    key = inspect.signature(aioapns_connection.APNsKeyConnectionPool)
    common = {"topic", "max_connections", "max_connection_attempts", "use_sandbox", "ssl_context"}
    assert common | {"cert_file"} <= set(cert.parameters)
    assert common | {"key", "key_id", "team_id"} <= set(key.parameters)


async def test_a_pool_makes_its_connections_with_its_protocol_class() -> None:
    pool = aioapns_connection.APNsKeyConnectionPool(
        key=_ec_key(), key_id="K", team_id="T", topic="com.apple.mail.x", ssl_context=ssl.create_default_context()
    )
    assert pool.protocol_class is aioapns_connection.APNsProductionClientProtocol
    assert inspect.iscoroutinefunction(pool.acquire) and callable(pool.close)
    source = inspect.getsource(type(pool).create_connection)
    assert "self.protocol_class" in source


def test_apple_hosts_are_class_attributes() -> None:
    for cls in (aioapns_connection.APNsProductionClientProtocol, aioapns_connection.APNsDevelopmentClientProtocol):
        assert isinstance(cls.APNS_SERVER, str) and isinstance(cls.APNS_PORT, int)
    ours = apns_h2._protocol_class(sandbox=False, endpoint="127.0.0.1:4443")
    assert (ours.APNS_SERVER, ours.APNS_PORT) == ("127.0.0.1", 4443)


async def test_the_protocol_state_our_response_side_uses() -> None:
    protocol = apns_h2._protocol_class(sandbox=True, endpoint=None)("com.apple.mail.x")
    assert protocol.loop is asyncio.get_running_loop()
    assert protocol.requests == {} and protocol.request_streams == {}
    assert protocol.inactivity_timer is None and protocol.on_connection_lost is None
    assert callable(protocol.free_channels.release) and callable(protocol.free_channels.destroy)
    assert hasattr(protocol.conn, "receive_data") and hasattr(protocol.conn, "ping")
    for name in ("flush", "close", "on_remote_settings_changed", "on_connection_terminated", "connection_made"):
        assert callable(getattr(protocol, name)), name
    assert inspect.iscoroutinefunction(aioapns_connection.APNsTLSClientProtocol.send_notification)
    assert isinstance(aioapns_connection.APNsBaseClientProtocol.INACTIVITY_TIME, int | float)


def test_the_base_protocol_reads_inactivity_time_and_keeps_request_maps() -> None:
    source = inspect.getsource(aioapns_connection.APNsBaseClientProtocol)
    assert "self.INACTIVITY_TIME" in source
    assert "self.requests[" in source and "self.request_streams[" in source


def test_notification_result_and_errors() -> None:
    result = apns_h2._Result("id", "200", description=None, timestamp=None, retry_after=3.0)
    assert isinstance(result, NotificationResult) and (result.notification_id, result.status) == ("id", "200")
    assert issubclass(ConnectionClosed, Exception)


def _ec_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
