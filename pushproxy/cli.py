"""Command line: argument parsing only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from pushproxy.config import Config, ConfigError, load_config, masked_dict, parse_hostport
from pushproxy.config_check import FileReport, check_files
from pushproxy.extensions import add_subcommands, available, catalogue
from pushproxy.extensions.manager import ExtensionManager


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, required=True, help="YAML configuration file")


def version() -> str:
    try:
        return metadata.version("pushproxy")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushproxy",
        description="IMAP proxy that adds push email (iOS XAPPLEPUSHSERVICE, WEBPUSH) to any IMAP server.",
    )
    parser.add_argument("--version", action="version", version=f"pushproxy {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the proxy in the foreground until SIGTERM/SIGINT")
    _config_arg(p)

    p = sub.add_parser(
        "check-config",
        help="validate the config and the files it names (as the current user); print it with secrets masked",
    )
    _config_arg(p)
    p.add_argument("--probe", action="store_true", help="also connect to the upstream and show its capabilities")

    p = sub.add_parser("health", help="exit 0 if the running proxy's admin listener answers /healthz (container probe)")
    _config_arg(p)

    add_subcommands(sub)  # every discovered extension's (apns, devices, subscriptions, vapid...)

    cluster = sub.add_parser("cluster", help="several nodes on one PostgreSQL").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = cluster.add_parser("status", help="live nodes, accounts each owns, accounts nobody watches")
    _config_arg(p)
    p.set_defaults(run=_cluster_status)
    return parser


def _load(path: Path) -> Config:
    """The config, every section valid: the core's and each enabled extension's, by its own model.

    A ConfigError names every bad key of every section, each under its section's name, every
    top-level key that is no enabled extension's section (with the likely intended name), and
    every name of the ``extensions`` list that is not installed (with the available ones).
    """
    return load_config(path, catalogue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            return check_config(_load(args.config), probe=args.probe)
        if args.command == "health":
            return health(_load(args.config))
        if args.command == "serve":
            cfg = _load(args.config)
            from pushproxy.logsetup import setup_logging

            setup_logging(cfg.log)
            from pushproxy.app import run

            return run(cfg)
        admin_run = getattr(args, "run", None)  # an extension's (or the cluster's) admin subcommand
        if admin_run is not None:
            return int(admin_run(_load(args.config), args))
    except ConfigError as exc:
        print(f"pushproxy: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def _cluster_status(cfg: Config, _args: argparse.Namespace) -> int:
    from pushproxy.cluster.status import cluster_status

    return cluster_status(cfg)


def check_config(cfg: Config, *, probe: bool) -> int:
    """Print the effective config; exit 2 if a file it names is unusable, or the probe fails."""
    print(json.dumps(masked_dict(cfg), indent=2))
    unlisted = [name for name in available() if cfg.extensions is not None and name not in cfg.extensions]
    if unlisted:  # what the admin could list (their sections would be refused until then)
        print(f"pushproxy: installed, not in extensions (not loaded): {', '.join(unlisted)}", file=sys.stderr)
    report = file_report(cfg)
    for warning in report.warnings:
        print(f"pushproxy: warning: {warning}", file=sys.stderr)
    for error in report.errors:
        print(f"pushproxy: error: {error}", file=sys.stderr)
    code = 2 if report.errors else 0
    if probe:
        import asyncio

        from pushproxy.upstream_probe import probe_upstream

        result = asyncio.run(probe_upstream(cfg.upstream, timeout=cfg.upstream.connect_timeout))
        if result.ok:
            print(f"{result.describe(cfg.upstream)}; capabilities: {' '.join(sorted(result.capabilities))}")
        else:
            print(f"pushproxy: error: {result.describe(cfg.upstream)}", file=sys.stderr)
            code = 2
    return code


def file_report(cfg: Config) -> FileReport:
    """What ``check-config`` finds of the files the config names: the core's, then each enabled extension's."""
    extensions = ExtensionManager.for_config(cfg)
    report = check_files(cfg, push=bool(extensions))
    extensions.check_files(report)
    return report


HEALTH_TIMEOUT = 3.0


def health(cfg: Config) -> int:
    """GET /healthz on the configured admin listener (wildcard binds are probed on loopback)."""
    import urllib.error
    import urllib.request

    if not cfg.admin.listen:
        print("admin listener disabled (admin.listen is empty): nothing to probe")
        return 0
    host, port = parse_hostport(cfg.admin.listen)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT) as resp:  # noqa: S310 - http URL built here
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print("ok" if ok else "unhealthy")
    return 0 if ok else 1
