"""Send access-log flushes to a collector over ALS v3 streams, the way Envoy's gRPC access logger does.

One client stream per sidecar, whose first message carries the identifier.
ALS has no acknowledgement per message: a stream that ends with OK confirms
every message sent on it, and one that fails confirms none of them (some may
still have been counted). Envoy never resends; it opens a new stream for what
it flushes next. So does this sender: a message that could not be handed to a
broken stream goes on the sidecar's next stream.

To confirm delivery as it goes, a stream is closed (and a new one opened, as
Envoy does after a collector restart or a connection-age limit) every
``stream_messages`` messages. The ground truth counts only confirmed messages;
``on_done(requests, False)`` reports the unconfirmed ones.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from simulator.envoy import Flush, Sidecar, als_message
from simulator.errors import CollectorUnavailable
from simulator.sender import MAX_MESSAGE_BYTES, RETRYABLE, SendReport, SendSettings, percentile
from simulator.traffic import SimRequest

ALS_PATH = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
#: Messages a stream holds ahead of gRPC (Envoy's own buffer is its flush; gRPC flow control does the rest).
FEED_DEPTH = 4

StreamDone = Callable[[list[SimRequest], bool], None]


@dataclass
class _Stream:
    sidecar: Sidecar
    feed: queue.Queue[bytes | None] = field(default_factory=lambda: queue.Queue(maxsize=FEED_DEPTH))
    batches: list[list[SimRequest]] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    future: Any = None
    opened: float = 0.0

    def messages(self) -> Iterator[bytes]:
        while True:
            try:
                raw = self.feed.get(timeout=0.2)
            except queue.Empty:
                if self.closed.is_set():
                    return
                continue
            if raw is None:
                return
            yield raw


class _StreamSender:
    def __init__(self, channel: grpc.Channel, settings: SendSettings, stream_messages: int,
                 on_done: StreamDone | None) -> None:
        self.call: Any = channel.stream_unary(ALS_PATH, request_serializer=None, response_deserializer=None)
        self.settings = settings
        self.stream_messages = stream_messages
        self.on_done = on_done
        self.report = SendReport(target=settings.target)
        self.open_streams: dict[str, _Stream] = {}
        self.closing: list[_Stream] = []
        self.codes: Counter[str] = Counter()
        self.stream_seconds: list[float] = []
        self.last_failure: tuple[grpc.StatusCode, str] | None = None

    def _open(self, sidecar: Sidecar) -> _Stream:
        stream = _Stream(sidecar)
        stream.opened = time.perf_counter()
        stream.future = self.call.future(stream.messages())
        self.report.attempts += 1
        self.open_streams[sidecar.node_id] = stream
        return stream

    def _finish(self, stream: _Stream) -> None:
        stream.closed.set()
        try:
            stream.future.result(timeout=self.settings.timeout_s * 3)
            code, details = grpc.StatusCode.OK, ""
        except grpc.FutureTimeoutError:
            stream.future.cancel()
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "the stream did not end"
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        self.codes[code.name] += 1
        delivered = code is grpc.StatusCode.OK
        refused = code is grpc.StatusCode.UNAVAILABLE and "failed to connect" in details
        if delivered:
            self.stream_seconds.append(time.perf_counter() - stream.opened)
        else:
            self.last_failure = (code, details)
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                self.report.invalid_argument += len(stream.batches)
        for batch in stream.batches:
            if delivered:
                self.report.delivered_calls += 1
                self.report.instances += len(batch)
            else:
                self.report.failures += 1
                self.report.failed_instances += len(batch)
                if refused:
                    self.report.refused_instances += len(batch)
            if self.on_done is not None:
                self.on_done(batch, delivered)

    def _put(self, flush: Flush) -> None:
        """Hand one flush to its sidecar's stream; a broken stream is finished and a new one opened."""
        key = flush.sidecar.node_id
        while True:
            stream = self.open_streams.get(key)
            if stream is not None and stream.future.done():  # the collector ended it: Envoy reconnects
                del self.open_streams[key]
                self._finish(stream)
                self.report.retries += 1
                stream = None
            if stream is None:
                stream = self._open(flush.sidecar)
            raw = als_message(flush, first=not stream.batches)
            try:
                while True:
                    try:
                        stream.feed.put(raw, timeout=0.2)
                        break
                    except queue.Full:
                        if stream.future.done():
                            raise
            except queue.Full:
                continue
            stream.batches.append(flush.requests)
            if len(stream.batches) >= self.stream_messages:
                self._close(stream)
            return

    def _close(self, stream: _Stream) -> None:
        del self.open_streams[stream.sidecar.node_id]
        try:
            stream.feed.put(None, timeout=self.settings.timeout_s)
        except queue.Full:
            stream.closed.set()
        self.closing.append(stream)

    def _reap(self, wait: bool = False) -> None:
        still = []
        for stream in self.closing:
            if wait or stream.future.done():
                self._finish(stream)
            else:
                still.append(stream)
        self.closing = still

    def run(self, flushes: Iterable[Flush]) -> SendReport:
        s = self.settings
        began = time.monotonic()
        origin_ms = s.start_ms
        for flush in flushes:
            self.report.calls += 1
            if s.realtime:
                if origin_ms is None:
                    origin_ms = flush.due_ms
                delay = began + (flush.due_ms - origin_ms) / 1000.0 / s.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self._put(flush)
            self._reap()
        for stream in list(self.open_streams.values()):
            self._close(stream)
        self._reap(wait=True)
        r = self.report
        r.elapsed_s = time.monotonic() - began
        seconds = sorted(x * 1000.0 for x in self.stream_seconds)
        r.latency_p50_ms, r.latency_p99_ms = round(percentile(seconds, 50), 3), round(percentile(seconds, 99), 3)
        r.status_counts = dict(sorted(self.codes.items()))
        if r.calls and not r.delivered_calls and self.last_failure is not None \
                and all(grpc.StatusCode[name] in RETRYABLE for name in self.codes):
            code, details = self.last_failure
            raise CollectorUnavailable(
                f"the collector at {r.target} took no ALS stream: {code.name} after {r.attempts} streams"
                + (f" ({' '.join(details.split())[:300]})" if details else ""),
                target=r.target, code=code.name, report=r,
                hint="check --target / APIM_SIM_TARGET and that the collector is running")
        return r


def send_streams(flushes: Iterable[Flush], settings: SendSettings, *, stream_messages: int = 100,
                 on_done: StreamDone | None = None, channel: grpc.Channel | None = None) -> SendReport:
    """Send every flush as an ALS message on its sidecar's stream; ``on_done`` is told, per message,
    whether its stream confirmed it. ``calls`` counts messages, ``attempts`` streams opened,
    ``retries`` reconnects after a stream broke; the latency percentiles are whole confirmed streams."""
    own = channel is None
    if own:
        channel = grpc.insecure_channel(settings.target, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Envoy reconnects on its next flush; gRPC's default back-off (1 s growing to 120 s) would keep
            # failing new streams for many seconds after a collector is back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
    assert channel is not None
    try:
        return _StreamSender(channel, settings, stream_messages, on_done).run(flushes)
    finally:
        if own:
            channel.close()
