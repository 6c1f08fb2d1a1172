"""Value types shared by the config sections of the core and of the extensions (durations, host:port)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``30`` -> 30.0, ``"25m"`` -> 1500.0, ``"1.5s"`` -> 1.5."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '25m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"invalid duration {value!r}: use seconds or a string like '30s', '25m', '2h', '30d'")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"127.0.0.1:1143"`` / ``"[::1]:993"`` / ``":143"`` -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_s = rest.lstrip(":")
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r}: expected host:port")
    if not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ValueError(f"{value!r}: invalid port")
    return (host or default_host), int(port_s)


def _check_hostport(value: str) -> str:
    if value:
        parse_hostport(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
