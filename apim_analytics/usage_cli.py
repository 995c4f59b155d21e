"""``apim-analytics usage``: the query API (query/usage.py) on the command line.

    apim-analytics usage --store URL --group-by api,version,application,tier,status_class \\
        [--from 2024-05-01T00:00] [--to 2024-06-01T00:00] [--granularity day] [--api NAME ...] \\
        [--top N] [--format table|csv|json|parquet] [--out FILE]

Timestamps are ISO 8601 and UTC (a naive one is taken as UTC). Parquet needs --out.
Read-only: the store must exist and carry this version's schema.
"""

from __future__ import annotations

import argparse
import sys

from apim_analytics.common import add_store_flags, store_url, write_output, writing_out
from core.settings import SettingsError, utc_timestamp
from query.names import GRANULARITIES, GROUP_BY

FORMATS = ("table", "csv", "json", "parquet")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``usage`` on the top-level subparsers."""
    p = sub.add_parser("usage", help="usage grouped by API, version, application, tier, status class, time, ...")
    add_store_flags(p)
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
    """Query and print; argument errors are raised before the store is opened."""
    if args.format == "parquet" and not args.out:
        raise SettingsError("--format parquet needs --out FILE")
    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    start, end = utc_timestamp(args.start, "--from"), utc_timestamp(args.end, "--to")
    url = store_url(args)
    from query.usage import usage

    df = usage(url, group_by=group_by, start=start, end=end, granularity=args.granularity, apis=args.apis,
               applications=args.applications, top=args.top)
    if args.format == "parquet":
        with writing_out(args.out):
            df.to_parquet(args.out, index=False)
        return 0
    if args.format == "csv":
        text = df.to_csv(index=False)
    elif args.format == "json":
        text = df.to_json(orient="records", date_format="iso", indent=None) + "\n"
    else:
        text = (df.to_string(index=False) if len(df) else "(no usage in the range)") + "\n"
    write_output(text, args.out)
    sys.stdout.flush()
    return 0
