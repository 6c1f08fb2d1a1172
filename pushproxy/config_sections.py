"""The problems of a configuration, each under its section's name, and the validation of an extension's section.

An extension's section is read like the core's: its YAML mapping, then its
``PUSHPROXY_<SECTION>__<KEY>`` variables over it (read by pydantic-settings, as
the core's, through a one-field settings class made for that section when it
is first validated), validated by the extension's own model.  A problem is one
line, the key's whole dotted path first (``webpush.ttl: ...``), with the
variable that set it when one did, so ``check-config`` reports every section's
problems under its own name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError, create_model
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

__all__ = [
    "ENV",
    "ConfigError",
    "Problem",
    "layered",
    "problem_message",
    "problems_of",
    "unknown_section",
    "validate_section",
]

S = TypeVar("S", bound=BaseModel)
Problem = tuple[str, bool]  # (the line, set by an environment variable)

ENV = SettingsConfigDict(env_prefix="PUSHPROXY_", env_nested_delimiter="__", case_sensitive=False)


def layered(*layers: dict[str, Any]) -> dict[str, Any]:
    """Mappings merged key by key, later ones winning (as pydantic-settings merges its sources)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            below = out.get(key)
            out[key] = layered(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return out


class ConfigError(Exception):
    """A configuration problem, with a message meant for the admin.

    ``problems``: its lines (``(line, set by an environment variable)``), so that the
    extension manager can report every section's problems in one message.
    """

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def unknown_section(name: str) -> Problem:
    """The problem line of a top-level key that neither the core nor any extension claims."""
    return f"  {name}: unknown key", False


def problem_message(lines: list[Problem], path: Path | None) -> str:
    """``invalid configuration in <where>:`` and one line per problem."""
    from_env = sum(1 for _, env in lines if env)
    if from_env == len(lines):
        where = " in the environment"
    elif from_env:
        where = f" in {path} and the environment" if path else ""
    else:
        where = f" in {path}" if path else ""
    return f"invalid configuration{where}:\n" + "\n".join(line for line, _ in lines)


def problems_of(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[Problem]:
    """One line per error, its key's whole path first (``webpush.ttl: ...``), and the variable that set it."""
    lines = []
    for err in exc.errors():
        loc = [*prefix, *(str(p) for p in err["loc"])]
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        variable = _env_variable_for(loc)
        if variable is not None:
            lines.append((f"  {'.'.join(loc)} (environment variable {variable}): {msg}", True))
        else:
            lines.append((f"  {'.'.join(loc)}: {msg}", False))
    return lines


class _SectionEnvironment(BaseSettings):
    """Base of the one-field settings classes that read an extension section's variables."""

    model_config = SettingsConfigDict(**ENV, extra="ignore")


@cache
def _section_env_reader(name: str, model: type[BaseModel]) -> type[BaseSettings]:
    """A settings class with one field, ``name``: reads ``PUSHPROXY_<NAME>__*`` exactly as the core's sections."""
    field: Any = (model | None, None)
    reader: type[BaseSettings] = create_model(
        f"{model.__name__}Environment", __base__=_SectionEnvironment, **{name: field}
    )
    return reader


def validate_section(name: str, model: type[S], data: dict[str, Any], message: Callable[[list[Problem]], str]) -> S:
    """An extension's section from its YAML mapping and its variables, validated by its own model."""
    env = EnvSettingsSource(_section_env_reader(name, model))().get(name, {})
    try:
        return model.model_validate(layered(data, env if isinstance(env, dict) else {}))
    except ValidationError as exc:
        lines = problems_of(exc, (name,))
        raise ConfigError(message(lines), lines) from None


def _env_variable_for(loc: list[str]) -> str | None:
    """The ``PUSHPROXY_...`` variable that set the value at ``loc`` (or a section containing it), if any."""
    names = {name.upper(): name for name in os.environ if name.upper().startswith("PUSHPROXY_")}
    for depth in range(len(loc), 0, -1):
        candidate = "PUSHPROXY_" + "__".join(part.upper() for part in loc[:depth])
        if candidate in names:
            return names[candidate]
    return None
