"""``apim-analytics pipeline run``: wire the source, the aggregation and the commit.

Each run is a bounded Beam pipeline: the driver plans the offset ranges, the
pipeline reads and pre-aggregates them, merges the partials and commits them
in one store transaction. ``--once`` works off the backlog present at start in
bounded steps (``--max-records-per-run``) and exits; ``--follow`` keeps
planning new runs until SIGTERM/SIGINT, finishing the run in progress.

A failed run is planned again only when its error says it may succeed later
(``retriable``: a broker or database away, another run got there first); any
other error stops the job. Kafka's errors are translated where the clients
are called (here and in pipeline.kafka_source), the store's by its engines.

The run's graph is pipeline.bounded, imported only once a run is planned: a
``--once`` that finds nothing to read costs no Beam or pandas import.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from sqlalchemy import Engine

from core.errors import ApimError
from core.kafka_errors import translate_kafka
from pipeline import metrics
from pipeline.offsets import (
    BOOTSTRAP_TIMEOUT_MS,
    OffsetRange,
    run_id,
    share_budget,
    stored_offsets,
    waiting_ranges,
)
from pipeline.readers import pool_readers
from pipeline.settings import PipelineSettings
from store.engine import create_schema, make_engine
from store.retention import RetentionSettings, purge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    ranges: int
    records: int
    events: int
    duplicates: int
    undecodable: int
    folded_requests: int
    fact_rows: int
    seconds: float


def _committed(settings: PipelineSettings, plan: list[OffsetRange], seconds: float) -> RunResult:
    """The run as its commit recorded it (``pipeline_runs``): the numbers that actually landed."""
    from sqlalchemy import select

    from store.tables import pipeline_runs

    engine = make_engine(settings.store, readonly=True)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(pipeline_runs).where(pipeline_runs.c.run_id == run_id(plan))).one()
    finally:
        engine.dispose()
    return RunResult(ranges=len(plan), records=row.records, events=row.events, duplicates=row.duplicates,
                     undecodable=row.dead_letters, folded_requests=row.folded_requests, fact_rows=row.fact_rows,
                     seconds=seconds)


def prepare_store(settings: PipelineSettings) -> None:
    """Migrate the store and load throttle policies (defaults, then the policies file if one is set)."""
    from store.throttle import ensure_default_policies, load_policies, load_policies_file, store_policies

    engine = make_engine(settings.store)
    try:
        create_schema(engine)
        ensure_default_policies(engine)
        if settings.policies_file:
            with engine.connect() as conn:
                known = set(load_policies(conn))
            policies, assignments = load_policies_file(settings.policies_file, known_policies=known)
            with engine.begin() as conn:
                store_policies(conn, policies, assignments)
    finally:
        engine.dispose()


class _Planner:
    """The planner's Kafka consumer and read-only store engine, kept between runs of one process.

    Why: follow mode plans a run every ``--interval`` seconds; a new consumer and engine each time
    cost a bootstrap and a connection, the larger part of a small run's fixed cost. After a failed
    plan both are dropped, so the next attempt starts from fresh connections.
    """

    _kept: ClassVar[dict[tuple[str, str], tuple[KafkaConsumer, Engine]]] = {}
    enabled = False  # only inside run()'s loop; a lone run_once() closes what it opened

    @classmethod
    def release(cls) -> None:
        """Close what is kept (leaving run(), so no idle client outlives the loop)."""
        while cls._kept:
            _, (c, e) = cls._kept.popitem()
            c.close()
            e.dispose()

    @classmethod
    def take(cls, settings: PipelineSettings) -> tuple[KafkaConsumer, Engine]:
        kept = cls._kept.pop((settings.kafka, settings.store), None)
        if kept is not None:
            return kept
        try:
            consumer = KafkaConsumer(bootstrap_servers=settings.kafka, enable_auto_commit=False, group_id=None,
                                     client_id="apim-pipeline-planner", bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        except (KafkaError, OSError) as exc:
            raise translate_kafka(exc, bootstrap=settings.kafka, topic=settings.topic, doing="connecting to") from exc
        return consumer, make_engine(settings.store, readonly=True)

    @classmethod
    def give_back(cls, settings: PipelineSettings, consumer: KafkaConsumer, engine: Engine, healthy: bool) -> None:
        """Keep the pair for the next run (only the latest pair is kept: a process follows one topic)."""
        cls.release()
        if healthy and cls.enabled:
            cls._kept[(settings.kafka, settings.store)] = (consumer, engine)
        else:
            consumer.close()
            engine.dispose()


def run_once(settings: PipelineSettings, beam_args: list[str] | None = None) -> RunResult | None:
    """Plan and execute one bounded run; ``None`` when there is nothing to read."""
    consumer, engine = _Planner.take(settings)
    healthy = False
    try:
        stored = stored_offsets(engine, settings.topic)
        try:
            waiting = waiting_ranges(consumer, settings.topic, stored)
        except (KafkaError, OSError) as exc:
            raise translate_kafka(exc, bootstrap=settings.kafka, topic=settings.topic,
                                  doing="reading offsets from") from exc
        metrics.BACKLOG.set(sum(end - start for start, end in waiting.values()))
        plan = share_budget(settings.topic, waiting, settings.max_records_per_run)
        admitted: dict[tuple[str, str], frozenset[str]] = {}
        if plan:
            from pipeline.commit import admitted_resources  # pandas: only when there is a run

            admitted = admitted_resources(engine)
        healthy = True
    finally:
        _Planner.give_back(settings, consumer, engine, healthy)
    if not plan:
        return None
    started = time.perf_counter()
    from pipeline.bounded import execute  # Beam, pandas: only for a run that has something to read

    try:
        execute(settings, plan, admitted, beam_args)
    except Exception as exc:
        original = runner_error(exc)
        if original is None or original is exc:
            raise
        # Beam's copy of our error lost its hint and gained "[while running ...]": raise ours instead
        raise original from original.__cause__
    run = _committed(settings, plan, time.perf_counter() - started)
    log.info("run committed", extra={"ranges": run.ranges, "records": run.records, "events": run.events,
                                     "duplicates": run.duplicates, "undecodable": run.undecodable,
                                     "seconds": round(run.seconds, 3)})
    return run


def run(settings: PipelineSettings, beam_args: list[str] | None = None, stop: threading.Event | None = None,
        retention: RetentionSettings | None = None) -> list[RunResult]:
    """``--once``: runs until the backlog seen at start is worked off. ``--follow``: until ``stop``.

    A failed run (database or broker unavailable, another run got there
    first) has committed nothing, so it is simply planned again after a
    backoff: forever in follow mode, up to ``ONCE_ATTEMPTS`` times in once mode.
    Retention is enforced every ``--purge-every-runs`` runs and when a
    once-mode invocation ends.
    """
    results: list[RunResult] = []
    stop = stop or threading.Event()
    retention = retention or RetentionSettings()
    if settings.follow and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    health = metrics.Health(settings.unhealthy_after_s)
    server = metrics.serve(settings.metrics_listen, health) if settings.follow and settings.metrics_listen else None
    _Planner.enabled = True
    pool_readers(True)
    try:
        with_retries(lambda: prepare_store(settings), settings, stop, "preparing the store")
        _loop(settings, beam_args, stop, retention, health, results)
    finally:
        _Planner.enabled = False
        _Planner.release()
        pool_readers(False)
        if server is not None:
            server.shutdown()
            server.server_close()
    return results


def _loop(settings: PipelineSettings, beam_args: list[str] | None, stop: threading.Event,
          retention: RetentionSettings, health: metrics.Health, results: list[RunResult]) -> None:
    runs = 0
    while not stop.is_set():
        result = with_retries(lambda: _observed_run(settings, beam_args, health), settings, stop, "pipeline run")
        if result is not None:
            results.append(result)
            runs += 1
            if settings.follow and settings.purge_every_runs and runs % settings.purge_every_runs == 0:
                _purge(settings, retention)
        if result is None or result.records < settings.max_records_per_run:
            if not settings.follow:
                break
            stop.wait(settings.interval_s)
    if not settings.follow and results:
        _purge(settings, retention)


def _observed_run(settings: PipelineSettings, beam_args: list[str] | None, health: metrics.Health
                  ) -> RunResult | None:
    """One run, with its outcome exported."""
    try:
        result = run_once(settings, beam_args)
    except Exception:
        metrics.RUNS.labels("failed").inc()
        raise
    health.progressed()
    if result is None:
        metrics.RUNS.labels("empty").inc()
        return None
    metrics.RUNS.labels("committed").inc()
    metrics.RECORDS.inc(result.records)
    metrics.EVENTS.inc(result.events)
    metrics.DUPLICATES.inc(result.duplicates)
    metrics.DEAD_LETTERS.inc(result.undecodable)
    metrics.FOLDED.inc(result.folded_requests)
    metrics.FACT_ROWS.inc(result.fact_rows)
    metrics.RUN_SECONDS.observe(result.seconds)
    metrics.LAST_SUCCESS.set(time.time())
    return result


ONCE_ATTEMPTS = 3
#: Once mode's first backoff (doubled after each attempt): a person or a script is waiting.
ONCE_BACKOFF_S = 0.5


def runner_error(exc: BaseException) -> ApimError | None:
    """Our error behind ``exc``, or ``None`` when there is none (a defect, or a library's error).

    Beam's runners re-raise an error from a DoFn as a new instance of the same type with
    " [while running 'Step']" added to its message (``apache_beam.runners.common``
    ``_reraise_augmented``, which marks it ``_tagged_with_step``), chained to the original
    by ``__context__``; a type whose constructor does not take that form (keyword
    arguments) comes back as a RuntimeError instead. So: follow Beam's marked copies back
    to the original, and explicit ``raise ... from`` chains; nothing else (an error raised
    while handling another is not that other one).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tagged = getattr(current, "_tagged_with_step", False)
        if isinstance(current, ApimError) and not (tagged and current.__context__ is not None):
            return current
        current = (current.__cause__ or current.__context__) if tagged else current.__cause__
    return None


def with_retries(step, settings: PipelineSettings, stop: threading.Event, what: str):
    """Run ``step``; retry it after a backoff only when its error is retriable (forever when the process
    keeps running, in follow and streaming mode; ONCE_ATTEMPTS attempts in all in once mode). Any other
    error is logged and raised: it is a defect or needs a person (bad input, a store not migrated), and
    retrying would hide it."""
    keeps_running = settings.follow or settings.streaming
    attempt = 0
    while True:
        attempt += 1
        try:
            return step()
        except Exception as exc:
            ours = runner_error(exc)
            if ours is None:
                log.error("%s failed with an unexpected error; stopping", what, exc_info=exc)
                raise
            if not ours.retriable:
                log.error("%s failed; not retriable, stopping", what, extra={"error": ours.one_line()[:500]})
                raise
            if (not keeps_running and attempt >= ONCE_ATTEMPTS) or stop.is_set():
                raise
            if keeps_running:
                delay = min(30.0, settings.interval_s * 2 ** min(attempt, 4))
            else:
                delay = ONCE_BACKOFF_S * 2 ** (attempt - 1)
            log.error("%s failed; retrying", what, extra={"attempt": attempt, "retry_in_s": delay,
                                                          "error": ours.one_line()[:500]})
            if stop.wait(delay):
                return None


def _purge(settings: PipelineSettings, retention: RetentionSettings) -> None:
    engine = make_engine(settings.store)
    try:
        deleted = purge(engine, retention)
        if any(deleted.values()):
            log.info("retention enforced", extra={"deleted": {k: v for k, v in deleted.items() if v}})
    except ApimError as exc:  # the store away or busy: the purge is retried at the next one; a defect stops the job
        if not exc.retriable:
            raise
        log.error("retention purge failed", extra={"error": exc.one_line()[:300]})
    finally:
        engine.dispose()
