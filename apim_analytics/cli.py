"""``apim-analytics``: one command, a subcommand per stage of the data flow.

    apim-analytics simulate ...         replay simulated Mixer traffic to a collector
    apim-analytics collector serve ...  the Mixer metric adapter (gRPC -> Kafka)
    apim-analytics pipeline run ...     the Beam job (Kafka -> analytics store)
    apim-analytics subscriptions load   load the opaque-token/API-key catalog into the store
    apim-analytics usage ...            usage by API, application, tier, ... (analysts)
    apim-analytics billing ...          monthly billable usage: export, publish, reconcile
    apim-analytics dashboard build|serve  the HTML dashboard
    apim-analytics demo                 all of it, end to end, into SQLite
    apim-analytics config show          every setting with its flag, env var and default

Bad arguments exit with status 2 and a message naming the problem.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from apim_analytics import logs
from apim_analytics.settings import SettingsError, add_flags, describe, resolve


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML config file, one section per component [env: APIM_CONFIG]")


def _collector_serve(args: argparse.Namespace) -> int:
    from collector.server import serve
    from collector.settings import CollectorSettings

    settings = resolve(CollectorSettings, args=args, section="collector")
    asyncio.run(serve(settings))
    return 0


def _pipeline_run(args: argparse.Namespace) -> int:
    from pipeline.job import run
    from pipeline.settings import PipelineSettings

    from store.retention import RetentionSettings

    overrides = {"follow": False} if args.once else {}
    settings = resolve(PipelineSettings, args=args, section="pipeline", overrides=overrides)
    retention = resolve(RetentionSettings, args=args, section="retention")
    results = run(settings, args.beam_args, retention=retention)
    events = sum(r.events for r in results)
    print(f"pipeline: {len(results)} run(s), {sum(r.records for r in results)} records, {events} events, "
          f"{sum(r.duplicates for r in results)} duplicates dropped, "
          f"{sum(r.undecodable for r in results)} records sent to the dead-letter topic, "
          f"{sum(r.folded_requests for r in results)} requests folded into resource 'other'")
    return 0


def _pipeline_purge(args: argparse.Namespace) -> int:
    from store.engine import create_schema, make_engine
    from store.retention import RetentionSettings, purge

    retention = resolve(RetentionSettings, args=args, section="retention")
    engine = make_engine(args.store)
    try:
        create_schema(engine)
        deleted = purge(engine, retention)
    finally:
        engine.dispose()
    print("purge: " + ", ".join(f"{table} {n}" for table, n in deleted.items() if n) if any(deleted.values())
          else "purge: nothing older than its retention")
    return 0


def _subscriptions_load(args: argparse.Namespace) -> int:
    from collector.credentials import SubscriptionCatalog
    from store import subscriptions
    from store.engine import make_engine

    try:
        catalog = SubscriptionCatalog.load(args.file)
    except (OSError, ValueError, KeyError) as exc:
        raise SettingsError(f"subscription catalog {args.file}: {exc}") from exc
    engine = make_engine(args.store)
    written = subscriptions.save(engine, catalog.rows(), replace_all=args.replace)
    engine.dispose()
    print(f"subscriptions: {len(catalog)} credentials, {written} subscriptions written to the store")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from apim_analytics.demo import run_demo

    return run_demo(args)


def _config_show(args: argparse.Namespace) -> int:
    from collector.settings import CollectorSettings
    from pipeline.settings import PipelineSettings
    from simulator.config import SimulationConfig
    from dashboards.settings import DashboardSettings

    from store.retention import RetentionSettings

    for cls, section in ((CollectorSettings, "collector"), (PipelineSettings, "pipeline"),
                         (RetentionSettings, "retention"), (SimulationConfig, "simulate"),
                         (DashboardSettings, "dashboard")):
        for row in describe(cls, section):
            print(f"{row['key']:<36} {row['flag']:<28} {row['env']:<38} {row['default']:<24} {row['help']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from collector.settings import CollectorSettings
    from pipeline.settings import PipelineSettings
    from store.retention import RetentionSettings

    parser = argparse.ArgumentParser(prog="apim-analytics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collector = sub.add_parser("collector", help="the Mixer metric adapter").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    serve = collector.add_parser("serve", help="serve Mixer's HandleMetric calls and publish to Kafka")
    _add_config_flag(serve)
    add_flags(serve, CollectorSettings)
    serve.set_defaults(func=_collector_serve)

    pipeline = sub.add_parser("pipeline", help="the aggregation job").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    prun = pipeline.add_parser("run", help="aggregate the Kafka backlog into the store (any other flag is a Beam option)")
    _add_config_flag(prun)
    add_flags(prun, PipelineSettings)
    add_flags(prun, RetentionSettings)
    prun.add_argument("--once", action="store_true", help="work off the backlog and exit (the default)")
    prun.set_defaults(func=_pipeline_run)
    ppurge = pipeline.add_parser("purge", help="delete facts older than their granularity's retention")
    _add_config_flag(ppurge)
    ppurge.add_argument("--store", default=os.environ.get("APIM_STORE_URL", "sqlite:///apim-analytics.db"),
                        help="SQLAlchemy URL [env: APIM_STORE_URL; default: sqlite:///apim-analytics.db]")
    add_flags(ppurge, RetentionSettings)
    ppurge.set_defaults(func=_pipeline_purge)

    try:
        from simulator import cli as sim_cli
    except ImportError:  # pragma: no cover - the simulator ships with the package
        sim_cli = None
    if sim_cli is not None:
        sim = sub.add_parser("simulate", help="send simulated Mixer traffic to a collector")
        sim_cli.add_arguments(sim)
        sim.set_defaults(func=sim_cli.run)

    subs = sub.add_parser("subscriptions", help="the subscription catalog (opaque tokens, API keys)").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    load = subs.add_parser("load", help="load a catalog file (YAML, CSV or JSON lines) into the store")
    load.add_argument("file", help="catalog file; credentials appear only as SHA-256 hashes")
    load.add_argument("--store", default=os.environ.get("APIM_STORE_URL", "sqlite:///apim-analytics.db"),
                      help="SQLAlchemy URL [env: APIM_STORE_URL; default: sqlite:///apim-analytics.db]")
    load.add_argument("--replace", action="store_true", help="drop entries not in the file")
    load.set_defaults(func=_subscriptions_load)

    from apim_analytics import store_cli
    store_cli.add_parser(sub)
    from apim_analytics import throttle_cli
    throttle_cli.add_parser(sub)
    from apim_analytics import usage_cli
    usage_cli.add_parser(sub)
    from apim_analytics import billing_cli
    billing_cli.add_parser(sub)
    from apim_analytics import dashboard_cli
    dashboard_cli.add_parser(sub)
    demo = sub.add_parser("demo", help="run everything end to end into SQLite and print a usage summary")
    from apim_analytics.demo import add_arguments as demo_arguments

    demo_arguments(demo)
    demo.set_defaults(func=_demo)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True,
                                                                           metavar="ACTION")
    show = config.add_parser("show", help="list every setting with its flag, env var and default")
    show.set_defaults(func=_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    logs.configure()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "func", None) is _pipeline_run:
        args.beam_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"apim-analytics: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:  # a StoreError or PolicyError carries a readable reason
        from store.engine import StoreError
        from store.throttle import PolicyError

        if not isinstance(exc, StoreError | PolicyError):
            raise
        print(f"apim-analytics: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
