"""The extension API: the list, extension-owned config sections and schema parts, merged watch requests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pushproxy import extensions
from pushproxy.config import Config, ConfigError, load_config
from pushproxy.extensions import check_sections
from pushproxy.extensions.base import Extension, WatchRequest
from pushproxy.extensions.manager import ExtensionManager, merge_requests
from pushproxy.extensions.webpush.settings import WebPushConfig
from pushproxy.store import tables
from pushproxy.store.schema import SchemaPart
from pushproxy.watch.spec import WatchSpec
from tests.support.eventlog import EventLog, EventLogSettings


def test_the_list_names_the_push_protocols_and_the_config_enables_them() -> None:
    """pushproxy's own list holds real push protocols only; the tests' eventlog comes from an entry point."""
    production = [cls().name for cls in extensions.extension_classes(installed=False)]
    assert production == ["xapplepush", "webpush", "deltachat"]
    names = [cls().name for cls in extensions.extension_classes()]
    assert names == ["xapplepush", "webpush", "deltachat", "eventlog"]
    assert not ExtensionManager.for_config(Config())  # a plain transparent proxy
    enabled = ExtensionManager.for_config(Config(webpush={"enabled": True}))
    assert enabled.names() == ["webpush"]


def test_an_extension_is_discovered_from_an_installed_distributions_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a third-party package does: its distribution's metadata names the class (group pushproxy.extensions)."""
    (tmp_path / "thirdparty_recorder.py").write_text(
        "from pushproxy.extensions.base import Extension\n\n"
        "class Recorder(Extension):\n"
        "    def __init__(self):\n"
        "        super().__init__(name='recorder')\n"
    )
    info = tmp_path / "thirdparty_recorder-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-recorder\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pushproxy.extensions]\nrecorder = thirdparty_recorder:Recorder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [cls().name for cls in extensions.extension_classes()]
    # pushproxy's list first, then the entry points by name
    assert names == ["xapplepush", "webpush", "deltachat", "eventlog", "recorder"]
    assert list(extensions.available()) == names  # by the entry point's name
    # Installed is not loaded: the config's extensions list says which are (default: pushproxy's own).
    assert not ExtensionManager.for_config(Config())
    listed = Config(extensions=["recorder"])
    assert ExtensionManager.for_config(listed).names() == ["recorder"]  # on once listed (configure: True)


def test_an_extension_section_is_validated_by_its_own_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(extensions=["eventlog"], eventlog={"path": str(tmp_path / "e.jsonl"), "accounts": ["Alice"]})
    section = config.section("eventlog", EventLogSettings)
    assert isinstance(section, EventLogSettings) and section.path == tmp_path / "e.jsonl"
    assert ExtensionManager.for_config(config).names() == ["eventlog"]
    monkeypatch.setenv("PUSHPROXY_EXTENSIONS", "eventlog")
    monkeypatch.setenv("PUSHPROXY_EVENTLOG__MAILBOXES", '["INBOX", "Junk"]')
    section = load_config(None).section("eventlog", EventLogSettings)
    assert isinstance(section, EventLogSettings) and section.mailboxes == ["INBOX", "Junk"]
    monkeypatch.setenv("PUSHPROXY_EVENTLOG__COLOUR", "red")
    # An extension's section reports errors like the core's: the key and the variable that set it.
    with pytest.raises(
        ConfigError, match=r"eventlog\.colour \(environment variable PUSHPROXY_EVENTLOG__COLOUR\): unknown key"
    ):
        ExtensionManager.for_config(load_config(None))


def test_each_section_reports_its_own_errors_under_its_name(tmp_path: Path) -> None:
    path = tmp_path / "pushproxy.yaml"
    path.write_text(
        "extensions: [xapplepush, webpush, eventlog]\n"
        "webpush: {ttl: soon, colour: red}\neventlog: {accounts: 3}\napnss: {enabled: true}\nlog: {level: info}\n"
    )
    expected = [
        f"invalid configuration in {path}:",
        "  apnss: unknown key (did you mean apns?)",  # no core section and no extension claims it
        "  webpush.ttl: Input should be a valid integer, unable to parse string as an integer",
        "  webpush.colour: unknown key",
        "  eventlog.accounts: Input should be a valid list",
    ]
    with pytest.raises(ConfigError) as raised:
        check_sections(load_config(path))  # as the manager configures them
    assert str(raised.value).splitlines() == expected
    with pytest.raises(ConfigError) as raised:
        load_config(path, extensions.catalogue())  # as the CLI loads the file
    assert str(raised.value).splitlines() == expected


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


def test_config_knows_no_extension_and_each_section_is_typed_by_its_model() -> None:
    """The core declares its sections; an extension's section is validated by its model when read."""
    assert not set(Config.model_fields) & {"apns", "webpush", "deltachat", "eventlog"}
    config = Config()
    for cls in extensions.extension_classes():
        assert cls.section is not None and cls.settings is not None
        assert isinstance(config.section(cls.section, cls.settings), cls.settings)
    with pytest.raises(TypeError, match="not a"):
        config.section("apns", EventLogSettings)
    given = WebPushConfig(enabled=True)
    assert Config(webpush=given).section("webpush", WebPushConfig) is given  # a model already built is kept


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
    """Any module imports first in a fresh interpreter (no import cycle that only works in one order)."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
