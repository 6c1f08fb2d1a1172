"""The extension API: the list, extension-owned config sections and schema parts, merged watch requests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pushproxy import extensions
from pushproxy.config import Config, ConfigError, CoreConfig, load_config
from pushproxy.extensions.base import Extension, WatchRequest
from pushproxy.extensions.eventlog import EventLog, EventLogSettings
from pushproxy.extensions.manager import merge_requests
from pushproxy.store import tables
from pushproxy.store.schema import SchemaPart
from pushproxy.watch.detection import WatchSpec


def test_the_list_names_every_extension_and_the_config_enables_them() -> None:
    names = [cls().name for cls in extensions.extension_classes()]
    assert names == ["xapplepush", "webpush", "deltachat", "eventlog"]
    assert extensions.load_extensions(Config()) == []  # a plain transparent proxy
    enabled = extensions.load_extensions(Config(webpush={"enabled": True}))
    assert [ext.name for ext in enabled] == ["webpush"]


def test_an_extension_section_is_validated_by_its_own_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(eventlog={"path": str(tmp_path / "e.jsonl"), "accounts": ["Alice"]})
    section = config.section("eventlog", EventLogSettings)
    assert isinstance(section, EventLogSettings) and section.path == tmp_path / "e.jsonl"
    assert [ext.name for ext in extensions.load_extensions(config)] == ["eventlog"]
    monkeypatch.setenv("PUSHPROXY_EVENTLOG__MAILBOXES", '["INBOX", "Junk"]')
    section = load_config(None).section("eventlog", EventLogSettings)
    assert isinstance(section, EventLogSettings) and section.mailboxes == ["INBOX", "Junk"]
    monkeypatch.setenv("PUSHPROXY_EVENTLOG__COLOUR", "red")
    # An extension's section reports errors like the core's: the key and the variable that set it.
    with pytest.raises(
        ConfigError, match=r"eventlog\.colour \(environment variable PUSHPROXY_EVENTLOG__COLOUR\): unknown key"
    ):
        load_config(None)


async def test_eventlog_watches_only_its_accounts() -> None:
    ext = EventLog()
    assert ext.configure(Config(eventlog={"path": "/nonexistent/e", "accounts": ["alice"]}))
    assert await ext.watched_mailboxes("alice") == WatchRequest(("INBOX",))
    assert await ext.watched_mailboxes("bob") is None


def test_watch_requests_merge_into_one_spec() -> None:
    assert merge_requests([]) is None
    spec = merge_requests([WatchRequest(("Notes", "inbox")), WatchRequest(("INBOX", "Junk"), ("INBOX", "Junk"))])
    assert spec == WatchSpec(("INBOX", "Junk", "Notes"), frozenset({"INBOX", "Junk"}))
    assert spec is not None and not spec.bodies  # nobody asked for message bodies
    spec = merge_requests([WatchRequest(("INBOX",)), WatchRequest(("INBOX",), bodies=True)])
    assert spec is not None and spec.bodies


def test_config_sections_come_from_the_extension_list() -> None:
    """The core declares its sections; every listed extension adds its own (same YAML keys and variables)."""
    core = set(CoreConfig.model_fields)
    assert not core & {"apns", "webpush", "deltachat", "eventlog"}
    sections = {cls.section: cls.settings for cls in extensions.extension_classes()}
    assert set(Config.model_fields) == core | set(sections)
    config = Config()
    for name, model in sections.items():
        assert model is not None and isinstance(config.section(name, model), model)
    with pytest.raises(TypeError, match="not a"):
        config.section("apns", EventLogSettings)


def test_an_extension_brings_its_schema_part(monkeypatch: pytest.MonkeyPatch) -> None:
    listed_parts = tables.parts_of_extensions()
    assert [p.name for p in listed_parts] == ["core", "xapplepush", "webpush", "deltachat"]
    part = SchemaPart("recorder", (("CREATE TABLE recorded (account TEXT NOT NULL)",),))

    class WithTables(Extension):
        schema = part

    listed = extensions.extension_classes()
    monkeypatch.setattr(extensions, "extension_classes", lambda: [*listed, WithTables])
    assert tables.parts_of_extensions() == (*listed_parts, part)


@pytest.mark.parametrize(
    "module",
    ["pushproxy.config", "pushproxy.extensions.webpush.mailboxes", "pushproxy.watch.supervisor", "pushproxy.cli"],
)
def test_each_module_imports_first(module: str) -> None:
    """pushproxy.config imports the extension list: no extension may need the config at import (a cycle)."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
