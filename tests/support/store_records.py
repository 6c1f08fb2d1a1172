"""Record builders and sample secrets shared by the store tests."""

from __future__ import annotations

from pushproxy.extensions.webpush.store import VapidKey, WebPushSubscription
from pushproxy.extensions.xapplepush.store import ApnsDevice

TOKEN = "ab" * 32
ENDPOINT = "https://push.example.net/wpush/v2/gAAAAABsecretcapabilitypath"
AUTH = "c2VjcmV0LWF1dGgtMTZi"  # base64url, 16 bytes
PASSWORD = "correct horse battery staple"


def device(account: str = "alice", aps: str = "acct-1", token: str = TOKEN, **kw: object) -> ApnsDevice:
    return ApnsDevice(account=account, aps_account_id=aps, device_token=token, **kw)  # type: ignore[arg-type]


def subscription(account: str = "alice", sub_id: str = "s1", **kw: object) -> WebPushSubscription:
    fields: dict[str, object] = {
        "endpoint": ENDPOINT,
        "p256dh": "B" + "A" * 86,
        "auth": AUTH,
        "vapid_key_id": "k1",
    }
    fields.update(kw)
    return WebPushSubscription(account=account, sub_id=sub_id, **fields)  # type: ignore[arg-type]


def vapid(key_id: str, created: float) -> VapidKey:
    return VapidKey(key_id, "B" + key_id * 86, f"/keys/{key_id}.pem", created, current=False)
