"""The schema parts: the core's here; each extension's in its own package (``Extension.schema``).

Each part is numbered on its own (see :mod:`pushproxy.store.schema`).
:func:`parts_of_extensions` is the core's and every listed extension's,
enabled or not (the extension list registers itself with :func:`add_part_source`
when :mod:`pushproxy.extensions` is imported): their tables are shared by every
node and read by the admin subcommands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pushproxy.store.schema import SchemaPart

CORE = SchemaPart(
    "core",
    (
        # 1: the core tables of the single-version schema
        (
            """CREATE TABLE credentials (
                account TEXT PRIMARY KEY,
                login TEXT NOT NULL,
                secret {blob} NOT NULL,             -- vault-encrypted, aad names the account
                stale {bool} NOT NULL,
                updated {real} NOT NULL
            )""",
            """CREATE TABLE mailbox_state (
                account TEXT NOT NULL,
                mailbox TEXT NOT NULL,
                uidvalidity {bigint} NOT NULL,
                uidnext {bigint} NOT NULL,
                highestmodseq {bigint},
                updated {real} NOT NULL,
                PRIMARY KEY (account, mailbox)
            )""",
        ),
        # 2: fingerprints of the keys every node must share (vault, VAPID)
        (
            """CREATE TABLE key_fingerprints (
                name TEXT PRIMARY KEY,
                fingerprint TEXT NOT NULL,
                created {real} NOT NULL
            )""",
        ),
        # 3: several nodes: who is alive, who watches which account, which pushes were sent
        (
            """CREATE TABLE cluster_nodes (
                node_id TEXT PRIMARY KEY,
                address TEXT NOT NULL,
                started {real} NOT NULL,
                heartbeat {real} NOT NULL           -- database clock (epoch seconds)
            )""",
            """CREATE TABLE watch_leases (
                account TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                expires {real} NOT NULL,            -- database clock
                fence {bigint} NOT NULL             -- +1 whenever the lease changes hands
            )""",
            "CREATE INDEX watch_leases_by_owner ON watch_leases (owner)",
            """CREATE TABLE push_ledger (
                account TEXT NOT NULL,
                mailbox TEXT NOT NULL,
                uidvalidity {bigint} NOT NULL,      -- 0 when the event's source did not say
                uid {bigint} NOT NULL,
                node TEXT NOT NULL,
                claimed {real} NOT NULL,            -- database clock
                PRIMARY KEY (account, mailbox, uidvalidity, uid)
            )""",
            "CREATE INDEX push_ledger_by_claimed ON push_ledger (claimed)",
        ),
    ),
    legacy_version=1,
)


__all__ = ["CORE", "add_part_source", "parts_of_extensions"]

# Where the parts besides the core's come from: the extension list registers itself here
# (pushproxy.extensions), so that the store needs to know nothing of extensions.
PartSource = Callable[[], Iterable[SchemaPart | None]]
_sources: list[PartSource] = []


def add_part_source(source: PartSource) -> None:
    """``source()`` names more schema parts (None: an extension without tables), asked at every store's creation."""
    if source not in _sources:
        _sources.append(source)


def parts_of_extensions() -> tuple[SchemaPart, ...]:
    """:data:`CORE` and the schema part of every extension in the list, in list order."""
    parts = [CORE]
    for source in _sources:
        for part in source():
            if part is not None and part not in parts:
                parts.append(part)
    return tuple(parts)
