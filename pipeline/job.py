"""``apim-analytics pipeline run``: wire the source, the aggregation and the commit.

Each run is a bounded Beam pipeline: the driver plans the offset ranges, the
pipeline reads, aggregates and commits them in one store transaction. ``--once``
works off the backlog present at start in bounded steps and exits; ``--follow``
keeps planning new runs until SIGTERM/SIGINT, finishing the run in progress.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from kafka import KafkaConsumer

from pipeline.aggregate import AggregateUsage
from pipeline.commit import CommitRun, stored_offsets
from pipeline.kafka_source import OffsetRange, ReadUsageEvents, plan_ranges
from pipeline.settings import PipelineSettings
from store.engine import create_schema, make_engine

log = logging.getLogger(__name__)

# FnApiRunner in-process: the DirectRunner would first try Prism, which
# downloads a binary at run time (engineering.md b). Users override with --runner.
DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner"]


@dataclass(frozen=True)
class RunResult:
    ranges: int
    records: int
    events: int
    duplicates: int
    undecodable: int
    seconds: float


def build_pipeline(p: beam.Pipeline, settings: PipelineSettings, plan: list[OffsetRange]) -> None:
    """The run's graph; every step is labelled (labels are what runners match on update)."""
    read = (
        p
        | "PlanRanges" >> beam.Create(plan)
        | "SpreadRanges" >> beam.Reshuffle()
        | "ReadUsageEvents" >> beam.ParDo(ReadUsageEvents(settings.kafka, settings.store, settings.dedup_horizon_s)
                                          ).with_outputs(ReadUsageEvents.NEW_CALLS, main="events")
    )
    new_calls = read[ReadUsageEvents.NEW_CALLS] | "GatherNewCalls" >> beam.combiners.ToList()
    _ = (
        read.events
        | "AggregateUsage" >> AggregateUsage()
        | "GatherRun" >> beam.combiners.ToList()
        | "CommitRun" >> beam.ParDo(CommitRun(settings.store, plan, settings.dedup_horizon_s),
                                    beam.pvalue.AsSingleton(new_calls))
    )


def _counter(result: beam.runners.runner.PipelineResult, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return int(sum(c.committed or c.attempted or 0 for c in counters))


def run_once(settings: PipelineSettings, beam_args: list[str] | None = None) -> RunResult | None:
    """Plan and execute one bounded run; ``None`` when there is nothing to read."""
    engine = make_engine(settings.store)
    create_schema(engine)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka, enable_auto_commit=False, group_id=None,
                             client_id="apim-pipeline-planner")
    try:
        plan = plan_ranges(consumer, settings.topic, stored_offsets(engine, settings.topic),
                           settings.max_records_per_run)
    finally:
        consumer.close()
        engine.dispose()
    if not plan:
        return None
    started = time.perf_counter()
    options = PipelineOptions([*DEFAULT_BEAM_ARGS, *(beam_args or [])])
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, settings, plan)
    result = p.result  # type: ignore[attr-defined]
    run = RunResult(
        ranges=len(plan),
        records=_counter(result, "records_read"),
        events=_counter(result, "events_decoded"),
        duplicates=_counter(result, "duplicate_events"),
        undecodable=_counter(result, "undecodable_records"),
        seconds=time.perf_counter() - started,
    )
    log.info("run committed", extra={"ranges": run.ranges, "records": run.records, "events": run.events,
                                     "duplicates": run.duplicates, "undecodable": run.undecodable,
                                     "seconds": round(run.seconds, 3)})
    return run


def run(settings: PipelineSettings, beam_args: list[str] | None = None,
        stop: threading.Event | None = None) -> list[RunResult]:
    """``--once``: runs until the backlog seen at start is worked off. ``--follow``: until ``stop``."""
    results: list[RunResult] = []
    stop = stop or threading.Event()
    if settings.follow and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        result = run_once(settings, beam_args)
        if result is not None:
            results.append(result)
        if result is None or result.records < settings.max_records_per_run:
            if not settings.follow:
                break
            stop.wait(settings.interval_s)
    return results
