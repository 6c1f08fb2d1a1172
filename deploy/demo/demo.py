"""`make demo`: pushproxy in front of a local Dovecot, with SQLite, showing pushes arriving.

Everything runs on loopback: a private Dovecot (IMAP + LMTP), a local stand-in
for Apple's push service (HTTP/2, TLS, client certificates) and a local Web
Push service that decrypts what it receives.  The demo registers an "iPhone"
(XAPPLEPUSHSERVICE) and a WebPush subscription through the proxy, then delivers
a message every few seconds and prints every push as it arrives.  Point your
own IMAP client at the printed address meanwhile.

Stops on Ctrl-C, or after DEMO_SECONDS seconds if that is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.apns_standin import ApnsStandin  # noqa: E402
from tests.support.certs import make_apns_certs  # noqa: E402
from tests.support.dovecot import Dovecot, make_message, new_base_dir  # noqa: E402
from tests.support.proxy import ProxyProcess  # noqa: E402

ACCOUNT_ID = "0715A26B-CA09-4730-A419-793000CA982E"
DEVICE_TOKEN = "2918390218931890821908309283098109381029309829018310983092892829"


def say(text: str) -> None:
    print(f"\033[1m[demo]\033[0m {text}", flush=True)


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


class Imap:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""
        self.n = 0
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: str) -> list[bytes]:
        self.n += 1
        tag = f"d{self.n}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                return out


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="pushproxy-demo-"))
    dc_dir = new_base_dir()
    try:
        return run_demo(base, dc_dir)
    finally:  # test keys and mail: nothing of the demo outlives it
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(dc_dir, ignore_errors=True)


def run_demo(base: Path, dc_dir: Path) -> int:
    say(f"state in {base} (removed at exit)")
    dc = Dovecot(dc_dir, users={"demo": "demo", "alice": "alicepw"})
    dc.start()
    say(f"Dovecot on 127.0.0.1:{dc.imap_port} (LMTP {dc.lmtp_port}), users demo/demo and alice/alicepw")

    certs = make_apns_certs(base / "apns")
    apns = ApnsStandin(certs.server_cert, certs.server_key, client_ca=certs.ca_cert)
    apns.start()
    say(f"APNs stand-in on {apns.endpoint} (topic {certs.topic})")

    push = None
    try:
        from tests.support.push_standin import PushStandin

        push = PushStandin()
        push.__enter__()
    except Exception as exc:  # the demo still shows APNs
        say(f"WebPush stand-in unavailable ({exc}); showing APNs only")
        push = None

    proxy = ProxyProcess(
        base / "proxy",
        {
            "upstream": {"host": "127.0.0.1", "port": dc.imap_port, "security": "starttls", "ca_file": str(dc.ca_file)},
            "apns": {
                "enabled": True,
                "cert_file": str(certs.client_cert),
                "key_file": str(certs.client_key),
                "endpoint": apns.endpoint,
                "ca_file": str(certs.ca_cert),
            },
            "webpush": {"enabled": push is not None, "allow_private_endpoints": True},
            "session": {"drain_timeout": "5s"},
            "log": {"level": "info"},
        },
    )
    proxy.port = port_or_free(1143)
    proxy.config["listen"]["imap"] = f"127.0.0.1:{proxy.port}"
    proxy.start()
    say(f"pushproxy on 127.0.0.1:{proxy.port}  (log: {proxy.log_file})")
    say(f"admin: http://127.0.0.1:{proxy.admin_port}/metrics  /healthz  /readyz")
    print(
        f"""
  Connect any IMAP client:   server 127.0.0.1  port {proxy.port}  no TLS  user demo  password demo
  e.g.  python3 -c "import imaplib; m=imaplib.IMAP4('127.0.0.1',{proxy.port}); print(m.login('demo','demo'));"
        " print(m.capability())"
  Deliver mail yourself:     swaks --server 127.0.0.1:{dc.lmtp_port} --protocol LMTP --to demo
""",
        flush=True,
    )

    # An "iPhone" registers for push, exactly as iOS Mail does.
    phone = Imap(proxy.port)
    phone.cmd("LOGIN demo demo")
    answer = phone.cmd(
        f'XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "{ACCOUNT_ID}" "aps-device-token" "{DEVICE_TOKEN}" '
        '"aps-subtopic" "com.apple.mobilemail" "mailboxes" ("INBOX" "Sent Messages")'
    )
    say("iOS-style registration answered:")
    for line in answer:
        print("    " + line.decode())

    if push is not None:
        sub = push.new_subscription()
        client = Imap(proxy.port)
        client.cmd("LOGIN demo demo")
        for line in client.cmd(f'WEBPUSH demo-sub "{sub.endpoint}" {sub.p256dh} {sub.auth}'):
            print("    " + line.decode()[:120])
        records = asyncio.run(push.wait_for(sub, 1, timeout=10, accepted_only=False))
        token = records[0].plaintext.decode().split()[-1]
        say(f"verification push received: {records[0].plaintext!r}")
        for line in client.cmd(f"ACKWEBPUSH {token}"):
            print("    " + line.decode()[:120])
        client.cmd("LOGOUT")

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    limit = float(os.environ.get("DEMO_SECONDS", "0") or 0)
    started = time.monotonic()
    seen_apns = 0
    seen_web = 1 if push is not None else 0  # the verification push was shown already
    n = 0
    next_mail = time.monotonic()
    say("delivering a message every 5 s; Ctrl-C to stop")
    try:
        while not stop.is_set() and (not limit or time.monotonic() - started < limit):
            if time.monotonic() >= next_mail:
                n += 1
                box = "Sent Messages" if n % 3 == 0 else None
                dc.deliver("demo", make_message(f"Demo message {n}", to="demo@localhost"), mailbox=box)
                say(f"delivered 'Demo message {n}' to {box or 'INBOX'} via LMTP")
                next_mail = time.monotonic() + 5
            reqs = apns.requests
            for req in reqs[seen_apns:]:
                say(f"APNs push  POST {req.path[:22]}…  topic={req.headers.get('apns-topic')}  body={req.json}")
            seen_apns = len(reqs)
            if push is not None:
                recs = [r for r in push.records_for(sub)]
                for rec in recs[seen_web:]:
                    say("WebPush (decrypted):\n    " + rec.plaintext.decode(errors="replace").replace("\r\n", "\n    "))
                seen_web = len(recs)
            time.sleep(0.2)
    finally:
        say("stopping")
        phone.cmd("LOGOUT")
        code = proxy.stop()
        say(f"pushproxy exited with {code}")
        apns.stop()
        if push is not None:
            push.__exit__(None, None, None)
        dc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
