"""The config's ``extensions`` list and its top-level keys: what is loaded, what is refused, and how it is said."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pushproxy.config import Config, ConfigError, load_config
from pushproxy.extensions import EXTENSIONS, available, catalogue, check_sections
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.extensions.webpush.settings import WebPushConfig
from tests.support.eventlog import EventLogSettings


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("PUSHPROXY_"):
            monkeypatch.delenv(name)


def problems(tmp_path: Path, data: dict[str, object]) -> list[str]:
    """The problem lines of ``data`` as the CLI loads it (``load_config(path, catalogue())``)."""
    path = tmp_path / "pushproxy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as raised:
        load_config(path, catalogue())
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("invalid configuration")
    return lines[1:]


def test_the_default_list_is_the_push_protocols_that_ship_and_load_config_says_so() -> None:
    config = load_config(None, catalogue())
    assert config.extensions == list(EXTENSIONS) == ["xapplepush", "webpush", "deltachat"]
    assert Config().extensions is None  # built in code: None means the same default
    assert check_sections(Config()) == [available()[name] for name in EXTENSIONS]
    # Loaded is not on: each is still off until its section enables it (a plain transparent proxy).
    assert not ExtensionManager.for_config(config)


def test_the_list_picks_the_extensions_and_their_order(tmp_path: Path) -> None:
    path = tmp_path / "pushproxy.yaml"
    path.write_text(
        "extensions: [eventlog, webpush]\n"
        "webpush: {enabled: true}\n"
        f"eventlog: {{path: {tmp_path / 'e.jsonl'}, accounts: [alice]}}\n"
    )
    config = load_config(path, catalogue())
    assert config.extensions == ["eventlog", "webpush"]
    assert isinstance(config.section("eventlog", EventLogSettings), EventLogSettings)
    assert ExtensionManager.for_config(config).names() == ["eventlog", "webpush"]  # the list's order
    # An empty list: no extension at all, a plain transparent proxy whatever the sections would say.
    empty = load_config(None, catalogue(), extensions=[])
    assert empty.extensions == [] and not ExtensionManager.for_config(empty)


def test_an_unknown_name_is_an_error_listing_the_installed_ones(tmp_path: Path) -> None:
    installed = ", ".join(sorted(available()))
    assert installed == "deltachat, eventlog, webpush, xapplepush"
    assert problems(tmp_path, {"extensions": ["webpush", "webpsuh", "smtp", "webpush"]}) == [
        f"  extensions: no extension 'webpsuh' is installed (did you mean webpush?); available: {installed}",
        f"  extensions: no extension 'smtp' is installed; available: {installed}",
        "  extensions: webpush is listed twice",
    ]
    with pytest.raises(ConfigError, match="no extension 'smtp' is installed"):
        check_sections(Config(extensions=["smtp"]))  # the manager's check says the same


def test_the_section_of_an_extension_not_listed_is_refused(tmp_path: Path) -> None:
    """Refused, not ignored: a section that would do nothing is a mistake the admin wants to hear of."""
    assert problems(
        tmp_path, {"extensions": ["xapplepush"], "webpush": {"enabled": True}, "eventlog": {"path": "/x"}}
    ) == [
        "  webpush: extension webpush's section, but webpush is not in extensions (add it, or remove this)",
        "  eventlog: extension eventlog's section, but eventlog is not in extensions (add it, or remove this)",
    ]
    # Installed from an entry point, but the default list is pushproxy's own: not loaded, its section refused.
    with pytest.raises(ConfigError, match="eventlog: extension eventlog's section, but eventlog is not in extensions"):
        ExtensionManager.for_config(Config(eventlog={"path": "/x"}))


def test_a_typod_top_level_key_is_refused_at_load_naming_the_likely_key(tmp_path: Path) -> None:
    assert problems(tmp_path, {"webpsh": {"enabled": True}, "upstrem": {"host": "x"}, "zzz": 1}) == [
        "  webpsh: unknown key (did you mean webpush?)",
        "  upstrem: unknown key (did you mean upstream?)",
        "  zzz: unknown key",
    ]
    # Close to the section of an installed extension that is not listed: still named.
    assert problems(tmp_path, {"eventlgo": {}}) == ["  eventlgo: unknown key (did you mean eventlog?)"]
    # Built in code, the manager refuses it the same way.
    with pytest.raises(ConfigError, match=r"webpsh: unknown key \(did you mean webpush\?\)"):
        ExtensionManager.for_config(Config(webpsh={"enabled": True}))


def test_a_typod_key_inside_a_section_names_the_likely_key_too(tmp_path: Path) -> None:
    """The core's sections and an extension's: the keys of that section are the candidates."""
    assert problems(
        tmp_path,
        {"upstream": {"hots": "x"}, "webpush": {"enabeld": True, "colour": "red"}, "extensions": ["webpush"]},
    ) == [
        "  upstream.hots: unknown key (did you mean host?)",
        "  webpush.enabeld: unknown key (did you mean enabled?)",
        "  webpush.colour: unknown key",
    ]


def test_the_environment_sets_the_list_and_its_problems_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUSHPROXY_EXTENSIONS", "webpush, eventlog")
    assert load_config(None, catalogue()).extensions == ["webpush", "eventlog"]
    monkeypatch.setenv("PUSHPROXY_EXTENSIONS", '["deltachat"]')
    assert load_config(None, catalogue()).extensions == ["deltachat"]
    monkeypatch.setenv("PUSHPROXY_EXTENSIONS", "webpush,nope")
    assert problems(tmp_path, {}) == [
        "  extensions (environment variable PUSHPROXY_EXTENSIONS): no extension 'nope' is installed; "
        "available: deltachat, eventlog, webpush, xapplepush"
    ]
    monkeypatch.setenv("PUSHPROXY_EXTENSIONS", "[not json")
    assert problems(tmp_path, {}) == [
        "  extensions (environment variable PUSHPROXY_EXTENSIONS): "
        "Value error, not a JSON list: give a list, or names separated by commas"
    ]
    monkeypatch.delenv("PUSHPROXY_EXTENSIONS")
    # A variable of a section nobody has is a typo too; one of a section not listed is refused.
    monkeypatch.setenv("PUSHPROXY_WEBPSH__ENABLED", "true")
    monkeypatch.setenv("PUSHPROXY_EVENTLOG__PATH", "/x")
    assert problems(tmp_path, {}) == [
        "  eventlog (environment variable PUSHPROXY_EVENTLOG__PATH): "
        "extension eventlog's section, but eventlog is not in extensions (add it, or remove this)",
        "  webpsh (environment variable PUSHPROXY_WEBPSH__ENABLED): unknown key (did you mean webpush?)",
    ]


def test_every_problem_of_every_section_in_one_message_under_its_name(tmp_path: Path) -> None:
    """The core's, the list's, a typo's, a built-in extension's and an entry point extension's: one message."""
    assert problems(
        tmp_path,
        {
            "extensions": ["webpush", "eventlog", "webpuhs"],
            "upstream": {"port": 0},
            "webpush": {"ttl": "soon"},
            "eventlog": {"colour": "red"},
            "apns": {"enabled": True},
            "admn": {},
        },
    ) == [
        "  upstream.port: Input should be greater than 0",
        "  extensions: no extension 'webpuhs' is installed (did you mean webpush?); "
        "available: deltachat, eventlog, webpush, xapplepush",
        "  apns: extension xapplepush's section, but xapplepush is not in extensions (add it, or remove this)",
        "  admn: unknown key (did you mean admin?)",
        "  webpush.ttl: Input should be a valid integer, unable to parse string as an integer",
        "  eventlog.colour: unknown key",
    ]


def test_a_section_already_built_is_kept_and_a_bad_one_is_a_mapping_error(tmp_path: Path) -> None:
    given = WebPushConfig(enabled=True)
    config = Config(webpush=given)
    check_sections(config)
    assert config.section("webpush", WebPushConfig) is given
    assert problems(tmp_path, {"webpush": "on"}) == ["  webpush: must be a mapping of keys"]
