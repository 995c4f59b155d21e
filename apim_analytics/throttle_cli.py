"""``apim-analytics throttle ...``: read throttle decisions and manage policies.

    apim-analytics throttle status --level LEVEL KEY [--now ISO] [--format table|json]
    apim-analytics throttle throttled [--now ISO] [--format table|json]
    apim-analytics throttle policies load FILE
    apim-analytics throttle policies list [--format table|json]

Every command takes ``--store URL`` (env APIM_STORE_URL). status, throttled
and policies list only read: the store must exist and carry this version's
schema; policies load creates or upgrades it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apim_analytics.common import add_store_flags, store_url
from core.settings import SettingsError, utc_timestamp

if TYPE_CHECKING:
    from sqlalchemy import Engine

FORMATS = ("table", "json")


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="table", help="table or json (default: table)")


def _add_now(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", default=None, metavar="ISO",
                        help="judge at this ISO-8601 time (default: the current time; naive means UTC)")


def _format(args: argparse.Namespace) -> str:
    if args.format not in FORMATS:
        raise SettingsError(f"--format: expected table or json, got {args.format!r}")
    return str(args.format)


def _now(args: argparse.Namespace) -> datetime:
    """``--now`` as naive UTC (default: now)."""
    return utc_timestamp(args.now, "--now") or datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def _reader(args: argparse.Namespace) -> Iterator[Engine]:
    """A read-only engine on a store that exists and is migrated (nothing is created)."""
    from store.engine import open_reader

    engine = open_reader(store_url(args))
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _writer(args: argparse.Namespace) -> Iterator[Engine]:
    """An engine on a store brought to this version's schema first."""
    from store.engine import create_schema, make_engine

    engine = make_engine(store_url(args))
    try:
        create_schema(engine)
        yield engine
    finally:
        engine.dispose()


def _cell(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


_STATUS_HEADERS = ("LEVEL", "KEY", "POLICY", "USED", "QUOTA", "REMAINING", "THROTTLED", "NEAR_LIMIT",
                   "WINDOW_START", "RESETS_AT")


def _print_statuses(statuses: Sequence[Any], fmt: str, *, single: bool) -> None:
    if fmt == "json":
        payload: Any = statuses[0].as_dict() if single else [s.as_dict() for s in statuses]
        print(json.dumps(payload, indent=2))
        return
    _print_table(_STATUS_HEADERS, [(s.level, s.throttle_key, s.policy if s.policy is not None else "-", s.used,
                                    s.quota, s.remaining, s.throttled, s.near_limit, s.window_start, s.resets_at)
                                   for s in statuses])


def _status(args: argparse.Namespace) -> int:
    from store.throttle import LEVELS, throttle_status

    if args.level not in LEVELS:
        raise SettingsError(f"--level: expected subscription, application or api, got {args.level!r}")
    fmt, now = _format(args), _now(args)
    with _reader(args) as engine:
        status = throttle_status(engine, args.level, args.key, now)
    _print_statuses([status], fmt, single=True)
    return 0


def _throttled(args: argparse.Namespace) -> int:
    from store.throttle import throttled_keys

    fmt, now = _format(args), _now(args)
    with _reader(args) as engine:
        statuses = throttled_keys(engine, now)
    if fmt == "table" and not statuses:
        print(f"no throttled keys at {now.isoformat(sep=' ')} UTC")
        return 0
    _print_statuses(statuses, fmt, single=False)
    return 0


def _policies_load(args: argparse.Namespace) -> int:
    from store.throttle import ensure_default_policies, load_policies, load_policies_file, store_policies

    if not Path(args.file).is_file():  # before the store is opened: a typo must not create one
        raise SettingsError(f"policies file {args.file} does not exist")
    load_policies_file(args.file, known_policies=None)  # likewise a malformed file; assignments are checked below
    with _writer(args) as engine:
        ensure_default_policies(engine)
        with engine.connect() as conn:
            known = set(load_policies(conn))
        policies, assignments = load_policies_file(args.file, known_policies=known)
        with engine.begin() as conn:
            store_policies(conn, policies, assignments)
    print(f"throttle policies: {len(policies)} policies and {len(assignments)} assignments written to the store")
    return 0


def _policies_list(args: argparse.Namespace) -> int:
    from store.throttle import effective_policies, load_assignments

    fmt = _format(args)
    with _reader(args) as engine, engine.connect() as conn:
        policies = sorted(effective_policies(conn).values(), key=lambda p: (p.level, p.name))
        assignments = sorted(load_assignments(conn).items())
    if fmt == "json":
        print(json.dumps({"policies": [vars(p) for p in policies],
                          "assignments": [{"level": lvl, "throttle_key": key, "policy": name}
                                          for (lvl, key), name in assignments]}, indent=2))
        return 0
    _print_table(("LEVEL", "NAME", "QUOTA_TYPE", "QUOTA", "WINDOW", "STOP_ON_QUOTA_REACH", "DESCRIPTION"),
                 [(p.level, p.name, p.quota_type, p.quota, p.window_unit, p.stop_on_quota_reach, p.description)
                  for p in policies])
    if assignments:
        print()
        _print_table(("LEVEL", "THROTTLE_KEY", "POLICY"), [(lvl, key, name) for (lvl, key), name in assignments])
    return 0


def _command(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    add_store_flags(parser)
    parser.set_defaults(func=func)


def add_parser(sub: Any) -> None:
    """Register ``throttle`` and its actions on the top-level subparsers."""
    throttle = sub.add_parser("throttle", help="throttle quotas: decisions per key and policies").add_subparsers(
        dest="action", required=True, metavar="ACTION")

    status = throttle.add_parser("status", help="where one throttle key stands against its quota")
    status.add_argument("key", help="throttle key, e.g. app-1:/pizzashack:1.0.0 (subscription), app-1:alice "
                                    "(application), /pizzashack:1.0.0 (api)")
    status.add_argument("--level", required=True, help="subscription, application or api")
    _add_now(status)
    _add_format(status)
    _command(status, _status)

    throttled = throttle.add_parser("throttled", help="every key throttled now")
    _add_now(throttled)
    _add_format(throttled)
    _command(throttled, _throttled)

    policies = throttle.add_parser("policies", help="throttling policies").add_subparsers(
        dest="policies_action", required=True, metavar="ACTION")
    load = policies.add_parser("load", help="load custom policies and API assignments (YAML or JSON)")
    load.add_argument("file", help="policies file: {policies: [...], assignments: [...]}")
    _command(load, _policies_load)
    listing = policies.add_parser("list", help="the policies in force (WSO2 defaults plus stored ones)")
    _add_format(listing)
    _command(listing, _policies_list)
