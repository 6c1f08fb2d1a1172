"""The local-port warning at start: the upstream connections of a large node may outnumber the local ports."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pushproxy import fdlimit
from pushproxy.config import Config, SessionConfig, UpstreamConfig


def config(max_connections: int = 1000) -> Config:
    return Config(
        upstream=UpstreamConfig(host="127.0.0.1", port=993), session=SessionConfig(max_connections=max_connections)
    )


def test_local_ports_counts_the_range(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("32768\t60999\n")
    assert fdlimit.local_ports(tmp_path / "range") == 28232
    assert fdlimit.local_ports(tmp_path / "missing") is None
    (tmp_path / "bad").write_text("nonsense\n")
    assert fdlimit.local_ports(tmp_path / "bad") is None


def test_one_warning_when_the_upstream_connections_exceed_the_local_ports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pushproxy.fdlimit")
    (tmp_path / "range").write_text("32768\t60999\n")
    assert fdlimit.check_local_ports(config(), 27_000, tmp_path / "range") is None  # 28,000 fit
    assert not caplog.records
    assert fdlimit.check_local_ports(config(), 50_000, tmp_path / "range") == 51_000
    (record,) = caplog.records
    assert "51000 connections" in record.getMessage() and "28232 local ports" in record.getMessage()
    assert fdlimit.check_local_ports(config(), 50_000, tmp_path / "missing") is None  # unknown: nothing said
