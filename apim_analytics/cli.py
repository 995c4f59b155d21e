"""``apim-analytics``: one command, a subcommand per stage of the data flow.

    apim-analytics simulate ...         replay simulated Mixer traffic to a collector
    apim-analytics collector serve ...  the Mixer metric adapter (gRPC -> Kafka)
    apim-analytics pipeline run ...     the Beam job (Kafka -> analytics store)
    apim-analytics subscriptions load   load the opaque-token/API-key catalog into the store
    apim-analytics apis load|list       the API catalog from OpenAPI documents (Istio 1.8+ access logs)
    apim-analytics usage ...            usage by API, application, tier, ... (analysts)
    apim-analytics billing ...          monthly billable usage: export, publish, reconcile
    apim-analytics dashboard build|serve  the HTML dashboard
    apim-analytics demo                 all of it, end to end, into SQLite
    apim-analytics config show          every setting with its flag, env var and default

Errors are one line on stderr naming the problem and what to do: exit status 2
for a usage error (a flag, a file, a URL), 1 for a runtime failure (a broker
or database away, a delivery refused). ``--debug`` (or ``APIM_LOG_LEVEL=DEBUG``)
adds the traceback.

Building the parser imports only the settings dataclasses: each subcommand
loads its heavy libraries (pandas, SQLAlchemy, Beam, gRPC) when it runs, so
``--help`` and argument errors stay cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from apim_analytics import apis_cli, billing_cli, dashboard_cli, demo_cli, store_cli, throttle_cli, usage_cli
from apim_analytics.common import add_config_flag, add_store_flags, store_url
from collector.settings import CollectorSettings
from core import logs
from core.errors import ApimError
from core.settings import add_flags, describe, resolve
from dashboards.settings import DashboardSettings
from pipeline.settings import PipelineSettings
from simulator.config import SimulationConfig
from store.settings import RetentionSettings, StoreSettings


def _collector_serve(args: argparse.Namespace) -> int:
    import asyncio

    from collector.server import serve

    settings = resolve(CollectorSettings, args=args, section="collector")
    asyncio.run(serve(settings))
    return 0


def _pipeline_run(args: argparse.Namespace) -> int:
    overrides = {"follow": False, "streaming": False} if args.once else {}
    settings = resolve(PipelineSettings, args=args, section="pipeline", overrides=overrides)
    if settings.streaming:
        from pipeline.stream_job import run_streaming

        streamed = run_streaming(settings, args.beam_args)
        print(f"pipeline: streaming job {streamed.job_name} stopped after {streamed.submissions} submission(s); "
              f"store offsets {dict(sorted(streamed.offsets.items()))}")
        return 0
    from pipeline.job import run

    retention = resolve(RetentionSettings, args=args, section="retention")
    results = run(settings, args.beam_args, retention=retention)
    events = sum(r.events for r in results)
    print(f"pipeline: {len(results)} run(s), {sum(r.records for r in results)} records, {events} events, "
          f"{sum(r.duplicates for r in results)} duplicates dropped, "
          f"{sum(r.undecodable for r in results)} records sent to the dead-letter topic, "
          f"{sum(r.folded_requests for r in results)} requests folded into resource 'other'")
    return 0


def _pipeline_purge(args: argparse.Namespace) -> int:
    retention = resolve(RetentionSettings, args=args, section="retention")
    from store.engine import create_schema, make_engine
    from store.retention import purge

    engine = make_engine(store_url(args))
    try:
        create_schema(engine)
        deleted = purge(engine, retention)
    finally:
        engine.dispose()
    print("purge: " + ", ".join(f"{table} {n}" for table, n in deleted.items() if n) if any(deleted.values())
          else "purge: nothing older than its retention")
    return 0


def _subscriptions_load(args: argparse.Namespace) -> int:
    url = store_url(args)
    from collector.credentials import SubscriptionCatalog
    from store import subscriptions
    from store.engine import make_engine

    catalog = SubscriptionCatalog.load(args.file)  # before the store is opened: a bad file changes nothing
    engine = make_engine(url)
    try:
        written = subscriptions.save(engine, catalog.rows(), replace_all=args.replace)
    finally:
        engine.dispose()
    print(f"subscriptions: {len(catalog)} credentials, {written} subscriptions written to the store")
    return 0


SETTINGS_SECTIONS: tuple[tuple[type, str], ...] = (
    (StoreSettings, "store"), (CollectorSettings, "collector"), (PipelineSettings, "pipeline"),
    (RetentionSettings, "retention"), (SimulationConfig, "simulate"), (DashboardSettings, "dashboard"),
    (demo_cli.DemoSettings, "demo"),
)


def _config_show(args: argparse.Namespace) -> int:
    shown: set[str] = set()
    for cls, section in SETTINGS_SECTIONS:
        for row in describe(cls, section):
            if row["key"] in shown:  # a shared key (store.url) is listed once
                continue
            shown.add(row["key"])
            print(f"{row['key']:<36} {row['flag']:<28} {row['env']:<38} {row['default']:<24} {row['help']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; cheap (no heavy imports), so ``--help`` is fast."""
    parser = argparse.ArgumentParser(prog="apim-analytics", description="API usage analytics for an Istio mesh: "
                                     "collector, pipeline, store, queries, billing and dashboards.")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error and log at DEBUG; accepted anywhere on the line "
                             "[env: APIM_LOG_LEVEL=DEBUG]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collector = sub.add_parser("collector", help="the Mixer metric adapter").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    serve = collector.add_parser("serve", help="serve Mixer's HandleMetric calls and publish to Kafka")
    add_config_flag(serve)
    add_flags(serve, CollectorSettings)
    serve.set_defaults(func=_collector_serve)

    pipeline = sub.add_parser("pipeline", help="the aggregation job").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    prun = pipeline.add_parser("run",
                               help="aggregate the Kafka backlog into the store (any other flag is a Beam option)")
    add_config_flag(prun)
    add_flags(prun, PipelineSettings)
    add_flags(prun, RetentionSettings)
    prun.add_argument("--once", action="store_true", help="work off the backlog and exit (the default)")
    prun.set_defaults(func=_pipeline_run)
    ppurge = pipeline.add_parser("purge", help="delete facts older than their granularity's retention")
    add_store_flags(ppurge)
    add_flags(ppurge, RetentionSettings)
    ppurge.set_defaults(func=_pipeline_purge)

    from simulator import cli as sim_cli

    sim = sub.add_parser("simulate", help="send simulated Mixer traffic to a collector")
    sim_cli.add_arguments(sim)
    sim.set_defaults(func=sim_cli.run)

    subs = sub.add_parser("subscriptions", help="the subscription catalog (opaque tokens, API keys)").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    load = subs.add_parser("load", help="load a catalog file (YAML, CSV or JSON lines) into the store")
    load.add_argument("file", help="catalog file; credentials appear only as SHA-256 hashes")
    add_store_flags(load)
    load.add_argument("--replace", action="store_true", help="drop entries not in the file")
    load.set_defaults(func=_subscriptions_load)

    for module in (store_cli, apis_cli, throttle_cli, usage_cli, billing_cli, dashboard_cli, demo_cli):
        module.add_parser(sub)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True,
                                                                           metavar="ACTION")
    show = config.add_parser("show", help="list every setting with its flag, env var and default")
    show.set_defaults(func=_config_show)
    return parser


def _debugging(flag: bool) -> bool:
    return flag or os.environ.get("APIM_LOG_LEVEL", "").upper() == "DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error becomes one line on stderr and an exit status (see the module docstring)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, as the error hint suggests appending it; it is never a
    # subcommand's or Beam's option, so it is taken out before the subcommand's parser sees the rest
    debug_flag = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args, extra = parser.parse_known_args(argv)
    if args.func is _pipeline_run:
        args.beam_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = _debugging(debug_flag)
    logs.configure("DEBUG" if debug else None)
    try:
        return int(args.func(args) or 0)
    except ApimError as exc:
        if debug:
            traceback.print_exc()
        print(f"apim-analytics: {exc.one_line()}", file=sys.stderr)
        return 2 if exc.usage else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a defect: one line, the traceback only when asked for
        if debug:
            traceback.print_exc()
        reason = " ".join(str(exc).split())[:300]
        print(f"apim-analytics: unexpected {type(exc).__name__}: {reason}; rerun with --debug for the traceback",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
