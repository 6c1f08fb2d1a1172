"""load_config layers YAML < PUSHPROXY_* environment < overrides, with no state kept on the Config class."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pushproxy.config import Config, ConfigError, load_config


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pushproxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_environment_over_yaml_and_overrides_over_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"upstream": {"host": "yaml.example", "port": 1993}, "log": {"level": "info"}})
    monkeypatch.setenv("PUSHPROXY_UPSTREAM__HOST", "env.example")
    monkeypatch.setenv("PUSHPROXY_LOG__LEVEL", "debug")
    config = load_config(path, log={"level": "warning"})
    assert config.upstream.host == "env.example"  # environment over YAML
    assert config.upstream.port == 1993  # the rest of the YAML section stays
    assert config.log.level == "warning"  # overrides over both


def test_yaml_of_one_load_does_not_reach_the_next(tmp_path: Path) -> None:
    # The YAML used to travel to pydantic-settings through a class variable (Config._yaml_data).
    load_config(write(tmp_path, {"upstream": {"host": "first.example"}}))
    assert not hasattr(Config, "_yaml_data")
    assert load_config(None).upstream.host == Config().upstream.host != "first.example"


def test_errors_name_the_file_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"upstream": {"port": "not a port"}})
    with pytest.raises(ConfigError, match=r"in .*pushproxy\.yaml:\n  upstream\.port"):
        load_config(path)
    monkeypatch.setenv("PUSHPROXY_UPSTREAM__PORT", "nope")
    with pytest.raises(ConfigError, match="PUSHPROXY_UPSTREAM__PORT"):
        load_config(None)
