"""Command line: argument parsing only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pushproxy.config import Config, ConfigError, load_config, masked_dict


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, required=True, help="YAML configuration file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushproxy",
        description="IMAP proxy that adds push email (iOS XAPPLEPUSHSERVICE, WEBPUSH) to any IMAP server.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the proxy in the foreground until SIGTERM/SIGINT")
    _config_arg(p)

    p = sub.add_parser("check-config", help="validate the config and print it with secrets masked")
    _config_arg(p)
    return parser


def _load(path: Path) -> Config:
    return load_config(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            cfg = _load(args.config)
            print(json.dumps(masked_dict(cfg), indent=2))
            return 0
        if args.command == "serve":
            cfg = _load(args.config)
            from pushproxy.logsetup import setup_logging

            setup_logging(cfg.log)
            from pushproxy.app import run

            return run(cfg)
    except ConfigError as exc:
        print(f"pushproxy: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2
