"""Command line: argument parsing only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from pushproxy.config import Config, ConfigError, load_config, masked_dict


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

    apns = sub.add_parser("apns", help="APNs certificate and test pushes").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = apns.add_parser("check", help="show topic, subject, issuer, expiry; exit 1 if unusable for iOS Mail")
    _config_arg(p)
    p = apns.add_parser("test", help="send one push to every registered device of an account")
    _config_arg(p)
    p.add_argument("--account", required=True)
    p.add_argument("--mailbox", default="INBOX")

    devices = sub.add_parser("devices", help="iOS device registrations").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = devices.add_parser("list", help="list registrations (tokens shortened)")
    _config_arg(p)
    p.add_argument("--account")
    p = devices.add_parser("remove", help="remove registrations of an account")
    _config_arg(p)
    p.add_argument("--account", required=True)
    p.add_argument("--token", help="only devices whose token starts with this")
    p.add_argument("--aps-account-id", help="only this aps-account-id")

    subs = sub.add_parser("subscriptions", help="WebPush subscriptions").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = subs.add_parser("list", help="list subscriptions (never endpoints or keys)")
    _config_arg(p)
    p.add_argument("--account")

    vapid = sub.add_parser("vapid", help="the VAPID key pair of WebPush").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = vapid.add_parser("show", help="print the current public key (generated if missing)")
    _config_arg(p)
    p = vapid.add_parser("rotate", help="make a new current key; old keys keep signing for their subscriptions")
    _config_arg(p)
    return parser


def _load(path: Path) -> Config:
    return load_config(path)


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
        from pushproxy import admin_cli

        cfg = _load(args.config)
        if args.command == "apns" and args.action == "check":
            return admin_cli.apns_check(cfg)
        if args.command == "apns" and args.action == "test":
            return admin_cli.apns_test(cfg, args.account, args.mailbox)
        if args.command == "devices" and args.action == "list":
            return admin_cli.devices_list(cfg, args.account)
        if args.command == "devices" and args.action == "remove":
            return admin_cli.devices_remove(cfg, args.account, args.token, args.aps_account_id)
        if args.command == "subscriptions":
            return admin_cli.subscriptions_list(cfg, args.account)
        if args.command == "vapid":
            return admin_cli.vapid(cfg, args.action)
    except ConfigError as exc:
        print(f"pushproxy: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def check_config(cfg: Config, *, probe: bool) -> int:
    """Print the effective config; exit 2 if a file it names is unusable, or the probe fails."""
    from pushproxy.config_check import check_files

    print(json.dumps(masked_dict(cfg), indent=2))
    report = check_files(cfg)
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


HEALTH_TIMEOUT = 3.0


def health(cfg: Config) -> int:
    """GET /healthz on the configured admin listener (wildcard binds are probed on loopback)."""
    import urllib.error
    import urllib.request

    from pushproxy.config import parse_hostport

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
