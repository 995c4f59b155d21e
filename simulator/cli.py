"""``apim-analytics simulate``: replay simulated Mixer traffic to a collector.

The main CLI calls :func:`add_arguments` on its ``simulate`` subparser and
:func:`run` with the parsed flags. Every flag also reads ``APIM_SIM_<NAME>``
and the ``simulate`` section of the YAML config file (precedence: flag, env,
file, default), because the flags are derived from
:class:`~simulator.config.SimulationConfig` by the project's settings helper.

Exit status: 0 when every call was delivered, 1 when some failed; bad
settings raise :class:`~core.settings.SettingsError` (the main CLI
turns that into status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.settings import add_flags, resolve
from simulator.config import SimulationConfig

if TYPE_CHECKING:
    from simulator.catalog import Catalog
    from simulator.ground_truth import GroundTruth
    from simulator.sender import SendReport

__all__ = ["SimulationConfig", "add_arguments", "run", "simulate"]

CONFIG_SECTION = "simulate"
#: What one "call" of the report is, per protocol.
UNITS = {"mixer": "HandleMetric calls", "als": "ALS messages", "otel": "OTLP exports"}


def simulate(config: SimulationConfig, *, catalog: Catalog | None = None,
             on_delivered: Callable[[int], None] | None = None,
             unconfirmed: GroundTruth | None = None) -> tuple[SendReport, GroundTruth]:
    """Run one simulation; see :func:`simulator.runner.simulate`.

    Re-exported here for the demo and tests; the heavy modules (gRPC,
    protobuf, cryptography) load on first call, so building the main CLI's
    parser stays cheap.
    """
    from simulator.runner import simulate as run_simulation

    return run_simulation(config, catalog=catalog, on_delivered=on_delivered, unconfirmed=unconfirmed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` flags: ``--config`` and one per :class:`SimulationConfig` field."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML config file; its 'simulate' section sets defaults [env: APIM_CONFIG]")
    add_flags(parser, SimulationConfig)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def summary(config: SimulationConfig, start_ms: int, report: SendReport, truth: GroundTruth) -> str:
    """The human summary: events, calls, retries, achieved rate, busiest API/tier groups."""
    verb = "built (dry run, nothing sent)" if report.dry_run else f"sent to {config.target}"
    lines = [
        (f"simulate: {report.instances} events in {report.calls} {UNITS[config.protocol]} {verb} "
         f"in {report.elapsed_s:.2f}s = {report.instances_per_s:,.0f} events/s"),
        (f"simulate: simulated {_iso(start_ms)} + {config.duration:g}s at {config.rate:g}/s, seed {config.seed}, "
         f"{config.apis} APIs, {config.applications} applications, {config.users} users"),
    ]
    if not report.dry_run:
        lines.append(
            f"simulate: {report.retries} retries, {report.failures} failed calls "
            f"({report.invalid_argument} INVALID_ARGUMENT, {report.failed_instances} events lost); "
            f"call latency p50 {report.latency_p50_ms:.1f} ms, p99 {report.latency_p99_ms:.1f} ms")
    if config.ground_truth:
        lines.append(f"simulate: ground truth ({len(truth)} rows, {truth.totals()['requests']} requests) -> "
                     f"{config.ground_truth}")
    return "\n".join(lines) + "\n\n" + truth.summary()


def report_dict(config: SimulationConfig, start_ms: int, report: SendReport, truth: GroundTruth) -> dict[str, Any]:
    """The JSON report: the send report, the run parameters and the ground-truth totals."""
    return {
        **report.to_dict(),
        "start_ms": start_ms,
        "duration_s": config.duration,
        "rate": config.rate,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "concurrency": config.concurrency,
        "ground_truth_path": config.ground_truth or None,
        "ground_truth": truth.totals(),
    }


def run(args: argparse.Namespace) -> int:
    """Run ``apim-analytics simulate`` with parsed flags; returns the exit status."""
    from simulator.runner import resolve_start_ms

    config = resolve(SimulationConfig, args=args, section=CONFIG_SECTION)
    start_ms = resolve_start_ms(config.start)
    # Fix the start once, so the report, the tokens and the traffic agree.
    config = replace(config, start=start_ms)
    report, truth = simulate(config)
    text = summary(config, start_ms, report, truth)
    if config.json_report:
        print(text, file=sys.stderr)
        print(json.dumps(report_dict(config, start_ms, report, truth), indent=2))
    else:
        print(text)
    return 1 if report.failures else 0

