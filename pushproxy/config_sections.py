"""The problems of a configuration, each under its section's name, and the validation of an extension's section.

An extension's section is read like the core's: its YAML mapping, then its
``PUSHPROXY_<SECTION>__<KEY>`` variables over it (read by pydantic-settings, as
the core's, through a one-field settings class made for that section when it
is first validated), validated by the extension's own model.  A problem is one
line, the key's whole dotted path first (``webpush.ttl: ...``), with the
variable that set it when one did, so ``check-config`` reports every section's
problems under its own name.

Which extensions' sections a configuration may have is the :class:`Catalogue`'s
to say (built by :func:`pushproxy.extensions.catalogue`, from discovery): every
top-level key is the core's, the section of an extension the config's
``extensions`` list enables (validated by that extension's model), or an error
-- an unknown key (with the likely intended name when one is close), or the
section of an installed extension that is not enabled (refused rather than
ignored: a section that would do nothing is a mistake the admin wants to hear
of).  ``PUSHPROXY_<SECTION>__<KEY>`` variables count as their section's keys.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError, create_model
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

__all__ = [
    "ENV",
    "Catalogue",
    "ConfigError",
    "Problem",
    "check_extensions",
    "extension_list",
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


def unknown_section(name: str, known: Collection[str] = ()) -> Problem:
    """The problem line of a top-level key that neither the core nor any extension claims.

    ``known``: the keys there are; the closest (if close enough) is named as the likely intended one.
    """
    return f"  {name}: unknown key{_did_you_mean(name, known)}", False


def _did_you_mean(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def extension_list(value: object) -> object:
    """The ``extensions`` key as given: a list, or (an environment variable) a JSON list or ``a,b,c``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("not a JSON list: give a list, or names separated by commas") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


@dataclass(frozen=True)
class Catalogue:
    """The extensions installed here, as the configuration sees them (:func:`pushproxy.extensions.catalogue`).

    ``sections``: every available extension's name (discovery order) -> its section and the model
    validating it (None, None: it has no section); ``default``: the names enabled when the
    config has no ``extensions`` key.
    """

    sections: Mapping[str, tuple[str | None, type[BaseModel] | None]]
    default: tuple[str, ...]

    def resolve(self, listed: Sequence[str] | None) -> tuple[list[str], list[Problem]]:
        """The enabled names (``listed``, or the default), and a problem for each name not available."""
        if listed is None:
            return [name for name in self.default if name in self.sections], []
        variable = _env_variable_for(["extensions"])
        key = f"extensions (environment variable {variable})" if variable else "extensions"
        available = ", ".join(sorted(self.sections)) or "none"
        names: list[str] = []
        problems: list[Problem] = []
        for name in listed:
            if name in names:
                problems.append((f"  {key}: {name} is listed twice", variable is not None))
            elif name not in self.sections:
                hint = _did_you_mean(name, self.sections)
                line = f"  {key}: no extension {name!r} is installed{hint}; available: {available}"
                problems.append((line, variable is not None))
            else:
                names.append(name)
        return names, problems


def check_extensions(
    catalogue: Catalogue, listed: Sequence[str] | None, extra: Mapping[str, Any], core: Collection[str]
) -> tuple[list[str], dict[str, BaseModel], list[Problem]]:
    """The enabled extensions' names and validated sections, and every problem of the keys beyond the core's.

    ``extra``: the top-level keys that are not the core's (``core``), as read (a mapping) or
    already validated (a model); the ``PUSHPROXY_<SECTION>__*`` variables of other sections
    are looked at too.  A problem of an extension's section is under its name (``webpush.ttl``).
    """
    enabled, problems = catalogue.resolve(listed)
    owners = {section: name for name, (section, _) in catalogue.sections.items() if section is not None}
    models = {
        section: model
        for section, model in (catalogue.sections[name] for name in enabled)
        if section is not None and model is not None
    }
    given = {key: (f"  {key}", False) for key in extra}
    for key, variable in _env_sections(core).items():
        given.setdefault(key, (f"  {key} (environment variable {variable})", True))
    for key, (where, from_env) in given.items():
        if key in models:
            continue
        owner = owners.get(key)
        if owner is not None:
            line = f"{where}: extension {owner}'s section, but {owner} is not in extensions (add it, or remove this)"
        else:
            line = f"{where}: unknown key{_did_you_mean(key, {*core, *owners})}"
        problems.append((line, from_env))
    validated: dict[str, BaseModel] = {}
    for section, model in models.items():
        value = extra.get(section)
        if isinstance(value, model):
            validated[section] = value
        elif value is not None and not isinstance(value, dict):
            problems.append((f"  {section}: must be a mapping of keys", False))
        else:
            try:
                validated[section] = validate_section(section, model, value or {}, lambda lines: "")
            except ConfigError as exc:
                problems += exc.problems
    return enabled, validated, problems


def _env_sections(core: Collection[str]) -> dict[str, str]:
    """Sections named by ``PUSHPROXY_<SECTION>__<KEY>`` variables that are not the core's -> one such variable."""
    found: dict[str, str] = {}
    for variable in sorted(os.environ):
        upper = variable.upper()
        if upper.startswith("PUSHPROXY_") and "__" in upper[len("PUSHPROXY_") :]:
            section = upper[len("PUSHPROXY_") :].partition("__")[0].lower()
            if section and section not in core:
                found.setdefault(section, variable)
    return found


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


def problems_of(
    exc: ValidationError, prefix: tuple[str, ...] = (), model: type[BaseModel] | None = None
) -> list[Problem]:
    """One line per error, its key's whole path first (``webpush.ttl: ...``), and the variable that set it.

    ``model``: the one validated; an unknown key of it (or of a section nested in it) then
    names the key probably meant (``webpush.enabeld: unknown key (did you mean enabled?)``).
    """
    lines = []
    for err in exc.errors():
        loc = [*prefix, *(str(p) for p in err["loc"])]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(loc[-1], _keys_at(model, err["loc"][:-1]))
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
        lines = problems_of(exc, (name,), model)
        raise ConfigError(message(lines), lines) from None


def _keys_at(model: type[BaseModel] | None, path: tuple[int | str, ...]) -> list[str]:
    """The keys of the section at ``path`` in ``model`` (nested models' fields); none if it is no model."""
    for part in path:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _env_variable_for(loc: list[str]) -> str | None:
    """The ``PUSHPROXY_...`` variable that set the value at ``loc`` (or a section containing it), if any."""
    names = {name.upper(): name for name in os.environ if name.upper().startswith("PUSHPROXY_")}
    for depth in range(len(loc), 0, -1):
        candidate = "PUSHPROXY_" + "__".join(part.upper() for part in loc[:depth])
        if candidate in names:
            return names[candidate]
    return None
