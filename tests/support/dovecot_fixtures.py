"""pytest fixtures for a real Dovecot server (load with ``pytest_plugins``).

- ``dovecot``: function-scoped, started instance (users alice/alicepw, bob/bobpw, TLS, NOTIFY).
- ``dovecot_factory``: function-scoped ``factory(*, start=True, **Dovecot kwargs) -> Dovecot``
  for extra instances (``master_user=...``, ``notify=False``, ``tls=False``, ...).
- ``dovecot_session``: one shared instance for the whole session; tests using it must not
  stop/kill/restart it and should use their own users (``add_user``) or tolerate other mail.

All fixtures skip when Dovecot cannot be run here (binary missing / not root).

Instances live in ``/tmp/pushproxy-dovecot/<random>`` rather than pytest's tmp_path: pytest
resets /tmp/pytest-of-<user> to mode 0700 whenever *any* pytest session starts, which would
cut the unprivileged Dovecot processes off from their mail in concurrently running sessions.
Directories are removed after passing tests and kept (path + log tail in the report) after
failures; kept ones older than a day are pruned.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.dovecot import TMP_ROOT, Dovecot, dovecot_available, new_base_dir

_PRUNE_AGE = 24 * 3600

_instances_key = pytest.StashKey[list[Dovecot]]()
_failed_key = pytest.StashKey[bool]()


class DovecotFactory(Protocol):
    def __call__(self, *, start: bool = True, **kwargs: Any) -> Dovecot: ...


def _require_dovecot() -> None:
    reason = dovecot_available()
    if reason is not None:
        pytest.skip(f"Dovecot test server unavailable: {reason}")


def _prune_old() -> None:
    cutoff = time.time() - _PRUNE_AGE
    for old in TMP_ROOT.glob("dc-*"):
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def new_dovecot_base_dir() -> Path:
    """A fresh, world-traversable directory for one Dovecot instance."""
    return new_base_dir()


def _cleanup(instances: list[Dovecot], keep: bool) -> None:
    errors: list[BaseException] = []
    for dc in reversed(instances):
        try:
            dc.stop()
        except Exception as exc:  # stop the others anyway
            errors.append(exc)
    if not keep and not errors:
        for dc in instances:
            shutil.rmtree(dc.base_dir, ignore_errors=True)
    if errors:
        raise errors[0]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        item.stash[_failed_key] = True
        instances = item.stash.get(_instances_key, [])
        for dc in instances:
            report.sections.append((f"dovecot {dc.base_dir}", dc.log_tail(30)))
    return report


@pytest.fixture
def dovecot_factory(request: pytest.FixtureRequest) -> Iterator[DovecotFactory]:
    _require_dovecot()
    _prune_old()
    instances: list[Dovecot] = []
    request.node.stash[_instances_key] = instances

    def factory(*, start: bool = True, **kwargs: Any) -> Dovecot:
        dc = Dovecot(new_dovecot_base_dir(), **kwargs)
        instances.append(dc)
        if start:
            dc.start()
        return dc

    try:
        yield factory
    finally:
        _cleanup(instances, keep=request.node.stash.get(_failed_key, False))


@pytest.fixture
def dovecot(dovecot_factory: DovecotFactory) -> Dovecot:
    return dovecot_factory()


@pytest.fixture(scope="session")
def dovecot_session() -> Iterator[Dovecot]:
    _require_dovecot()
    dc = Dovecot(new_dovecot_base_dir())
    try:
        dc.start()
        yield dc
    finally:
        _cleanup([dc], keep=False)
