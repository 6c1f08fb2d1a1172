"""Three real proxy processes on one real PostgreSQL, a real Dovecot with LMTP, the APNs stand-in counting pushes.

Mail is delivered in rounds, one message per account per round, and each
round waits until every device got its push: a message is then exactly one
APNs request to its device (pushes of one round cannot coalesce), so
"exactly once, none lost" is a count per token.  After the last round, one
short bounded quiet period shows that no late duplicate follows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pushproxy.cluster import wanted_owner
from tests.support import apns_env
from tests.support.apns_env import RawClient, apns_config, register
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.distribution import python_path
from tests.support.dovecot import Dovecot, make_message
from tests.support.proxy import ProxyProcess, upstream_config
from tests.support.waiting import assert_quiet, wait_for

pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'pushproxy[postgres]'")

TTL = 3.0
ACCOUNTS = [f"user{i:02d}" for i in range(20)]
QUIET = 1.5  # after the last expected push: nothing more may come

ProxyFactory = Callable[..., ProxyProcess]
NODE_IDS = ["node0", "node1", "node2"]


def token(account: str) -> str:
    return f"{int(account[4:]) + 1:064x}"


def metric_sum(nodes: list[ProxyProcess], name: str, labels: dict[str, str] | None = None) -> float:
    return sum(n.metric(name, labels) for n in nodes if n.proc is not None and n.proc.poll() is None)


def watcher_states(nodes: list[ProxyProcess]) -> str:
    states = ("connecting", "idle", "polling", "backoff", "auth_failed")
    return str([{s: n.metric("pushproxy_watchers", {"state": s}) for s in states} for n in nodes])


def counts(standin: ApnsStandin) -> dict[str, int]:
    out = dict.fromkeys(ACCOUNTS, 0)
    by_token = {token(a): a for a in ACCOUNTS}
    for request in standin.requests:
        account = by_token.get(request.token)
        if account is not None:
            out[account] += 1
    return out


def deliver_round(dovecot: Dovecot, standin: ApnsStandin, n: int, timeout: float = 30.0) -> None:
    for account in ACCOUNTS:
        dovecot.deliver(account, make_message(f"round {n} for {account}"))
    wait_for(
        lambda: all(c >= n for c in counts(standin).values()), timeout, lambda: f"round {n} pushes: {counts(standin)}"
    )


def assert_exactly(standin: ApnsStandin, n: int) -> None:
    """n pushes per device, and still n after a bounded quiet period (a late duplicate would arrive within it)."""
    assert_quiet(lambda: counts(standin) == dict.fromkeys(ACCOUNTS, n), QUIET, lambda: f"{n} each: {counts(standin)}")


certs, apns = apns_env.certs, apns_env.apns  # the shared fixtures


def start_node(made: list[ProxyProcess], dovecot: Dovecot, config: dict[str, Any]) -> ProxyProcess:
    """A started node; a listening port another program took between choosing and binding it is chosen anew
    (the machine runs other test suites at the same time)."""
    for attempt in range(3):
        proxy = ProxyProcess(Path(tempfile.mkdtemp(prefix="pp-")), {"upstream": upstream_config(dovecot), **config})
        try:
            proxy.start()
        except RuntimeError as exc:
            proxy.stop()
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        made.append(proxy)
        return proxy
    raise AssertionError("unreachable")


@pytest.fixture
def cluster(
    postgres_dsn: str,
    dovecot: Dovecot,
    apns: ApnsStandin,
    certs: ApnsTestCerts,
    tmp_path: Path,
) -> Iterator[tuple[list[ProxyProcess], dict[str, Any]]]:
    # postgres_dsn first: its database is dropped only after the proxies have stopped.
    shared: dict[str, Any] = {
        "store": {"url": postgres_dsn},
        "watch": {"vault_key_file": str(tmp_path / "vault.key"), "backoff_min": 0.2, "backoff_max": 1.0},
        "apns": apns_config(certs, apns, debounce=0.1),
    }
    made: list[ProxyProcess] = []
    try:
        nodes = [
            start_node(made, dovecot, {"cluster": {"node_id": f"node{i}", "lease_ttl": TTL}, **shared})
            for i in range(3)
        ]
        yield prepared(nodes, dovecot), shared
    finally:
        for proxy in made:
            proxy.stop()
    # A node that logged an unhandled error failed, whatever the clients saw (as proxy_factory checks).
    problems = [str(p.log_file) for p in made if "Traceback" in p.log_text() or "Unhandled Error" in p.log_text()]
    assert not problems, f"pushproxy logged errors: {problems}"
    for proxy in made:
        shutil.rmtree(proxy.base_dir, ignore_errors=True)


def prepared(nodes: list[ProxyProcess], dovecot: Dovecot) -> list[ProxyProcess]:
    dovecot.add_users({account: f"{account}pw" for account in ACCOUNTS})
    for i, account in enumerate(ACCOUNTS):  # registered through different nodes
        client = RawClient(nodes[i % 3].port)
        client.command(b"a1", f"LOGIN {account} {account}pw".encode())
        assert b"a2 OK" in register(client, b"a2", token(account))
        client.close()
    shares = {f"node{i}": sum(1 for a in ACCOUNTS if wanted_owner(a, NODE_IDS) == f"node{i}") for i in range(3)}
    wait_for(
        lambda: all(n.metric("pushproxy_cluster_leases_held") == shares[f"node{i}"] for i, n in enumerate(nodes)),
        30,
        f"every account leased by its rendezvous owner {shares}",
    )
    wait_for(
        lambda: metric_sum(nodes, "pushproxy_watchers", {"state": "idle"}) == len(ACCOUNTS),
        30,
        lambda: f"every account watched once: {watcher_states(nodes)}",
    )
    return nodes


def wait_one_watcher_per_account(nodes: list[ProxyProcess], what: str) -> None:
    """Every account leased once and watched once, over all live nodes."""
    wait_for(
        lambda: (
            metric_sum(nodes, "pushproxy_cluster_leases_held") == len(ACCOUNTS)
            and metric_sum(nodes, "pushproxy_watchers", {"state": "idle"}) == len(ACCOUNTS)
        ),
        30,
        lambda: f"{what}: {watcher_states(nodes)}",
    )


def owner_with_most(nodes: list[ProxyProcess]) -> ProxyProcess:
    return max(nodes, key=lambda n: n.metric("pushproxy_cluster_leases_held"))


@pytest.mark.timeout(240)
def test_three_nodes_push_each_message_once_and_survive_kill_9(
    cluster: tuple[list[ProxyProcess], dict[str, Any]], dovecot: Dovecot, apns: ApnsStandin
) -> None:
    nodes, _ = cluster
    # 10 rounds of one message per account: 200 messages, each one push to its account's device.
    assert all(n.metric("pushproxy_cluster_leases_held") >= 1 for n in nodes)  # spread, not all on one
    for n in (1, 2, 3, 4):
        deliver_round(dovecot, apns, n)
    assert_exactly(apns, 4)

    victim = owner_with_most(nodes)
    assert victim.metric("pushproxy_cluster_leases_held") >= len(ACCOUNTS) // 3
    victim.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    victim.proc.wait(10)  # type: ignore[union-attr]
    survivors = [n for n in nodes if n is not victim]
    for account in ACCOUNTS:  # round 5, delivered while nobody watches the victim's accounts
        dovecot.deliver(account, make_message(f"during the outage for {account}"))
    wait_for(lambda: all(c >= 5 for c in counts(apns).values()), TTL + 30, lambda: f"takeover pushes: {counts(apns)}")
    assert metric_sum(survivors, "pushproxy_cluster_takeovers_total") >= 1
    for n in (6, 7):
        deliver_round(dovecot, apns, n)
    assert_exactly(apns, 7)

    victim.start()  # rejoins and takes its share back
    wait_for(lambda: victim.metric("pushproxy_cluster_leases_held") >= 1, 30, "the restarted node to take a share")
    wait_one_watcher_per_account(nodes, "one watcher per account again")
    for n in (8, 9, 10):
        deliver_round(dovecot, apns, n)
    assert_exactly(apns, 10)


@pytest.mark.timeout(240)
def test_frozen_node_causes_no_duplicates_and_stops_its_watchers(
    cluster: tuple[list[ProxyProcess], dict[str, Any]], dovecot: Dovecot, apns: ApnsStandin
) -> None:
    nodes, _ = cluster
    deliver_round(dovecot, apns, 1)
    frozen = owner_with_most(nodes)
    others = [n for n in nodes if n is not frozen]
    frozen.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        wait_for(
            lambda: metric_sum(others, "pushproxy_cluster_leases_held") == len(ACCOUNTS),
            TTL + 20,
            "the others to take over the frozen node's accounts",
        )
        deliver_round(dovecot, apns, 2)
    finally:
        frozen.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    # It wakes up believing it watches its accounts: its IDLE connections may report round 2 too.
    wait_one_watcher_per_account(nodes, "one watcher per account after the split brain")
    assert_exactly(apns, 2)
    deliver_round(dovecot, apns, 3)
    assert_exactly(apns, 3)


def test_registration_on_one_node_is_honoured_by_the_owner_within_a_second(
    cluster: tuple[list[ProxyProcess], dict[str, Any]], dovecot: Dovecot, apns: ApnsStandin
) -> None:
    nodes, _ = cluster
    account = ACCOUNTS[0]
    owner = nodes[NODE_IDS.index(wanted_owner(account, NODE_IDS))]
    other, remover = [n for n in nodes if n is not owner]
    # A second device for an account another node watches: the owner restarts its watcher with it within 1 s.
    client = RawClient(other.port)
    client.command(b"a1", f"LOGIN {account} {account}pw".encode())
    assert b"a2 OK" in register(client, b"a2", "ee" * 32, mailboxes=b'("INBOX" "Notes")')
    client.close()
    # The 1 s bound itself is checked in test_cluster.py, free of process start-up and scheduling noise.
    owner.wait_log(f"watcher {account}: mailboxes now", timeout=5.0)
    # Removing every registration of the account on a third node stops the owner's watcher.
    for tok in (token(account), "ee" * 32):
        run_cli(remover, "devices", "remove", "--account", account, "--token", tok[:16])
    owner.wait_log(f"watcher {account}: no registrations left; stopped", timeout=5.0)


def run_cli(node: ProxyProcess, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pushproxy", *args, "--config", str(node.config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": python_path()},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cluster_status_lists_nodes_and_orphans(
    cluster: tuple[list[ProxyProcess], dict[str, Any]], dovecot: Dovecot, apns: ApnsStandin
) -> None:
    nodes, _ = cluster
    out = run_cli(nodes[0], "cluster", "status")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("node")}
    assert sorted(rows) == NODE_IDS, out
    assert all(row[1] == "live" for row in rows.values()), out
    assert sum(int(row[4]) for row in rows.values()) == len(ACCOUNTS), out  # NODE STATE AGE "ago" ACCOUNTS
    assert "orphaned accounts (registrations, no live lease): 0" in out


def test_node_with_another_vault_key_is_refused(
    cluster: tuple[list[ProxyProcess], dict[str, Any]], dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    _, shared = cluster
    config = {**shared, "watch": {**shared["watch"], "vault_key_file": str(tmp_path / "other.key")}}
    intruder = proxy_factory(dovecot, start=False, cluster={"node_id": "intruder", "lease_ttl": TTL}, **config)
    with pytest.raises(RuntimeError, match="same vault key file"):
        intruder.start()
