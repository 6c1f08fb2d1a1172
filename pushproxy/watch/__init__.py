"""Upstream watchers: one IMAP connection per account with push registrations.

:class:`Supervisor` is the entry point (and the proxy's credential sink);
:mod:`~pushproxy.watch.watcher` holds the per-account connection logic
(one connection: :mod:`~pushproxy.watch.watching`, its detection step:
:mod:`~pushproxy.watch.checks`), :mod:`~pushproxy.watch.tracker` the sans-IO
new-mail detection (what to watch: :mod:`~pushproxy.watch.spec`),
:mod:`~pushproxy.watch.upstream` the upstream IMAP connection (aioimaplib's
protocol in one small subclass).  :mod:`~pushproxy.watch.dovecot_ox` is the
other way to learn of new mail: Dovecot's push_notification driver tells the
proxy itself.  Both hand their events to the push pipeline
(:mod:`pushproxy.push.pipeline`).

The names below are imported when first used (PEP 562): extensions import
the sans-IO parts (``pushproxy.watch.spec``) while :mod:`pushproxy.config`
imports the extensions, and the supervisor imports the config.
"""

from typing import TYPE_CHECKING

from pushproxy.lazy import lazy_attributes

if TYPE_CHECKING:
    from pushproxy.watch.spec import WatchSpec
    from pushproxy.watch.supervisor import Supervisor
    from pushproxy.watch.watcher import STATES, Watcher, WatcherState

_LAZY = {
    "WatchSpec": "pushproxy.watch.spec",
    "Supervisor": "pushproxy.watch.supervisor",
    "STATES": "pushproxy.watch.watcher",
    "Watcher": "pushproxy.watch.watcher",
    "WatcherState": "pushproxy.watch.watcher",
}

__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["STATES", "Supervisor", "WatchSpec", "Watcher", "WatcherState"]
