"""``apim-analytics billing``: monetization export, publishing and reconciliation (billing/).

    apim-analytics billing export --store URL --period 2026-11 [--format csv|jsonl] [--out FILE] [--billable 2xx]
    apim-analytics billing publish --store URL --sink webhook --url URL | --sink file --path FILE \\
        [--name NAME] [--until ISO] [--settle-seconds 120] [--attempts 5] [--base-delay 0.5] [--billable 2xx]
    apim-analytics billing reconcile --store URL --period 2026-11 [--sink NAME] [--billable 2xx]

--billable: comma-separated status classes (2xx, 3xx, 4xx, 5xx or all), plus 'throttled'
to count throttled-out requests. Bad arguments exit 2 with one line; a publish run that
cannot deliver a record exits 1 (the watermark stays before it; rerun to continue).
export and reconcile only read: the store must exist and carry this version's schema.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from apim_analytics.common import add_store_flags, store_url, write_output
from core.settings import SettingsError, utc_timestamp


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``billing`` and its actions on the top-level subparsers."""
    p = sub.add_parser("billing", help="monetization: billable usage export, usage publishing, reconciliation")
    bsub = p.add_subparsers(dest="billing_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        add_store_flags(q)
        q.add_argument("--billable", default="2xx", metavar="CLASSES",
                       help="billable status classes: 2xx,3xx,4xx,5xx or all; add 'throttled' to count "
                            "throttled-out requests (default: 2xx)")

    e = bsub.add_parser("export", help="billable requests per subscription for a calendar month")
    common(e)
    e.add_argument("--period", required=True, metavar="YYYY-MM", help="calendar month, UTC")
    e.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    e.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of stdout")
    e.set_defaults(func=run_export)

    pub = bsub.add_parser("publish", help="publish complete hours of billable usage to a sink, idempotently")
    common(pub)
    pub.add_argument("--sink", choices=("webhook", "file"), required=True)
    pub.add_argument("--url", default=None, help="webhook URL (--sink webhook)")
    pub.add_argument("--timeout", type=float, default=10.0, help="webhook timeout, seconds")
    pub.add_argument("--path", default=None, help="JSON-lines file (--sink file)")
    pub.add_argument("--name", default=None, help="sink name for the watermark and keys (default: the sink kind)")
    pub.add_argument("--until", default=None, metavar="ISO", help="publish no window ending after this (UTC)")
    pub.add_argument("--settle-seconds", type=float, default=120.0,
                     help="only hours ending at least this long ago are published (default: 120)")
    pub.add_argument("--attempts", type=int, default=5, help="delivery attempts per record (default: 5)")
    pub.add_argument("--base-delay", type=float, default=0.5, help="first retry delay, seconds; doubles")
    pub.set_defaults(func=run_publish)

    r = bsub.add_parser("reconcile", help="billed (ledger) versus stored usage per subscription for a month")
    common(r)
    r.add_argument("--period", required=True, metavar="YYYY-MM", help="calendar month, UTC")
    r.add_argument("--sink", default=None, metavar="NAME", help="sink name (default: the ledger's only sink)")
    r.set_defaults(func=run_reconcile)


def _rule(args: argparse.Namespace):  # billing.export loads pandas: kept lazy
    from billing.errors import BillingArgumentError
    from billing.export import BillableRule

    try:
        return BillableRule.parse(args.billable)
    except BillingArgumentError as exc:
        raise SettingsError(f"--billable: {exc}") from exc


def run_export(args: argparse.Namespace) -> int:
    from billing.export import billable_usage

    rule = _rule(args)
    df = billable_usage(store_url(args), args.period, rule)
    if args.format == "csv":
        text = df.to_csv(index=False)
    else:
        text = "".join(line + "\n" for line in df.to_json(orient="records", lines=True).splitlines() if line)
    write_output(text, args.out)
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from billing.publisher import FileSink, WebhookSink, publish
    from store.engine import create_schema, make_engine

    rule = _rule(args)
    if args.sink == "webhook":
        if not args.url:
            raise SettingsError("--sink webhook needs --url URL")
        sink: WebhookSink | FileSink = WebhookSink(args.url, timeout=args.timeout)
    else:
        if not args.path:
            raise SettingsError("--sink file needs --path FILE")
        sink = FileSink(args.path)
    if args.attempts < 1 or args.base_delay < 0 or args.settle_seconds < 0:
        raise SettingsError("--attempts must be >= 1, --base-delay and --settle-seconds >= 0")
    until = utc_timestamp(args.until, "--until")
    engine = make_engine(store_url(args))
    try:
        create_schema(engine)
        result = publish(engine, sink, sink_name=args.name, rule=rule, until=until,
                         settle=dt.timedelta(seconds=args.settle_seconds), attempts=args.attempts,
                         base_delay=args.base_delay)
    finally:
        engine.dispose()
    until_text = f"{result.published_until:%Y-%m-%dT%H:%M}Z" if result.published_until else "(nothing to publish)"
    print(f"billing publish {result.sink}: {result.delivered} records delivered ({result.resent} re-sent) "
          f"in {result.windows} windows; published until {until_text}")
    return 0


def run_reconcile(args: argparse.Namespace) -> int:
    from billing.reconcile import reconcile

    rule = _rule(args)
    df = reconcile(store_url(args), args.period, sink=args.sink, rule=rule)
    if len(df):
        sys.stdout.write(df.to_string(index=False) + "\n")
    differ = int((df["difference"] != 0).sum())
    print(f"billing reconcile {args.period}: {len(df)} subscriptions, {differ} differ "
          f"(billed {int(df['billed'].sum())}, stored {int(df['stored'].sum())})")
    return 0
