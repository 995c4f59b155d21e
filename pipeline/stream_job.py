"""``apim-analytics pipeline run --streaming``: submit the streaming job to Flink, watch it, stop it cleanly.

The driver submits pipeline.streaming's graph to the Beam Flink job server
(``--job-endpoint``) and stays up while it runs:

- it exports Prometheus metrics and ``/healthz`` (``--metrics-listen``): consumer
  lag per partition (the store's offsets against Kafka's high-water marks), the
  age of the newest committed event, and whether the Flink job runs;
- a job that ends by itself (it failed for good, or its job server went away and
  took the embedded mini-cluster with it) is submitted again after a backoff; it
  resumes from the store's offsets. A job on a standalone cluster outlives its job
  server: the driver then watches it through Flink's REST API and does not submit
  a second one;
- SIGTERM or SIGINT drains: readers in this process stop reading, what they
  read is committed, then the Flink job is cancelled through Flink's REST API
  (``--flink-rest``) and the process exits 0.

With LOOPBACK (the default) the Python workers run inside this process; with
EXTERNAL they run in a worker pool (``--environment-config``), the Kubernetes
pattern, and stopping cancels the job at once: nothing is lost either way,
since only committed offsets count.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy import Engine, func, select

from core.errors import ApimError
from pipeline import flink_rest, metrics
from pipeline.job import prepare_store, with_retries
from pipeline.offsets import BOOTSTRAP_TIMEOUT_MS, stored_offsets
from pipeline.settings import PipelineSettings, flink_rest_ports
from pipeline.streaming import DRAIN, READ_POSITIONS, build_streaming_pipeline
from store.engine import make_engine
from store.tables import api_last_access

log = logging.getLogger(__name__)

#: How often the driver looks at the job, the store and Kafka.
WATCH_INTERVAL_S = 2.0
#: Longest a drain waits for the store to reach what the readers read, before cancelling anyway.
DRAIN_TIMEOUT_S = 30.0
#: How long after a submission the job may take to be listed by Flink (the job server builds and uploads it).
JOB_APPEARS_S = 60.0
#: How many times stopping asks Flink's REST API to cancel the job before giving up with an error.
CANCEL_ATTEMPTS = 5
_TERMINAL = {PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED, PipelineState.STOPPED}


@dataclass
class StreamingResult:
    job_name: str
    submissions: int
    offsets: dict[int, int]


def beam_options(settings: PipelineSettings, job_name: str, beam_args: list[str] | None) -> PipelineOptions:
    """The portable runner's options for the streaming job (extra Beam flags come last and win)."""
    args = ["--runner=PortableRunner", f"--job_endpoint={settings.job_endpoint}",
            f"--environment_type={settings.environment_type}", "--streaming",
            f"--checkpointing_interval={settings.checkpoint_interval_ms}",
            f"--max_bundle_time_mills={settings.max_bundle_ms}", f"--job_name={job_name}"]
    if settings.environment_type == "EXTERNAL":
        args.append(f"--environment_config={settings.environment_config}")
    if settings.parallelism:
        args.append(f"--parallelism={settings.parallelism}")
    return PipelineOptions([*args, *(beam_args or ())])


def job_family(settings: PipelineSettings) -> str:
    """The name prefix every streaming job of this topic and store shares (one should run at a time)."""
    store = hashlib.sha256(settings.store.encode()).hexdigest()[:8]
    return f"apim-usage-{re.sub(r'[^a-zA-Z0-9-]', '-', settings.topic)[:40]}-{store}-"


def job_name_for(settings: PipelineSettings) -> str:
    return job_family(settings) + uuid.uuid4().hex[:8]


def cancel_predecessors(settings: PipelineSettings) -> int:
    """Cancel jobs of this family still on Flink: left by a driver that was killed (SIGKILL, OOM).

    Why: with LOOPBACK such a job lost its workers and restarts forever; with
    EXTERNAL it would keep committing beside the new one. Either way one job per
    topic and store is what is meant. Their commits are whole, so nothing is lost.
    """
    host, ports = flink_rest_ports(settings.flink_rest)
    cancelled = 0
    for job in flink_rest.running_jobs(host, ports, job_family(settings)):
        log.warning("cancelling a streaming job left by an earlier driver", extra={"job_name": job.name,
                                                                                  "flink_state": job.state})
        flink_rest.cancel(job)
        cancelled += 1
    return cancelled


class _Watch:
    """What the driver reads each round: Kafka's high-water marks and the store's offsets and newest event."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self._consumer: KafkaConsumer | None = None
        self._engine: Engine = make_engine(settings.store, readonly=True)
        self.last_offsets: dict[int, int] = {}
        self.last_progress = time.monotonic()
        self.waiting = 0  # records on Kafka the store has not committed yet, at the last observation

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._engine.dispose()

    def observe(self) -> bool:
        """Update the metrics; returns whether the store is keeping up (False: records wait, nothing commits)."""
        topic = self.settings.topic
        try:
            offsets = stored_offsets(self._engine, topic)
            with self._engine.connect() as conn:
                newest = conn.execute(select(func.max(api_last_access.c.last_access))).scalar()
        except ApimError as exc:
            log.warning("store not readable", extra={"error": exc.one_line()[:200]})
            return time.monotonic() - self.last_progress < self.settings.unhealthy_after_s
        if offsets != self.last_offsets:
            self.last_offsets = offsets
            self.last_progress = time.monotonic()
        if newest is not None:
            # the store's datetimes are naive UTC
            metrics.NEWEST_EVENT_AGE.set(max(0.0, time.time() - newest.replace(tzinfo=dt.UTC).timestamp()))
        lag = self._lag(offsets)
        waiting = self.waiting = sum(lag.values())
        metrics.BACKLOG.set(waiting)
        return waiting == 0 or time.monotonic() - self.last_progress < self.settings.unhealthy_after_s

    def _lag(self, offsets: dict[int, int]) -> dict[int, int]:
        try:
            if self._consumer is None:
                self._consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka, group_id=None,
                                               enable_auto_commit=False, client_id="apim-pipeline-lag",
                                               bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
            partitions = self._consumer.partitions_for_topic(self.settings.topic) or set()
            tps = [TopicPartition(self.settings.topic, p) for p in sorted(partitions)]
            ends = self._consumer.end_offsets(tps) if tps else {}
            begins = self._consumer.beginning_offsets(tps) if tps else {}
        except (KafkaError, OSError) as exc:
            log.warning("Kafka not readable for the lag", extra={"error": str(exc)[:200]})
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            return {}
        lag = {tp.partition: max(0, ends[tp] - max(offsets.get(tp.partition, begins[tp]), begins[tp])) for tp in tps}
        for partition, value in lag.items():
            metrics.CONSUMER_LAG.labels(str(partition)).set(value)
        return lag


def run_streaming(settings: PipelineSettings, beam_args: list[str] | None = None,
                  stop: threading.Event | None = None) -> StreamingResult:
    """Submit the job, keep it running until ``stop`` (SIGTERM/SIGINT), then drain and cancel it."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    health = metrics.Health(settings.unhealthy_after_s)
    server = metrics.serve(settings.metrics_listen, health) if settings.metrics_listen else None
    DRAIN.clear()
    READ_POSITIONS.clear()
    job_name = ""
    earlier: set[str] = set()  # this driver's earlier submissions: each has its own name
    submissions = 0
    watch: _Watch | None = None
    try:
        with_retries(lambda: prepare_store(settings), settings, stop, "preparing the store")
        watch = _Watch(settings)
        backoff = 2.0
        while not stop.is_set():
            submissions += 1
            job_name = job_name_for(settings)
            ended = _submit_and_watch(settings, beam_args, job_name, earlier, stop, watch, health)
            earlier.add(job_name)
            if stop.is_set():
                break
            log.error("streaming job ended by itself; submitting it again", extra={"state": ended,
                                                                                   "retry_in_s": backoff})
            metrics.STREAMING_UP.set(0)
            if stop.wait(backoff):
                break
            backoff = min(backoff * 2, 60.0)
        return StreamingResult(job_name, submissions, dict(watch.last_offsets))
    finally:
        metrics.STREAMING_UP.set(0)
        if watch is not None:
            watch.close()
        if server is not None:
            server.shutdown()
            server.server_close()


def _submit_and_watch(settings: PipelineSettings, beam_args: list[str] | None, job_name: str, earlier: set[str],
                      stop: threading.Event, watch: _Watch, health: metrics.Health) -> str:
    """One submission: run until ``stop`` (then drain and cancel) or until the job ends; returns its end state.

    Each round lists Flink's jobs once: this submission's job (running means
    running on Flink, not just accepted by the job server, which on a standalone
    cluster comes seconds earlier), and any earlier submission of this driver that
    reached Flink late, which is cancelled (a submission in flight when its job
    server died still lands). When the job server goes away and the job runs on
    (a standalone cluster outlives its job server), the driver goes on watching it
    through Flink's REST API and submits again only once it has ended: a second
    job beside the first would double the cluster's load on every restart.
    """
    host, ports = flink_rest_ports(settings.flink_rest)
    DRAIN.clear()
    # a killed driver's job: one job per topic and store. Flink's REST API not answering is
    # retried, since submitting without knowing would risk two jobs.
    if with_retries(lambda: cancel_predecessors(settings), settings, stop, "cancelling earlier streaming jobs") is None:
        return "STOP_REQUESTED"
    pipeline = beam.Pipeline(options=beam_options(settings, job_name, beam_args))
    build_streaming_pipeline(pipeline, settings, settings.commit_interval_s, settings.partition_discovery_s)
    try:
        result = pipeline.run()
    except Exception as exc:  # noqa: BLE001 - a job server away or refusing: reported, and submitted again
        log.error("submitting the streaming job failed", extra={"job_endpoint": settings.job_endpoint,
                                                                 "error": str(exc)[:300]})
        return "NOT_SUBMITTED"
    log.info("streaming job submitted", extra={"job_name": job_name, "job_endpoint": settings.job_endpoint})
    submitted = time.monotonic()
    running_since: float | None = None  # when Flink first listed this submission RUNNING
    own: flink_rest.FlinkJob | None = None
    through_rest = False  # the job server went away; only Flink's REST API is asked
    missing_logged = False
    while not stop.wait(WATCH_INTERVAL_S):
        listed, answered = _observe_jobs(host, ports, job_name, earlier)
        if answered:
            own = listed
        if not through_rest:
            state = _beam_state(result)
            if state in _TERMINAL:
                return str(state)
            if state == "UNKNOWN":
                if own is None or own.state in flink_rest.TERMINAL_STATES:
                    return f"job server away; Flink job {own.state if own else 'not seen'}"
                through_rest = True
                log.warning("the job server went away; the job runs on, watched through Flink's REST API",
                            extra={"job_name": job_name, "flink_state": own.state})
        elif answered and (own is None or own.state in flink_rest.TERMINAL_STATES):
            return f"Flink job {own.state if own else 'gone'}"
        if own is None and not missing_logged and time.monotonic() - submitted > JOB_APPEARS_S:
            missing_logged = True
            log.error("the streaming job is not on Flink's REST API; check --flink-rest",
                      extra={"flink_rest": settings.flink_rest, "job_name": job_name})
        running = own is not None and own.state == "RUNNING"
        metrics.STREAMING_UP.set(1 if running else 0)
        if running and running_since is None:
            running_since = time.monotonic()
        if watch.observe() and running:
            health.progressed()
        if running and _stalled(settings, watch, running_since):
            # Seen under load on the embedded mini-cluster after a driver was SIGKILLed: the next job runs and
            # checkpoints, yet its SDK workers never read. Commits are whole, so submitting again is safe.
            log.error("the streaming job runs but commits nothing while records wait; submitting it again",
                      extra={"job_name": job_name, "waiting_records": watch.waiting,
                             "stall_resubmit_s": settings.stall_resubmit_s})
            assert own is not None
            _cancel(own)
            return "STALLED"
    _drain(settings, watch)
    # wait for a job not listed yet only while its job server still has it in hand
    in_hand = not through_rest and _beam_state(result) not in (*_TERMINAL, "UNKNOWN")
    own = _await_job(host, ports, job_name, earlier, own, settled=not in_hand)
    if own is None:
        log.error("the streaming job was not found on Flink's REST API; it may still run",
                  extra={"flink_rest": settings.flink_rest, "job_name": job_name})
        return "STOP_REQUESTED"
    final = _cancel(own)
    log.info("streaming job stopped", extra={"job_name": job_name, "flink_state": final})
    return final


def _observe_jobs(host: str, ports: list[int], job_name: str, earlier: set[str]
                  ) -> tuple[flink_rest.FlinkJob | None, bool]:
    """This submission's job as Flink lists it now (None: not listed), and whether Flink answered at all;
    an earlier submission of this driver found still running is cancelled on the way."""
    try:
        jobs = flink_rest.list_jobs(host, ports)
    except flink_rest.FlinkUnavailable as exc:
        log.warning("Flink's REST API not answering", extra={"error": exc.one_line()[:200]})
        return None, False
    for _, job in jobs:
        if job.name in earlier and job.state not in flink_rest.TERMINAL_STATES:
            log.warning("an earlier submission of this driver reached Flink late; cancelling it",
                        extra={"job_name": job.name, "flink_state": job.state})
            try:
                flink_rest.cancel(job)
            except flink_rest.FlinkUnavailable as exc:  # still listed next round, and cancelled then
                log.warning("cancelling it failed", extra={"error": exc.one_line()[:200]})
    return flink_rest.newest(jobs, job_name), True


def _await_job(host: str, ports: list[int], job_name: str, earlier: set[str], own: flink_rest.FlinkJob | None,
               *, settled: bool) -> flink_rest.FlinkJob | None:
    """The job to cancel on stop. A stop soon after submitting can come before Flink lists the job (on a
    standalone cluster the job server uploads it first): wait for it, unless its fate is already settled."""
    deadline = time.monotonic() + (0 if settled else JOB_APPEARS_S)
    while True:
        listed, answered = _observe_jobs(host, ports, job_name, earlier)
        if answered:
            own = listed
        if own is not None or time.monotonic() >= deadline:
            return own
        time.sleep(1.0)


def _stalled(settings: PipelineSettings, watch: _Watch, running_since: float | None) -> bool:
    """Records wait and nothing has been committed for stall_resubmit_s since the job was listed RUNNING."""
    if settings.stall_resubmit_s <= 0 or running_since is None or watch.waiting == 0:
        return False
    quiet_since = max(watch.last_progress, running_since)
    return time.monotonic() - quiet_since > settings.stall_resubmit_s


def _cancel(job: flink_rest.FlinkJob) -> str:
    """Cancel through Flink's REST API, asking again a few times while it does not answer; the last
    failure is raised (the CLI prints it with what to do) rather than leaving the job running unsaid."""
    for attempt in range(1, CANCEL_ATTEMPTS):
        try:
            return flink_rest.cancel(job)
        except flink_rest.FlinkUnavailable as exc:
            log.warning("cancelling the streaming job failed; asking again",
                        extra={"attempt": attempt, "error": exc.one_line()[:200]})
            time.sleep(2.0 * attempt)
    return flink_rest.cancel(job)


def _beam_state(result) -> str:
    try:
        return str(result.state)
    except Exception as exc:  # noqa: BLE001 - the job server is away: the job with it (embedded) or unknown
        log.error("job server not answering", extra={"error": str(exc)[:200]})
        return "UNKNOWN"


def _drain(settings: PipelineSettings, watch: _Watch) -> None:
    """Readers in this process stop; wait until the store holds what they read (LOOPBACK only)."""
    DRAIN.set()
    if settings.environment_type != "LOOPBACK":
        return
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    engine = make_engine(settings.store, readonly=True)
    try:
        time.sleep(settings.max_bundle_ms / 1000 + 0.3)  # a read in progress ends and reports its position
        while time.monotonic() < deadline:
            read = {p: o for (t, p), o in READ_POSITIONS.items() if t == settings.topic}
            try:
                stored = stored_offsets(engine, settings.topic)
            except ApimError:
                stored = {}
            if all(stored.get(p, -1) >= o for p, o in read.items()):
                log.info("drained: everything read is committed", extra={"offsets": stored})
                watch.last_offsets = stored
                return
            time.sleep(0.2)
        log.warning("drain timed out; cancelling anyway (what was not committed is read again next time)")
    finally:
        engine.dispose()
