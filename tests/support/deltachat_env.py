"""What the Delta Chat tests need besides Dovecot and pushproxy: an SMTP server and a gateway stand-in.

- :class:`SmtpRelay`: SMTP submission on 127.0.0.1 (aiosmtpd, AUTH PLAIN/LOGIN
  against the Dovecot users, no TLS) that delivers every accepted message to
  Dovecot over LMTP: Delta Chat needs an SMTP server to configure and to send.
- :class:`GatewayStandin`: the Delta Chat notification gateway's ``POST
  /notify`` on 127.0.0.1 (aiohttp, own thread and loop): records each body
  (the token) and answers 200, or what a test programs (410, 500, ...).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.support.dovecot import Dovecot
from tests.support.proxy import free_port


class _Deliver:
    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.delivered: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        for rcpt in envelope.rcpt_tos:
            await asyncio.to_thread(self.dovecot.deliver, rcpt, data)
        self.delivered.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 OK delivered"


class SmtpRelay:
    """``with SmtpRelay(dovecot) as smtp: smtp.port``: submission that delivers into Dovecot."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.port = free_port()
        self.handler = _Deliver(dovecot)

        def authenticate(server: object, session: Session, envelope: Envelope, mechanism: str, auth_data: object):
            if isinstance(auth_data, LoginPassword):
                user = auth_data.login.decode().partition("@")[0]
                if dovecot.users.get(user) == auth_data.password.decode():
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        with warnings.catch_warnings():  # AUTH without TLS: on loopback, on purpose
            warnings.simplefilter("ignore")
            self.controller = Controller(
                self.handler,
                hostname="127.0.0.1",
                port=self.port,
                authenticator=authenticate,
                auth_require_tls=False,
                auth_required=True,
            )

    def __enter__(self) -> SmtpRelay:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@dataclass
class Notify:
    body: str
    at: float


class GatewayStandin:
    """A loopback ``POST /notify``: ``with GatewayStandin() as gw: gw.url; gw.answers.append(410)``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/notify"
        self.received: list[Notify] = []
        self.answers: deque[int] = deque()  # the next answers, then 200
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    async def _notify(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode("ascii", "replace")
        with self._lock:
            self.received.append(Notify(body, time.monotonic()))
            status = self.answers.popleft() if self.answers else 200
        return web.Response(status=status, text="")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> GatewayStandin:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def bodies(self) -> list[str]:
        with self._lock:
            return [n.body for n in self.received]


def stored_tokens(config_file: Path) -> list[tuple[str, str]]:
    """(account, token) of every Delta Chat token in a proxy's store, read with its own vault key."""
    from pushproxy.config import load_config
    from pushproxy.extensions.deltachat.store import DeltaChatQueries
    from pushproxy.store.factory import open_store

    async def read() -> list[tuple[str, str]]:
        store = await open_store(load_config(config_file))
        try:
            return [(t.account, t.token) for t in await store.queries(DeltaChatQueries).list_tokens()]
        finally:
            await store.close()

    return asyncio.run(read())


def rpc_server_path() -> str:
    """The ``deltachat-rpc-server`` of this interpreter's environment (the pinned PyPI wheel)."""
    return str(Path(sys.executable).parent / "deltachat-rpc-server")


def transport(user: str, password: str, imap_port: int, imap_security: str, smtp_port: int) -> dict[str, object]:
    """Delta Chat 2.65's EnteredLoginParam: IMAP through the proxy, SMTP to the relay, the test CA not trusted."""
    return {
        "addr": f"{user}@localhost",
        "password": password,
        "imapServer": "127.0.0.1",
        "imapPort": imap_port,
        "imapSecurity": imap_security,
        "imapUser": user,
        "smtpServer": "127.0.0.1",
        "smtpPort": smtp_port,
        "smtpSecurity": "plain",
        "smtpUser": user,
        "certificateChecks": "acceptInvalidCertificates",
    }
