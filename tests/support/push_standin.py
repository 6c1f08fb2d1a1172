"""A stand-in Web Push service (RFC 8030) for tests: aiohttp on 127.0.0.1, in its own thread and loop.

It plays both halves of a real deployment: the push service (accepts POSTs,
answers as programmed) and the user agent (holds each subscription's P-256
private key and auth secret, and decrypts every message on its own with
``http_ece``, independent of the proxy's encryption code).  It checks each
request the way a strict push service would and records problems instead of
failing, so tests can assert on ``record.problems``:

- ``Content-Encoding: aes128gcm``, a numeric ``TTL``, a valid ``Urgency``;
- ``Authorization: vapid t=<jwt>,k=<key>``: ES256 signature made with ``k``,
  ``aud`` = the endpoint's origin, ``exp`` in the future and at most 24 h
  ahead, ``sub`` a mailto: or https: URI;
- one aes128gcm record whose plaintext is at most 3993 bytes.

Answers are programmable per subscription (a queue, then a default) or for
all subscriptions: 201 by default, any status (with headers such as
Retry-After), a hang, or a 307 redirect to ``/redirected/<id>`` (whose hits
are recorded separately, so a test can show nobody followed it).

Usage::

    with PushStandin() as standin:
        sub = standin.new_subscription()
        standin.program(sub, Answer.status(429, retry_after="1"), Answer.ok())
        ... send to sub.endpoint with sub.p256dh / sub.auth ...
        records = await standin.wait_for(sub, 1)

``python -m tests.support.push_standin`` runs it as a process (used by
bench/webpush.py): it prints one JSON line (base URL and a subscription) and
serves until stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import struct
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDict

MAX_PLAINTEXT = 3993
_URGENCIES = {"very-low", "low", "normal", "high"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class StandinSubscription:
    id: str
    endpoint: str
    p256dh: str  # base64url, what a browser hands to the application
    auth: str  # base64url, 16 bytes
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    auth_secret: bytes = field(repr=False)

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "endpoint": self.endpoint, "p256dh": self.p256dh, "auth": self.auth}


@dataclass(frozen=True)
class Answer:
    """What the stand-in answers to one request."""

    code: int = 201
    headers: tuple[tuple[str, str], ...] = ()
    hang: float | None = None  # seconds to hold the request without answering
    redirect: bool = False  # 307 to /redirected/<id>

    @classmethod
    def ok(cls) -> Answer:
        return cls(201)

    @classmethod
    def status(cls, code: int, *, retry_after: str | None = None) -> Answer:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls(code, headers)

    @classmethod
    def hanging(cls, seconds: float = 30.0) -> Answer:
        return cls(hang=seconds)

    @classmethod
    def redirecting(cls) -> Answer:
        return cls(307, redirect=True)


@dataclass
class ReceivedPush:
    sub_id: str
    path: str
    received_at: float  # time.monotonic()
    headers: CIMultiDict[str]  # HTTP header names are case-insensitive (pywebpush sends lower case)
    body_length: int
    peer: tuple[str, int] | None = None  # client address: shows connection reuse
    plaintext: bytes | None = None
    vapid_claims: dict[str, Any] | None = None
    vapid_key: str | None = None
    problems: list[str] = field(default_factory=list)
    answered: int | None = None  # status sent; None while hanging / for a hang
    verified: bool = True  # False when verification was skipped (verify_every)

    @property
    def accepted(self) -> bool:
        return self.answered is not None and 200 <= self.answered < 300


class PushStandin:
    def __init__(self, *, verify_every: int = 1, keep_records: bool = True, host: str = "127.0.0.1") -> None:
        self._verify_every = max(1, verify_every)
        self._keep_records = keep_records
        self._host = host
        self._lock = threading.Lock()
        self._subs: dict[str, StandinSubscription] = {}
        self._queues: dict[str | None, deque[Answer]] = defaultdict(deque)
        self._defaults: dict[str | None, Answer] = {}
        self._records: list[ReceivedPush] = []
        self._redirect_hits: list[str] = []
        self._count = 0
        self._problem_count = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> PushStandin:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._serve_stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="push-standin", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stopping is not None:
            loop.call_soon_threadsafe(self._stopping.set)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> PushStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve_start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/push/{id}", self._handle_push)
        app.router.add_post("/redirected/{id}", self._handle_redirected)
        app.router.add_get("/redirected/{id}", self._handle_redirected)
        app.router.add_get("/_stats", self._handle_stats)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _serve_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # --- subscriptions and programming -----------------------------------------------
    def new_subscription(self) -> StandinSubscription:
        key = ec.generate_private_key(ec.SECP256R1())
        raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        secret = os.urandom(16)
        sub_id = uuid.uuid4().hex
        sub = StandinSubscription(
            id=sub_id,
            endpoint=f"{self.base_url}/push/{sub_id}",
            p256dh=_b64url(raw),
            auth=_b64url(secret),
            private_key=key,
            auth_secret=secret,
        )
        with self._lock:
            self._subs[sub_id] = sub
        return sub

    def program(self, sub: StandinSubscription | None, *answers: Answer) -> None:
        """Queue answers for a subscription (None: any subscription without its own queue)."""
        with self._lock:
            self._queues[sub.id if sub else None].extend(answers)

    def set_default(self, sub: StandinSubscription | None, answer: Answer) -> None:
        """Answer used once the queue is empty (default 201)."""
        with self._lock:
            self._defaults[sub.id if sub else None] = answer

    def _next_answer(self, sub_id: str) -> Answer:
        with self._lock:
            for key in (sub_id, None):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
            return self._defaults.get(sub_id) or self._defaults.get(None) or Answer.ok()

    # --- results -----------------------------------------------------------------------
    @property
    def records(self) -> list[ReceivedPush]:
        with self._lock:
            return list(self._records)

    def records_for(self, sub: StandinSubscription, *, accepted_only: bool = False) -> list[ReceivedPush]:
        with self._lock:
            return [r for r in self._records if r.sub_id == sub.id and (r.accepted or not accepted_only)]

    @property
    def redirect_hits(self) -> list[str]:
        with self._lock:
            return list(self._redirect_hits)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    async def wait_for(
        self, sub: StandinSubscription, n: int, timeout: float = 5.0, *, accepted_only: bool = True
    ) -> list[ReceivedPush]:
        """Wait (without blocking the caller's loop) until ``sub`` got ``n`` requests (2xx ones by default)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.records_for(sub, accepted_only=accepted_only)
            if len(got) >= n:
                return got
            if time.monotonic() >= deadline:
                raise TimeoutError(f"stand-in: {len(got)} of {n} pushes for {sub.id} after {timeout}s")
            await asyncio.sleep(0.01)

    # --- HTTP handlers -------------------------------------------------------------------
    async def _handle_push(self, request: web.Request) -> web.StreamResponse:
        sub_id = request.match_info["id"]
        body = await request.read()
        record = ReceivedPush(
            sub_id=sub_id,
            path=request.path,
            received_at=time.monotonic(),
            headers=CIMultiDict(request.headers),
            body_length=len(body),
            peer=request.transport.get_extra_info("peername")[:2] if request.transport else None,
        )
        with self._lock:
            self._count += 1
            verify = (self._count - 1) % self._verify_every == 0
            sub = self._subs.get(sub_id)
        if sub is None:
            record.problems.append("unknown subscription")
        elif verify:
            self._verify(record, request, body, sub)
        else:
            record.verified = False
        answer = self._next_answer(sub_id) if sub is not None else Answer.status(404)
        if answer.hang is None:
            record.answered = answer.code
        with self._lock:
            if record.problems:
                self._problem_count += 1
            if self._keep_records:
                self._records.append(record)
        if answer.hang is not None:
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), answer.hang)
            return web.Response(status=503)
        headers = dict(answer.headers)
        if answer.redirect:
            headers["Location"] = f"{self.base_url}/redirected/{sub_id}"
        if 200 <= answer.code < 300:
            headers.setdefault("Location", f"{self.base_url}/message/{uuid.uuid4().hex}")
        return web.Response(status=answer.code, headers=headers)

    async def _handle_redirected(self, request: web.Request) -> web.Response:
        with self._lock:
            self._redirect_hits.append(request.match_info["id"])
        return web.Response(status=201)

    async def _handle_stats(self, request: web.Request) -> web.Response:
        with self._lock:
            stats = {"requests": self._count, "with_problems": self._problem_count}
        return web.json_response(stats)

    # --- checks --------------------------------------------------------------------------
    def _verify(self, record: ReceivedPush, request: web.Request, body: bytes, sub: StandinSubscription) -> None:
        problems = record.problems
        headers = request.headers
        if headers.get("Content-Encoding") != "aes128gcm":
            problems.append(f"Content-Encoding is {headers.get('Content-Encoding')!r}, not aes128gcm")
        ttl = headers.get("TTL")
        if ttl is None or not ttl.isdigit():
            problems.append(f"missing or invalid TTL header: {ttl!r}")
        urgency = headers.get("Urgency")
        if urgency is not None and urgency not in _URGENCIES:
            problems.append(f"invalid Urgency {urgency!r}")
        self._verify_vapid(record, headers.get("Authorization"))
        self._decrypt(record, body, sub)

    def _verify_vapid(self, record: ReceivedPush, authorization: str | None) -> None:
        problems = record.problems
        if not authorization or not authorization.startswith("vapid "):
            problems.append("missing vapid Authorization")
            return
        params: dict[str, str] = {}
        for part in authorization[len("vapid ") :].split(","):
            name, _, value = part.strip().partition("=")
            params[name.strip()] = value.strip()
        token, key_b64 = params.get("t"), params.get("k")
        if not token or not key_b64:
            problems.append("vapid Authorization without t= and k=")
            return
        record.vapid_key = key_b64
        try:
            raw_key = _b64url_decode(key_b64)
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_key)
            head_b64, claims_b64, sig_b64 = token.split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(sig_b64)
        except (ValueError, TypeError) as exc:
            problems.append(f"malformed VAPID token or key: {exc}")
            return
        record.vapid_claims = claims
        if len(raw_key) != 65:
            problems.append("k= is not an uncompressed P-256 point")
        if header.get("alg") != "ES256":
            problems.append(f"JWT alg is {header.get('alg')!r}, not ES256")
        if len(signature) != 64:
            problems.append("ES256 signature is not 64 bytes (r||s)")
        else:
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            try:
                public_key.verify(
                    encode_dss_signature(r, s),
                    f"{head_b64}.{claims_b64}".encode("ascii"),
                    ec.ECDSA(hashes.SHA256()),
                )
            except InvalidSignature:
                problems.append("JWT signature does not verify with k=")
        if claims.get("aud") != self.base_url:
            problems.append(f"aud is {claims.get('aud')!r}, not the endpoint origin {self.base_url!r}")
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int):
            problems.append("exp missing or not an integer")
        elif exp <= now:
            problems.append("exp is in the past")
        elif exp > now + 24 * 3600:
            problems.append("exp is more than 24 h ahead")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            problems.append(f"sub missing or not a mailto:/https: URI: {sub!r}")

    def _decrypt(self, record: ReceivedPush, body: bytes, sub: StandinSubscription) -> None:
        problems = record.problems
        if len(body) < 21:
            problems.append("body too short for an aes128gcm header")
            return
        rs, idlen = struct.unpack("!IB", body[16:21])
        content = body[21 + idlen :]
        if idlen != 65:
            problems.append(f"keyid is {idlen} bytes, not the 65-byte sender key")
        if len(content) > rs:
            problems.append("more than one record")
        if len(body) > 4096:
            problems.append(f"body of {len(body)} bytes exceeds 4096")
        try:
            # dh is left to http_ece, which takes it from the keyid of the
            # aes128gcm header (passing dh= explicitly makes it try to decode
            # the binary keyid as UTF-8).
            plaintext = http_ece.decrypt(
                body, version="aes128gcm", private_key=sub.private_key, auth_secret=sub.auth_secret
            )
        except http_ece.ECEException as exc:
            problems.append(f"decryption failed: {exc.message}")
            return
        except Exception as exc:
            problems.append(f"decryption failed: {exc!r}")
            return
        record.plaintext = plaintext
        if len(plaintext) > MAX_PLAINTEXT:
            problems.append(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")


def main(argv: list[str] | None = None) -> None:
    """Run as a process: print {"base_url", "subscription"} as one JSON line, serve until stdin closes."""
    parser = argparse.ArgumentParser(description="stand-in Web Push service (tests and bench only)")
    parser.add_argument("--verify-every", type=int, default=1, help="verify and decrypt every Nth request")
    parser.add_argument("--subscriptions", type=int, default=1)
    args = parser.parse_args(argv)
    with PushStandin(verify_every=args.verify_every, keep_records=False) as standin:
        subs = [standin.new_subscription() for _ in range(args.subscriptions)]
        print(json.dumps({"base_url": standin.base_url, "subscriptions": [s.as_json() for s in subs]}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
