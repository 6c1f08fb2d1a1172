"""Benchmark (figures only, no assertions): encrypted + VAPID-signed Web Push sends per second.

Every send goes through pywebpush (``WebPusher.send_async``: http_ece
aes128gcm) with a py_vapid signature.  Runs WebPushSender in this process against the stand-in push service in a
child process (so the two do not share one GIL), over loopback with
connection reuse, and prints the throughput and where the time goes
(encryption, signing, the rest = HTTP + aiohttp + event loop), all measured
in the same run.  The stand-in decrypts and verifies every Nth request so the
figures are of correct pushes.

    python bench/webpush.py [--seconds 8] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import http_ece  # noqa: E402

from pushproxy.events import MessageInfo  # noqa: E402
from pushproxy.extensions.webpush import sender as webpush_mod  # noqa: E402
from pushproxy.extensions.webpush.payload import new_mail_payload  # noqa: E402
from pushproxy.extensions.webpush.settings import WebPushConfig  # noqa: E402
from pushproxy.extensions.webpush.store import VapidKey, WebPushSubscription  # noqa: E402
from pushproxy.extensions.webpush.vapid import VapidKeyPair, VapidKeyring  # noqa: E402
from pushproxy.imap.envelope import envelope_from_fields  # noqa: E402


class MemoryVapidStore:
    def __init__(self) -> None:
        self.keys: dict[str, VapidKey] = {}

    async def vapid_keys(self) -> list[VapidKey]:
        return list(self.keys.values())

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        self.keys[key.key_id] = key


class Timer:
    """Accumulates time spent inside a wrapped function."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0


def start_standin(verify_every: int, subscriptions: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.push_standin",
            "--verify-every",
            str(verify_every),
            "--subscriptions",
            str(subscriptions),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the stand-in push service did not start")
    return proc, json.loads(line)


async def stats(base_url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/_stats") as resp:
        return cast(dict[str, int], await resp.json())


async def run(args: argparse.Namespace, info: dict[str, Any]) -> None:
    enc, sign = Timer(), Timer()
    # pywebpush calls http_ece.encrypt through the module attribute: time it there.
    http_ece.encrypt = enc.wrap(http_ece.encrypt)
    VapidKeyPair.sign_header = sign.wrap(VapidKeyPair.sign_header)  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory() as tmp:
        keyring = await VapidKeyring.load(Path(tmp) / "vapid.pem", MemoryVapidStore())
    cfg = WebPushConfig(enabled=True, allow_private_endpoints=True, timeout=10.0, retry_budget=0)
    subs = [
        WebPushSubscription("bench", s["id"][:8], s["endpoint"], s["p256dh"], s["auth"], keyring.current.key_id)
        for s in info["subscriptions"]
    ]
    env = envelope_from_fields(
        "Mon, 7 Feb 1994 21:52:25 -0800", "afternoon meeting", "Fred Foobar <foobar@example.org>", "<x@example>"
    )
    plaintext = new_mail_payload("INBOX", [MessageInfo(uid=4392, envelope=env)]).data
    outcomes: dict[str, int] = {}

    async with webpush_mod.WebPushSender(cfg, keyring, per_host_limit=args.concurrency) as sender:

        async def worker(n: int, deadline: float) -> int:
            sent = 0
            sub = subs[n % len(subs)]
            while time.perf_counter() < deadline:
                result = await sender.send(sub, plaintext, urgency="high", ttl=60)
                outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
                sent += 1
            return sent

        # Warm-up: open the connections, fill caches.
        await asyncio.gather(*(worker(i, time.perf_counter() + 0.5) for i in range(args.concurrency)))
        enc.reset()
        sign.reset()
        outcomes.clear()
        before = await stats(info["base_url"])

        cpu0, t0 = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(worker(i, t0 + args.seconds) for i in range(args.concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        after = await stats(info["base_url"])

    total = sum(counts)
    wall_us = wall / total * 1e6
    cpu_us = cpu / total * 1e6
    enc_us = enc.seconds / max(1, enc.calls) * 1e6
    sign_us = sign.seconds / max(1, sign.calls) * 1e6
    http_us = max(0.0, cpu_us - enc_us - sign_us)

    def share(us: float) -> str:
        return f"{us:7.1f} us ({us / cpu_us * 100:4.1f}% of sender CPU)"

    print(f"sends:            {total} in {wall:.2f}s with {args.concurrency} concurrent senders")
    print(f"throughput:       {total / wall:,.0f} encrypted+signed sends/s (one process, connection reuse)")
    print(f"outcomes:         {outcomes}")
    print(
        f"sender CPU:       {cpu / wall * 100:.0f}% of one core; the rest of the wall time is waiting for the stand-in"
    )
    print(f"per send:         {wall_us:7.1f} us wall, {cpu_us:.1f} us sender CPU, of which")
    print(f"  encryption:     {share(enc_us)}  http_ece (via pywebpush), RFC 8291 aes128gcm, new ECDH key per message")
    print(f"  VAPID signing:  {share(sign_us)}  py_vapid ES256 JWT, fresh claims per request")
    print(f"  HTTP + rest:    {share(http_us)}  pywebpush WebPusher, aiohttp POST, event loop, bookkeeping")
    received = after["requests"] - before["requests"]
    problems = after["with_problems"] - before["with_problems"]
    print(
        f"stand-in:         {received} received, {problems} verified requests with problems "
        f"(every {args.verify_every}th decrypted and checked)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--verify-every", type=int, default=50)
    parser.add_argument("--subscriptions", type=int, default=8)
    args = parser.parse_args()
    proc, info = start_standin(args.verify_every, args.subscriptions)
    try:
        asyncio.run(run(args, info))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
