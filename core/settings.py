"""Typed settings read from flags, environment variables and a YAML file.

Each component declares one frozen dataclass; every field carries its flag,
its environment variable and its help text in ``metadata`` (see :func:`setting`).
That dataclass is the single source of truth for the component's configuration:
the CLI flags, the ``--help`` text, the documented defaults and the config-file
keys are all derived from it.

Precedence, highest first: command-line flag, environment variable, the
component's section of the YAML config file (``--config FILE`` or
``APIM_CONFIG``), the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import os
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

CONFIG_ENV = "APIM_CONFIG"


class SettingsError(InputError, ValueError):
    """A setting has a value that cannot be used; the message names it."""


def setting(default: Any, *, env: str, help: str, flag: str | None = None, secret: bool = False,
            key: str | None = None) -> Any:
    """Declare one setting of a settings dataclass.

    Args:
        default: the documented default.
        env: the environment variable that sets it.
        help: one line for ``--help`` and the docs.
        flag: the long flag (default: the field name with dashes).
        secret: keep the value out of ``repr`` and logs.
        key: the config-file key as ``SECTION.NAME`` when several components share
            one setting (the store URL is ``store.url`` for every command), so the
            file holds it once; default: the component's section and the field name.
    """
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={"env": env, "help": help, "flag": flag, "secret": secret, "key": key},
    )


def _file_key(field: dataclasses.Field[Any], section: str) -> tuple[str, str]:
    """(section, name) of the field's config-file key."""
    shared = field.metadata.get("key")
    if shared:
        where, _, name = shared.partition(".")
        return where, name
    return section, field.name


def _flag_name(field: dataclasses.Field[Any]) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; plain types pass through."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _convert(name: str, raw: Any, tp: Any) -> Any:
    """Convert a string (env, flag) or YAML value to the field's type, naming the setting on error."""
    base = _base_type(tp)
    if raw is None:
        return None
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if base is int:
            if isinstance(raw, bool):
                raise ValueError("a boolean is not an integer")
            return int(str(raw).replace("_", ""))
        if base is float:
            return float(raw)
        if base is Path:
            return Path(os.path.expanduser(str(raw)))
        if typing.get_origin(base) is tuple or base is tuple:
            if isinstance(raw, (list, tuple)):
                return tuple(str(x) for x in raw)
            return tuple(p.strip() for p in str(raw).split(",") if p.strip())
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name}: {exc}") from exc


def add_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of ``cls``; flag defaults are None so precedence can be resolved later."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        env = field.metadata.get("env")
        if env is None:
            continue
        default = field.default
        shown = "(secret)" if field.metadata.get("secret") else _shown(default)
        help_text = f"{field.metadata['help']} [env: {env}; default: {shown}]"
        if _base_type(hints[field.name]) is bool:
            parser.add_argument(
                _flag_name(field), dest=field.name, default=None,
                action=argparse.BooleanOptionalAction, help=help_text,
            )
        else:
            parser.add_argument(_flag_name(field), dest=field.name, default=None, metavar=field.name.upper(),
                                help=help_text)


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML (or JSON, a subset) input file; a missing or malformed one is an :class:`InputError`
    naming ``what`` and the file, with the line and column of a syntax error."""
    import yaml  # a third of the CLI's start-up: only the commands that read a file pay for it

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"{what} {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{what} {path} is not UTF-8 text") from exc
    except OSError as exc:
        raise SettingsError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{what} {path} is not valid YAML{syntax_problem(exc)}") from exc


def syntax_problem(exc: Exception) -> str:
    """`` at line L, column C: PROBLEM`` for a YAML or JSON syntax error, on one line (for messages)."""
    mark = getattr(exc, "problem_mark", None)  # PyYAML's MarkedYAMLError
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {getattr(exc, 'problem', None) or exc}"
    if hasattr(exc, "lineno") and hasattr(exc, "msg"):  # json.JSONDecodeError
        return f" at line {exc.lineno}, column {getattr(exc, 'colno', 0)}: {exc.msg}"
    return ": " + " ".join(str(exc).split())


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Read the YAML config file; an empty or absent path gives an empty mapping."""
    if not path:
        return {}
    p = Path(path)
    data = read_yaml(p, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data


def resolve(
    cls: type[T],
    *,
    args: argparse.Namespace | None = None,
    section: str,
    config_file: str | Path | None = None,
    environ: typing.Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Build ``cls`` from flags > environment > config-file section > defaults.

    Args:
        cls: the settings dataclass.
        args: parsed flags (fields absent or None fall through).
        section: the config-file section holding this component's keys.
        config_file: the YAML file; defaults to ``$APIM_CONFIG``.
        environ: the environment (tests pass their own).
        overrides: programmatic values that win over everything (demo, tests).

    Raises:
        SettingsError: an unknown key in the file section, or a value of the wrong type.
    """
    env = os.environ if environ is None else environ
    if config_file is None:
        config_file = getattr(args, "config", None) or env.get(CONFIG_ENV)
    document = load_config_file(config_file)

    def file_section(name: str) -> dict[str, Any]:
        found = document.get(name) or {}
        if not isinstance(found, dict):
            raise SettingsError(f"config section {name!r} must be a mapping")
        return found

    hints = typing.get_type_hints(cls)
    known = {key for where, key in (_file_key(f, section) for f in dataclasses.fields(cls)) if where == section}
    unknown = set(file_section(section)) - known
    if unknown:
        raise SettingsError(f"config section {section!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        name, tp = field.name, hints[field.name]
        flag_value = getattr(args, name, None) if args is not None else None
        env_name = field.metadata.get("env")
        if overrides and name in overrides:
            values[name] = overrides[name]
        elif flag_value is not None:
            values[name] = _convert(_flag_name(field), flag_value, tp)
        elif env_name and env_name in env:
            values[name] = _convert(env_name, env[env_name], tp)
        else:
            where, key = _file_key(field, section)
            if key in file_section(where):
                values[name] = _convert(f"{where}.{key}", file_section(where)[key], tp)
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if callable(validate):
        validate()
    return settings


def _shown(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def describe(cls: type[Any], section: str) -> list[dict[str, str]]:
    """One row per setting (key, flag, env, default, help) for docs and ``config show``."""
    rows = []
    for field in dataclasses.fields(cls):
        if field.metadata.get("env") is None:
            continue
        where, key = _file_key(field, section)
        rows.append({
            "key": f"{where}.{key}",
            "flag": _flag_name(field),
            "env": field.metadata["env"],
            "default": "(secret)" if field.metadata.get("secret") else _shown(field.default),
            "help": field.metadata["help"],
        })
    return rows


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?")


def parse_host_port(name: str, value: str) -> tuple[str, int]:
    """Split a listen or connect address ``HOST:PORT`` (``[v6]:PORT`` too), naming the setting when it is
    malformed: the host must be an IP address or a DNS name, the port 0-65535 (0: any free port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise SettingsError(f"{name}: expected HOST:PORT, got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if bracketed or not _HOSTNAME.fullmatch(host):
                raise SettingsError(f"{name}: {host!r} in {value!r} is neither an IP address nor a host name") from None
    return host or "0.0.0.0", int(port)


def utc_timestamp(value: str | None, flag: str) -> dt.datetime | None:
    """An ISO 8601 flag value as naive UTC (the store's convention): an offset or ``Z`` is honoured,
    no offset means UTC. ``None`` passes through.

    Raises:
        SettingsError: naming the flag and the value.
    """
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise SettingsError(f"{flag} {value!r} is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)") from exc
    return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo is not None else parsed
