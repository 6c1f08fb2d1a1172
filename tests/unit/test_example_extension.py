"""The example extension of the author's guide (docs/example_extension.py) runs as the guide says.

Through the real parts: its section validated by its own model, its command
answered in a real Session through the extension manager, the watchers told
of the account, a new-mail event handed to it by the push pipeline's fan-out.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from pushproxy.config import Config, ConfigError, load_config
from pushproxy.events import MessageInfo, NewMail
from pushproxy.extensions import catalogue
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.proxy.session import Session, SessionSettings
from pushproxy.push.pipeline import FanOut
from pushproxy.store.sqlite import SqliteStore
from pushproxy.store.vault import Vault
from tests.support.sessions import FakeIO, Sink, settle

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "example_extension.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_extension", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_extension"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await s.open()
    yield s
    await s.close()


def test_its_section_is_validated_by_its_model(example: ModuleType) -> None:
    assert not example.NewCount().configure(Config())  # off by default
    with pytest.raises(ConfigError, match=r"newcount\.colour: unknown key"):
        example.NewCount().configure(Config(newcount={"enabled": True, "colour": "red"}))


def test_installed_as_the_guide_says_and_listed_it_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its entry point (the guide's ``pyproject.toml`` lines), then its name in the config's ``extensions``."""
    info = tmp_path / "newcount-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: newcount\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pushproxy.extensions]\nnewcount = example_extension:NewCount\n")
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    monkeypatch.syspath_prepend(str(tmp_path))
    listed = load_config(None, catalogue(), extensions=["webpush", "newcount"], newcount={"enabled": True})
    assert ExtensionManager.for_config(listed).names() == ["newcount"]  # webpush: loaded, left off
    with pytest.raises(ConfigError, match="newcount: extension newcount's section, but newcount is not in extensions"):
        load_config(None, catalogue(), newcount={"enabled": True})  # installed, not listed: its section refused


async def test_the_example_counts_new_mail_for_the_accounts_that_asked(example: ModuleType, store: SqliteStore) -> None:
    config = Config(newcount={"enabled": True})
    ext = example.NewCount()
    assert ext.configure(config)
    manager = ExtensionManager([ext])
    manager.attach(config, store)
    followed: list[tuple[str, str | None]] = []

    async def registration_changed(account: str, session_id: str | None) -> None:
        followed.append((account, session_id))

    manager.follow(registration_changed)
    await manager.start()

    io = FakeIO()
    session = Session(
        io,
        session_id="s1",
        peer="test",
        client_tls=False,
        settings=SessionSettings(),
        extensions=manager,
        credentials=Sink(),
    )
    session.upstream_data(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
    session.client_data(b"a1 LOGIN alice pw\r\n")
    session.upstream_data(b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
    assert b"XNEWCOUNT" in bytes(io.client)  # its capability, after login
    assert await manager.spec("alice") is None  # not watched before it asked

    session.client_data(b"a2 XNEWCOUNT\r\n")
    await settle()
    assert bytes(io.client).endswith(b"* XNEWCOUNT 0\r\na2 OK XNEWCOUNT completed.\r\n")
    assert followed == [("alice", "s1")]
    spec = await manager.spec("alice")
    assert spec is not None and spec.mailboxes == ("INBOX",)

    fan_out = FanOut(manager)
    fan_out.hand_out(NewMail("alice", "INBOX", (MessageInfo(uid=7), MessageInfo(uid=8))))
    fan_out.hand_out(NewMail("bob", "INBOX", (MessageInfo(uid=1),)))  # bob never asked
    await fan_out.flush()
    session.client_data(b"a3 XNEWCOUNT\r\n")
    await settle()
    assert bytes(io.client).endswith(b"* XNEWCOUNT 2\r\na3 OK XNEWCOUNT completed.\r\n")
    await manager.stop()
