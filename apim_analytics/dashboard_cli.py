"""``apim-analytics dashboard``: the HTML dashboard, as a file or served.

    apim-analytics dashboard build --store URL --out FILE [--from T] [--to T] [--api NAME]
    apim-analytics dashboard serve --store URL [--listen 127.0.0.1:9104]

Settings (store, listen, granularity, ...) come from flags, ``APIM_DASHBOARD_*`` variables or the
``dashboard:`` section of the config file. Timestamps are ISO 8601, UTC when they carry no offset.
Both only read: the store must exist and carry this version's schema.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from apim_analytics.common import add_config_flag, writing_out
from core.settings import SettingsError, add_flags, resolve, utc_timestamp
from dashboards.settings import DashboardSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dashboard`` and its actions on the top-level subparsers."""

    dash = sub.add_parser("dashboard", help="the HTML dashboard: build a file or serve it").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    build = dash.add_parser("build", help="write the self-contained dashboard page to a file")
    build.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    build.add_argument("--from", dest="start", default=None, metavar="T",
                       help="start, ISO 8601, UTC (default: the first request the store has seen)")
    build.add_argument("--to", dest="end", default=None, metavar="T", help="end, ISO 8601, UTC, exclusive "
                                                                           "(default: after the last request)")
    build.add_argument("--api", default=None, metavar="NAME", help="only this API (default: all)")
    serve = dash.add_parser("serve", help="serve the page, /data.json, /healthz and /metrics until stopped")
    for parser in (build, serve):
        add_config_flag(parser)
        add_flags(parser, DashboardSettings)
    build.set_defaults(func=run_build)
    serve.set_defaults(func=run_serve)


def _dashboard(args: argparse.Namespace):
    from dashboards.server import Dashboard
    from store.engine import open_reader

    settings = resolve(DashboardSettings, args=args, section="dashboard")
    return Dashboard(open_reader(settings.store), settings), settings


def run_build(args: argparse.Namespace) -> int:
    from dashboards.page import render_page

    start, end = utc_timestamp(args.start, "--from"), utc_timestamp(args.end, "--to")
    dashboard, _ = _dashboard(args)
    try:
        doc = dashboard.document(start=start, end=end, api=args.api)
    finally:
        dashboard.engine.dispose()
    out = Path(args.out)
    with writing_out(args.out):
        out.write_text(render_page(doc), encoding="utf-8")
    if doc["buckets"]:
        print(f"dashboard: wrote {out} ({len(doc['buckets'])} {doc['granularity']} buckets from {doc['from']} "
              f"to {doc['to']}, {len(doc['apis'])} APIs, {sum(r[2] for r in doc['traffic'])} requests)")
    else:
        print(f"dashboard: wrote {out} (the store has no usage in the range)")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from dashboards.server import bound_address, start_server

    dashboard, settings = _dashboard(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = start_server(dashboard, settings.listen)
    except OSError as exc:
        raise SettingsError(f"--listen {settings.listen}: {exc.strerror or exc}") from exc
    host, port = bound_address(server)
    print(f"dashboard: serving http://{host}:{port}/ (/data.json, /healthz, /metrics); Ctrl-C stops", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    dashboard.engine.dispose()
    return 0
