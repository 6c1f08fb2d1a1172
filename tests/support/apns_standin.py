"""A stand-in for Apple's APNs provider API: HTTP/2 over TLS on 127.0.0.1, in its own thread.

It runs its own asyncio loop in a daemon thread, so the same instance serves a pusher
in the test's event loop and a proxy running as a subprocess.

    standin = ApnsStandin(certs.server_cert, certs.server_key, client_ca=certs.ca_cert)
    host, port = standin.start()          # apns.endpoint = f"{host}:{port}", apns.ca_file = certs.ca_cert
    standin.script(token, [429, 200])     # the next two answers for that token
    ...
    standin.wait_for(1, timeout=5)        # blocking (subprocess tests)
    await standin.async_wait_for(1, 5)    # from a coroutine in another loop
    standin.requests                      # snapshot list of ApnsRequest
    standin.stop()

Modes:
- certificate mode (``client_ca`` given): TLS requires a client certificate signed by
  ``client_ca``; the subject's UID is recorded, and a request whose ``apns-topic``
  differs from it gets 400 TopicDisallowed like Apple.
- token mode (``token_key`` given): no client certificate; every request must carry
  ``authorization: bearer <JWT>`` signed ES256 with that key, header ``kid`` = key_id,
  claim ``iss`` = team_id, ``iat`` within the last hour; otherwise 403
  MissingProviderToken / InvalidProviderToken / ExpiredProviderToken.

Answers: 200 with ``apns-id`` by default; or scripted per token (FIFO) or globally
(FIFO, used when a token has no script of its own).  An answer is an int status (the
reason is Apple's usual one for it), the string ``"hang"`` (never answer that stream),
or an :class:`Answer` for full control (reason, timestamp, retry-after).
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

DEFAULT_REASONS = {
    400: "BadDeviceToken",
    403: "BadCertificate",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


@dataclass(frozen=True)
class Answer:
    status: int = 200
    reason: str | None = None  # default: DEFAULT_REASONS[status]
    timestamp_ms: int | None = None  # 410 only; default: now
    retry_after: str | None = None  # value of a Retry-After header
    hang: bool = False  # never answer this stream

    def body(self) -> bytes:
        if self.status == 200:
            return b""
        doc: dict[str, Any] = {"reason": self.reason or DEFAULT_REASONS.get(self.status, "BadRequest")}
        if self.status == 410:
            doc["timestamp"] = self.timestamp_ms if self.timestamp_ms is not None else int(time.time() * 1000)
        return json.dumps(doc).encode()


HANG = Answer(hang=True)
AnswerSpec = int | str | Answer


def as_answer(spec: AnswerSpec) -> Answer:
    if isinstance(spec, Answer):
        return spec
    if spec == "hang":
        return HANG
    if isinstance(spec, int):
        return Answer(status=spec)
    raise ValueError(f"unknown answer {spec!r}: use an int status, 'hang' or Answer(...)")


@dataclass
class ApnsRequest:
    """One request as the stand-in saw it (and what it answered)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body, None if it was not JSON
    time: float  # time.time() when the request was complete
    client_uid: str | None  # subject UID of the TLS client certificate (certificate mode)
    status: int | None = None  # answered status; None while unanswered (or hung)
    reason: str | None = None

    @property
    def token(self) -> str:
        prefix = "/3/device/"
        return self.path[len(prefix) :] if self.path.startswith(prefix) else ""


@dataclass
class _Stream:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


def _peer_uid(transport: asyncio.BaseTransport) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    attrs = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(attrs[0].value) if attrs else None


class _H2ServerProtocol(asyncio.Protocol):
    def __init__(self, standin: ApnsStandin) -> None:
        self.standin = standin
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.client_uid: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.client_uid = _peer_uid(transport)
        self.standin._connections.add(self)
        with self.standin._lock:
            self.standin.connections_accepted += 1
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.standin._connections.discard(self)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = _Stream(headers=dict(event.headers or []))  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    self._handle(event.stream_id, stream)
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
            elif isinstance(event, PingReceived):  # h2 answers it; count it for the tests
                with self.standin._changed:
                    self.standin.pings_received += 1
                    self.standin._changed.notify_all()
            elif isinstance(event, ConnectionTerminated):
                assert self.transport is not None
                self.transport.close()
        self._flush()

    def _handle(self, stream_id: int, stream: _Stream) -> None:
        headers = stream.headers
        body = bytes(stream.body)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = ApnsRequest(
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            headers={k: v for k, v in headers.items()},
            body=body,
            json=parsed,
            time=time.time(),
            client_uid=self.client_uid,
        )
        answer = self.standin._decide(request)
        request.status = None if answer.hang else answer.status
        request.reason = None if answer.hang or answer.status == 200 else json.loads(answer.body())["reason"]
        self.standin._record(request)
        if answer.hang:
            return
        response_headers = [
            (":status", str(answer.status)),
            ("apns-id", headers.get("apns-id") or str(uuid.uuid4()).upper()),
        ]
        payload = answer.body()
        if answer.retry_after is not None:
            response_headers.append(("retry-after", answer.retry_after))
        if payload:
            response_headers.append(("content-type", "application/json"))
            response_headers.append(("content-length", str(len(payload))))
        self.conn.send_headers(stream_id, response_headers, end_stream=not payload)
        if payload:
            self.conn.send_data(stream_id, payload, end_stream=True)


class ApnsStandin:
    def __init__(
        self,
        server_cert: Path | str,
        server_key: Path | str,
        client_ca: Path | str | None = None,
        *,
        token_key: Path | str | None = None,
        key_id: str | None = None,
        team_id: str | None = None,
    ) -> None:
        if (client_ca is None) == (token_key is None):
            raise ValueError("give either client_ca (certificate mode) or token_key (token mode)")
        self.mode = "certificate" if client_ca is not None else "token"
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(str(server_cert), str(server_key))
        self._ssl.set_alpn_protocols(["h2"])
        if client_ca is not None:
            self._ssl.verify_mode = ssl.CERT_REQUIRED
            self._ssl.load_verify_locations(str(client_ca))
        self._token_public_key: Any = None
        if token_key is not None:
            private = serialization.load_pem_private_key(Path(token_key).read_bytes(), password=None)
            self._token_public_key = private.public_key()
        self.key_id = key_id
        self.team_id = team_id

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[ApnsRequest] = []
        self._scripts: dict[str, collections.deque[Answer]] = {}
        self._fixed: dict[str, Answer] = {}
        self._queue: collections.deque[Answer] = collections.deque()
        self._default = Answer(200)
        self.connections_accepted = 0  # TLS connections accepted so far
        self.pings_received = 0  # HTTP/2 PINGs from clients (answered by h2)
        self.tls_errors: list[str] = []  # handshake failures and other loop errors, for diagnosis

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_H2ServerProtocol] = set()
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_error)
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="apns-standin", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), loop)
        self.port = future.result(timeout=10)
        return self.host, self.port

    async def _listen(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _H2ServerProtocol(self), self.host, 0, ssl=self._ssl, ssl_handshake_timeout=10
        )
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._connections):
                if conn.transport is not None:
                    conn.transport.abort()
            if self._server is not None:
                await asyncio.wait_for(self._server.wait_closed(), 5)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> ApnsStandin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The value for ``apns.endpoint``."""
        return f"{self.host}:{self.port}"

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        with self._lock:
            self.tls_errors.append(f"{context.get('message')}: {exc!r}")

    # -- programming answers -------------------------------------------------------

    def script(self, token: str, answers: Iterable[AnswerSpec]) -> None:
        """Append answers for this token's next requests (FIFO); then back to the default."""
        with self._lock:
            self._scripts.setdefault(token, collections.deque()).extend(as_answer(a) for a in answers)

    def always(self, token: str, answer: AnswerSpec) -> None:
        """Answer every request for this token this way (after its script, if any)."""
        with self._lock:
            self._fixed[token] = as_answer(answer)

    def enqueue(self, answers: Iterable[AnswerSpec]) -> None:
        """Global FIFO of answers, used for requests whose token has no script of its own."""
        with self._lock:
            self._queue.extend(as_answer(a) for a in answers)

    def set_default(self, answer: AnswerSpec) -> None:
        with self._lock:
            self._default = as_answer(answer)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._scripts.clear()
            self._fixed.clear()
            self._queue.clear()
            self._default = Answer(200)

    # -- looking at what happened ----------------------------------------------------

    @property
    def requests(self) -> list[ApnsRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, token: str) -> list[ApnsRequest]:
        return [r for r in self.requests if r.token == token]

    def wait_for(self, n: int, timeout: float = 10.0, token: str | None = None) -> list[ApnsRequest]:
        """Block until at least n requests (for ``token``, if given) arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self._requests if token is None or r.token == token]
                if len(got) >= n:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"APNs stand-in: {len(got)} of {n} requests after {timeout}s")
                self._changed.wait(remaining)

    async def async_wait_for(self, n: int, timeout: float = 10.0, token: str | None = None) -> list[ApnsRequest]:
        """Like wait_for, without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, n, timeout, token)

    # -- inside the server thread ------------------------------------------------------

    def wait_for_pings(self, n: int, timeout: float = 10.0) -> int:
        """Block until ``n`` PINGs in total have arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.pings_received >= n, timeout):
                raise TimeoutError(f"{self.pings_received} PING(s) within {timeout}s, expected {n}")
            return self.pings_received

    def _record(self, request: ApnsRequest) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()

    def _decide(self, request: ApnsRequest) -> Answer:
        auth_problem = self._check_auth(request)
        if auth_problem is not None:
            return auth_problem
        if request.method != "POST" or not request.path.startswith("/3/device/"):
            return Answer(405 if request.method != "POST" else 404, reason="BadPath")
        if not request.headers.get("apns-topic"):
            return Answer(400, reason="MissingTopic")
        if self.mode == "certificate" and request.headers["apns-topic"] != request.client_uid:
            return Answer(400, reason="TopicDisallowed")
        with self._lock:
            script = self._scripts.get(request.token)
            if script:
                return script.popleft()
            if request.token in self._fixed:
                return self._fixed[request.token]
            if self._queue:
                return self._queue.popleft()
            return self._default

    def _check_auth(self, request: ApnsRequest) -> Answer | None:
        if self.mode != "token":
            return None
        value = request.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Answer(403, reason="MissingProviderToken")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self._token_public_key,
                algorithms=["ES256"],
                options={"require": ["iss", "iat"], "verify_iat": True},
            )
        except jwt.PyJWTError:
            return Answer(403, reason="InvalidProviderToken")
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            return Answer(403, reason="InvalidProviderToken")
        if claims["iat"] < time.time() - 3600:
            return Answer(403, reason="ExpiredProviderToken")
        return None
