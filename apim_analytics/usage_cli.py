"""``apim-analytics usage``: the query API (query/usage.py) on the command line.

    apim-analytics usage --store URL --group-by api,version,application,tier,status_class \\
        [--from 2024-05-01T00:00] [--to 2024-06-01T00:00] [--granularity day] [--api NAME ...] \\
        [--top N] [--format table|csv|json|parquet] [--out FILE]

Timestamps are ISO 8601 and UTC (a naive one is taken as UTC). Parquet needs --out.
Bad arguments (unknown group-by name, inverted range, unknown API, ...) exit 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from apim_analytics.settings import SettingsError, utc_timestamp

FORMATS = ("table", "csv", "json", "parquet")


def add_parser(sub) -> None:  # type: ignore[no-untyped-def]
    from query.usage import GRANULARITIES, GROUP_BY

    p = sub.add_parser("usage", help="usage grouped by API, version, application, tier, status class, time, ...")
    p.add_argument("--store", default=os.environ.get("APIM_STORE_URL", "sqlite:///apim-analytics.db"),
                   help="SQLAlchemy URL [env: APIM_STORE_URL; default: sqlite:///apim-analytics.db]")
    p.add_argument("--group-by", required=True, metavar="NAMES",
                   help=f"comma-separated, from: {', '.join(GROUP_BY)}")
    p.add_argument("--from", dest="start", default=None, metavar="T", help="start, ISO 8601, UTC (inclusive)")
    p.add_argument("--to", dest="end", default=None, metavar="T", help="end, ISO 8601, UTC (exclusive)")
    p.add_argument("--granularity", choices=GRANULARITIES, default=None, help="time bucket size (group-by bucket)")
    p.add_argument("--api", dest="apis", action="append", default=None, metavar="NAME",
                   help="only this API (repeatable)")
    p.add_argument("--application", dest="applications", action="append", default=None, metavar="ID",
                   help="only this application id (repeatable)")
    p.add_argument("--top", type=int, default=None, metavar="N", help="the N rows with most requests")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from query.usage import QueryError, usage
    from store.engine import StoreError

    if args.format == "parquet" and not args.out:
        raise SettingsError("--format parquet needs --out FILE")
    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    try:
        df = usage(args.store, group_by=group_by, start=utc_timestamp(args.start, "--from"), end=utc_timestamp(args.end, "--to"),
                   granularity=args.granularity, apis=args.apis, applications=args.applications, top=args.top)
    except (QueryError, StoreError) as exc:
        raise SettingsError(str(exc)) from exc
    if args.format == "parquet":
        df.to_parquet(args.out, index=False)
        return 0
    if args.format == "csv":
        text = df.to_csv(index=False)
    elif args.format == "json":
        text = df.to_json(orient="records", date_format="iso", indent=None) + "\n"
    else:
        text = (df.to_string(index=False) if len(df) else "(no usage in the range)") + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
