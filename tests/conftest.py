"""Shared fixtures: real Dovecot instances and real pushproxy processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import distribution
from tests.support.dovecot import Dovecot
from tests.support.proxy import ProxyProcess, upstream_config

pytest_plugins = ["tests.support.dovecot_fixtures", "tests.support.postgres"]


def pytest_configure(config: pytest.Config) -> None:
    """Install the tests' distribution (the eventlog extension's entry point) for this process and its children."""
    entry = str(distribution.install(Path(tempfile.mkdtemp(prefix="pushproxy-test-dist-"))))
    config.stash[_DIST_DIR] = entry
    sys.path.insert(0, entry)
    os.environ["PYTHONPATH"] = distribution.python_path(entry)


def pytest_unconfigure(config: pytest.Config) -> None:
    entry = config.stash.get(_DIST_DIR, None)
    if entry is not None:
        shutil.rmtree(entry, ignore_errors=True)


_DIST_DIR = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def proxy_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ProxyProcess]]:
    """``factory(dovecot, security="starttls", start=True, **config_sections) -> ProxyProcess``."""
    made: list[ProxyProcess] = []

    def factory(dc: Dovecot, security: str = "starttls", start: bool = True, **config: Any) -> ProxyProcess:
        base = Path(tempfile.mkdtemp(prefix="pp-", dir=tempfile.gettempdir()))
        cfg = {"upstream": upstream_config(dc, security), **config}
        proxy = ProxyProcess(base, cfg)
        made.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield factory
    failed = getattr(request.node, "rep_call", None)
    problems = []
    for proxy in made:
        proxy.stop()
        if failed is not None and failed.failed:
            print(f"--- pushproxy log ({proxy.log_file}) ---\n{proxy.log_tail(80)}")
        text = proxy.log_text()
        if "Unhandled Error" in text or "Traceback" in text:
            problems.append(f"{proxy.log_file}:\n{proxy.log_tail(80)}")
    if not problems and not (failed is not None and failed.failed):
        for proxy in made:  # keys, databases and logs of a passed test are of no further use
            shutil.rmtree(proxy.base_dir, ignore_errors=True)
    # A proxy that logged an unhandled error failed, whatever the client saw.
    assert not problems, "pushproxy logged errors:\n" + "\n".join(problems)
