"""``apim-analytics dashboard``: the HTML dashboard, as a file or served.

    apim-analytics dashboard build --store URL --out FILE [--from T] [--to T] [--api NAME]
    apim-analytics dashboard serve --store URL [--listen 127.0.0.1:9104]

Settings (store, listen, granularity, ...) come from flags, ``APIM_DASHBOARD_*`` variables or the
``dashboard:`` section of the config file. Timestamps are ISO 8601, UTC when they carry no offset.
Bad arguments exit 2 with one line naming the problem.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from apim_analytics.settings import SettingsError, add_flags, resolve, utc_timestamp


def add_parser(sub) -> None:  # type: ignore[no-untyped-def]
    from dashboards.settings import DashboardSettings

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
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="YAML config file, one section per component [env: APIM_CONFIG]")
        add_flags(parser, DashboardSettings)
    build.set_defaults(func=run_build)
    serve.set_defaults(func=run_serve)


def _dashboard(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dashboards.server import Dashboard
    from dashboards.settings import DashboardSettings
    from store.engine import make_engine

    settings = resolve(DashboardSettings, args=args, section="dashboard")
    return Dashboard(make_engine(settings.store, readonly=True), settings), settings


def run_build(args: argparse.Namespace) -> int:
    from query.usage import QueryError
    from dashboards.page import render_page

    start, end = utc_timestamp(args.start, "--from"), utc_timestamp(args.end, "--to")
    dashboard, _ = _dashboard(args)
    try:
        doc = dashboard.document(start=start, end=end, api=args.api)
    except QueryError as exc:
        raise SettingsError(str(exc)) from exc
    finally:
        dashboard.engine.dispose()
    out = Path(args.out)
    try:
        out.write_text(render_page(doc), encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"--out {out}: {exc.strerror or exc}") from exc
    if doc["buckets"]:
        print(f"dashboard: wrote {out} ({len(doc['buckets'])} {doc['granularity']} buckets from {doc['from']} "
              f"to {doc['to']}, {len(doc['apis'])} APIs, {sum(r[2] for r in doc['traffic'])} requests)")
    else:
        print(f"dashboard: wrote {out} (the store has no usage in the range)")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from dashboards.server import start_server

    dashboard, settings = _dashboard(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = start_server(dashboard, settings.listen)
    except OSError as exc:
        raise SettingsError(f"--listen {settings.listen}: {exc.strerror or exc}") from exc
    host, port = server.server_address[:2]
    print(f"dashboard: serving http://{host}:{port}/ (/data.json, /healthz, /metrics); Ctrl-C stops", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    dashboard.engine.dispose()
    return 0
