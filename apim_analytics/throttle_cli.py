"""``apim-analytics throttle ...``: read throttle decisions and manage policies.

    apim-analytics throttle status --level LEVEL KEY [--now ISO] [--format table|json]
    apim-analytics throttle throttled [--now ISO] [--format table|json]
    apim-analytics throttle policies load FILE
    apim-analytics throttle policies list [--format table|json]

Every command takes ``--store URL`` (env APIM_STORE_URL). Bad input exits
with status 2 and one line naming the problem (main() turns SettingsError
into that).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from apim_analytics.settings import SettingsError, utc_timestamp

DEFAULT_STORE = "sqlite:///apim-analytics.db"
FORMATS = ("table", "json")


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get("APIM_STORE_URL", DEFAULT_STORE),
                        help=f"SQLAlchemy URL [env: APIM_STORE_URL; default: {DEFAULT_STORE}]")


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


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


@contextmanager
def _store(url: str) -> Iterator[Engine]:
    """An engine on a store whose tables exist; store problems become one-line SettingsErrors."""
    from store.engine import StoreError, create_schema, make_engine

    try:
        engine = make_engine(url)
    except StoreError as exc:
        raise SettingsError(f"--store: {exc}") from None
    try:
        create_schema(engine)
        yield engine
    except OperationalError as exc:
        reason = (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SettingsError(f"store {_safe_url(url)}: {reason}") from None
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
    with _store(args.store) as engine:
        status = throttle_status(engine, args.level, args.key, now)
    _print_statuses([status], fmt, single=True)
    return 0


def _throttled(args: argparse.Namespace) -> int:
    from store.throttle import throttled_keys

    fmt, now = _format(args), _now(args)
    with _store(args.store) as engine:
        statuses = throttled_keys(engine, now)
    if fmt == "table" and not statuses:
        print(f"no throttled keys at {now.isoformat(sep=' ')} UTC")
        return 0
    _print_statuses(statuses, fmt, single=False)
    return 0


def _policies_load(args: argparse.Namespace) -> int:
    from store.throttle import (PolicyError, ensure_default_policies, load_policies, load_policies_file,
                                store_policies)

    with _store(args.store) as engine:
        ensure_default_policies(engine)
        with engine.connect() as conn:
            known = set(load_policies(conn))
        try:
            policies, assignments = load_policies_file(args.file, known_policies=known)
        except PolicyError as exc:
            raise SettingsError(str(exc)) from None
        with engine.begin() as conn:
            store_policies(conn, policies, assignments)
    print(f"throttle policies: {len(policies)} policies and {len(assignments)} assignments written to the store")
    return 0


def _policies_list(args: argparse.Namespace) -> int:
    from store.throttle import effective_policies, load_assignments

    fmt = _format(args)
    with _store(args.store) as engine, engine.connect() as conn:
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
    _add_store(parser)
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
