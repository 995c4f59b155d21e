"""Send ``HandleMetricRequest`` s to a collector over real gRPC, the way Mixer does.

Calls are unary ``/metric.HandleMetricService/HandleMetric`` RPCs with a
deadline, ``concurrency`` of them in flight. A call that fails with
``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` is retried with exponential backoff
*unchanged* (same ``dedup_id``), as Mixer retries; the collector must therefore
deduplicate. ``INVALID_ARGUMENT`` (and any other code) is final: counted, never
retried. When not one call got through and every attempt ended UNAVAILABLE or
DEADLINE_EXCEEDED, the collector is unreachable (or cannot take calls): :func:`send` raises
:class:`~simulator.errors.CollectorUnavailable` (retriable) naming the target
and the status, instead of reporting every call as failed.

By default calls go out as fast as the collector accepts them (replay). With
``realtime`` each call waits until its first instance's ``request_timestamp``
is due, relative to the simulated start and divided by ``speed``.

The loop runs on the caller's thread; gRPC's completion callbacks only post to
a queue, so the bookkeeping needs no locks.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from schemas.mixer.template.metric.template_handler_service_pb2 import HandleMetricRequest
from schemas.mixer.template.metric.template_handler_service_pb2_grpc import HandleMetricServiceStub
from simulator.config import DEFAULTS, SimulationConfig
from simulator.errors import CollectorUnavailable, SimulatorError
from simulator.mixer import request_timestamp_ms

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: Messages of a full batch with large JWTs exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: ``on_done(request, delivered)`` runs once per call, after its final attempt.
DoneCallback = Callable[[Any, bool], None]
#: How the sender sees one request: (events it carries, simulated ms of its first event, 0 if none).
Describe = Callable[[Any], tuple[int, int]]
OTLP_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def describe_mixer(request: HandleMetricRequest) -> tuple[int, int]:
    """A HandleMetric call: its instances, and the first one's request time."""
    return len(request.instances), request_timestamp_ms(request.instances[0]) if request.instances else 0


def describe_otlp(request: Any) -> tuple[int, int]:
    """An OTLP logs export: its log records, and the first one's time."""
    records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    return len(records), records[0].time_unix_nano // 1_000_000 if records else 0


@dataclass(frozen=True)
class SendSettings:
    """How to send; the defaults are :class:`~simulator.config.SimulationConfig`'s."""

    target: str = DEFAULTS.target
    concurrency: int = DEFAULTS.concurrency
    timeout_s: float = DEFAULTS.timeout
    max_attempts: int = DEFAULTS.max_attempts
    initial_backoff_s: float = DEFAULTS.initial_backoff
    max_backoff_s: float = DEFAULTS.max_backoff
    realtime: bool = DEFAULTS.realtime
    speed: float = DEFAULTS.speed
    #: Simulated time that maps to the moment sending starts (realtime only);
    #: default: the first call's first request timestamp.
    start_ms: int | None = None

    @classmethod
    def from_config(cls, config: SimulationConfig, start_ms: int | None = None) -> SendSettings:
        """The sending part of a run's configuration."""
        return cls(target=config.target, concurrency=config.concurrency, timeout_s=config.timeout,
                   max_attempts=config.max_attempts, initial_backoff_s=config.initial_backoff,
                   max_backoff_s=config.max_backoff, realtime=config.realtime, speed=config.speed,
                   start_ms=start_ms)


@dataclass
class SendReport:
    """What happened on the wire.

    ``calls`` counts HandleMetric requests (each once, however often retried),
    ``attempts`` the RPCs actually made; ``retries = attempts - calls``.
    ``failures`` are calls whose final attempt failed (``invalid_argument`` of
    them with INVALID_ARGUMENT). ``instances`` were acknowledged by the
    collector. Latency percentiles cover successful attempts.
    """

    target: str
    calls: int = 0
    attempts: int = 0
    retries: int = 0
    delivered_calls: int = 0
    failures: int = 0
    invalid_argument: int = 0
    instances: int = 0
    failed_instances: int = 0
    #: ALS: of failed_instances, those on streams that never connected (no collector listening), which
    #: cannot have been stored; the rest were on streams that broke mid-way (in flight, perhaps stored)
    refused_instances: int = 0
    elapsed_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def instances_per_s(self) -> float:
        """Acknowledged instances per wall-clock second."""
        return self.instances / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, including ``instances_per_s``."""
        return {**asdict(self), "instances_per_s": round(self.instances_per_s, 1)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class _Call:
    request: Any
    instances: int
    first_ms: int = 0
    attempt: int = 0
    started: float = 0.0
    future: Any = None


class _Sender:
    def __init__(self, rpc: Any, settings: SendSettings, on_done: DoneCallback | None, describe: Describe) -> None:
        self.rpc = rpc
        self.describe = describe
        self.settings = settings
        self.on_done = on_done
        self.report = SendReport(target=settings.target)
        self.completions: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.in_flight = 0
        self.retry_heap: list[tuple[float, int, _Call]] = []
        self.seq = itertools.count()
        self.latencies_ms: list[float] = []
        self.codes: Counter[str] = Counter()
        self.last_failure: tuple[grpc.StatusCode, str] | None = None  # code and details of the latest failed attempt

    def submit(self, call: _Call) -> None:
        call.attempt += 1
        call.started = time.perf_counter()
        self.report.attempts += 1
        self.in_flight += 1
        call.future = self.rpc.future(call.request, timeout=self.settings.timeout_s)
        call.future.add_done_callback(lambda _f, c=call: self.completions.put(c))

    def finish(self, call: _Call, delivered: bool) -> None:
        if delivered:
            self.report.delivered_calls += 1
            self.report.instances += call.instances
        else:
            self.report.failures += 1
            self.report.failed_instances += call.instances
        if self.on_done is not None:
            self.on_done(call.request, delivered)

    def complete(self, call: _Call) -> None:
        self.in_flight -= 1
        code = call.future.code()
        self.codes[code.name] += 1
        s = self.settings
        if code is grpc.StatusCode.OK:
            self.latencies_ms.append((time.perf_counter() - call.started) * 1000.0)
            self.finish(call, True)
            return
        self.last_failure = (code, call.future.details() or "")
        if code in RETRYABLE and call.attempt < s.max_attempts:
            self.report.retries += 1
            delay = min(s.max_backoff_s, s.initial_backoff_s * 2 ** (call.attempt - 1))
            heapq.heappush(self.retry_heap, (time.monotonic() + delay, next(self.seq), call))
        else:
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                self.report.invalid_argument += 1
            self.finish(call, False)

    def run(self, requests: Iterable[Any]) -> SendReport:
        s = self.settings
        source = iter(requests)
        pending: _Call | None = None  # next new call, held back by realtime pacing
        exhausted = False
        origin_ms = s.start_ms
        began = time.monotonic()
        while True:
            now = time.monotonic()
            wake_at: float | None = None
            # 1. fill the window: due retries first, then new calls
            while self.in_flight < s.concurrency:
                if self.retry_heap and self.retry_heap[0][0] <= now:
                    self.submit(heapq.heappop(self.retry_heap)[2])
                    continue
                if pending is None and not exhausted:
                    msg = next(source, None)
                    if msg is None:
                        exhausted = True
                    else:
                        pending = _Call(msg, *self.describe(msg))
                        self.report.calls += 1
                if pending is None:
                    break
                if s.realtime and pending.instances:
                    first_ms = pending.first_ms
                    if origin_ms is None:
                        origin_ms = first_ms
                    due = began + (first_ms - origin_ms) / 1000.0 / s.speed
                    if due > now:
                        wake_at = due
                        break
                self.submit(pending)
                pending = None
            if self.retry_heap and self.in_flight < s.concurrency:  # a full window waits for a completion
                retry_at = self.retry_heap[0][0]
                wake_at = retry_at if wake_at is None else min(wake_at, retry_at)
            if self.in_flight == 0 and pending is None and exhausted and not self.retry_heap:
                break
            # 2. wait for a completion, or until the next paced call or retry is due
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            try:
                call = self.completions.get(timeout=timeout) if self.in_flight else None
            except queue.Empty:
                call = None
            if call is None:
                if not self.in_flight and timeout:
                    time.sleep(timeout)
                continue
            self.complete(call)
            while True:  # drain whatever else finished meanwhile
                try:
                    self.complete(self.completions.get_nowait())
                except queue.Empty:
                    break
        self.report.elapsed_s = time.monotonic() - began
        lat = sorted(self.latencies_ms)
        self.report.latency_p50_ms = round(percentile(lat, 50), 3)
        self.report.latency_p99_ms = round(percentile(lat, 99), 3)
        self.report.status_counts = dict(sorted(self.codes.items()))
        self._check_reachable()
        return self.report

    def _check_reachable(self) -> None:
        """Raise :class:`CollectorUnavailable` (carrying the report) when no call got through and every
        attempt failed with a retryable status: nothing at all reached the store."""
        r = self.report
        if not r.calls or r.delivered_calls or self.last_failure is None:
            return
        if any(grpc.StatusCode[name] not in RETRYABLE for name in self.codes):
            return
        code, details = self.last_failure
        reason = " ".join(details.split())[:300]
        raise CollectorUnavailable(
            f"the collector at {r.target} took no call: {code.name} after {r.attempts} attempts"
            + (f" ({reason})" if reason else ""),
            target=r.target, code=code.name, report=r,
            hint="check --target / APIM_SIM_TARGET and that the collector is running")


def send(requests: Iterable[Any], settings: SendSettings = SendSettings(), *,
         on_done: DoneCallback | None = None, channel: grpc.Channel | None = None,
         protocol: str = "mixer") -> SendReport:
    """Send every request to the collector and report what happened.

    Args:
        requests: consumed lazily, at most ``concurrency`` ahead of the acknowledgements:
            ``HandleMetricRequest`` s, or with ``protocol="otel"`` OTLP ``ExportLogsServiceRequest`` s.
        settings: target, concurrency, deadline, retry policy and pacing.
        on_done: told once per request whether it was finally delivered, so a
            caller can keep exact ground truth of what the collector accepted.
        channel: an existing channel (not closed here); default: an insecure
            channel to ``settings.target``, closed afterwards.

    Returns:
        The :class:`SendReport`.
    """
    own = channel is None
    if own:
        channel = grpc.insecure_channel(settings.target, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
    try:
        assert channel is not None
        if protocol == "otel":
            from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_pb2

            rpc = channel.unary_unary(
                OTLP_EXPORT, request_serializer=otlp_pb2.ExportLogsServiceRequest.SerializeToString,
                response_deserializer=otlp_pb2.ExportLogsServiceResponse.FromString)
            return _Sender(rpc, settings, on_done, describe_otlp).run(requests)
        return _Sender(HandleMetricServiceStub(channel).HandleMetric, settings, on_done, describe_mixer).run(requests)
    except grpc.RpcError as exc:  # raised rather than reported as a call's status: translated here
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        message = f"gRPC to the collector at {settings.target} failed: {name}"
        if code in RETRYABLE:
            raise CollectorUnavailable(message, target=settings.target, code=name,
                                       hint="check --target / APIM_SIM_TARGET and that the collector is running"
                                       ) from exc
        raise SimulatorError(message) from exc
    finally:
        if own and channel is not None:
            channel.close()
