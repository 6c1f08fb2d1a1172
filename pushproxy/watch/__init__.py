"""Upstream watchers: one IMAP connection per account with push registrations.

:class:`Supervisor` is the entry point (and the proxy's credential sink);
:mod:`~pushproxy.watch.watcher` holds the per-account connection logic,
:mod:`~pushproxy.watch.detection` the sans-IO new-mail detection,
:mod:`~pushproxy.watch.upstream` the upstream IMAP connection (aioimaplib's
protocol in one small subclass).
"""

from pushproxy.watch.detection import WatchSpec
from pushproxy.watch.supervisor import Supervisor
from pushproxy.watch.watcher import STATES, Watcher, WatcherState

__all__ = ["STATES", "Supervisor", "WatchSpec", "Watcher", "WatcherState"]
