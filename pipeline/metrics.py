"""What the pipeline exports while it follows the topic: Prometheus metrics and a health check.

One HTTP listener (``--metrics-listen``) serves ``/metrics`` (Prometheus text
format) and ``/healthz``: 200 while runs succeed, 503 once no run has
succeeded for ``--unhealthy-after`` seconds while there was work to do, so a
Kubernetes liveness or readiness probe can tell a stuck pipeline from an
idle one.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

RUNS = Counter("apim_pipeline_runs_total", "pipeline runs, by outcome", ["outcome"])
RECORDS = Counter("apim_pipeline_records_total", "Kafka records read by committed runs")
EVENTS = Counter("apim_pipeline_events_total", "events counted by committed runs")
DUPLICATES = Counter("apim_pipeline_duplicate_events_total", "events dropped as already counted")
DEAD_LETTERS = Counter("apim_pipeline_dead_letters_total", "records copied to the dead-letter topic")
FOLDED = Counter("apim_pipeline_folded_requests_total", "requests folded into resource 'other' (cardinality cap)")
FACT_ROWS = Counter("apim_pipeline_fact_rows_total", "fact rows merged into the store")
RUN_SECONDS = Histogram("apim_pipeline_run_seconds", "wall time of a committed run",
                        buckets=(0.5, 1, 2, 5, 10, 20, 60, 120, 300))
LAST_SUCCESS = Gauge("apim_pipeline_last_success_timestamp_seconds", "when the last run committed (Unix time)")
BACKLOG = Gauge("apim_pipeline_backlog_records", "records between the store's offsets and the high-water marks "
                                                 "when the last run was planned")

# streaming (pipeline run --streaming)
CONSUMER_LAG = Gauge("apim_pipeline_consumer_lag_records", "records of a partition past the store's committed "
                                                          "offset (Kafka's high-water mark minus the store's)",
                     ["partition"])
NEWEST_EVENT_AGE = Gauge("apim_pipeline_newest_committed_event_age_seconds",
                         "now minus the newest event time committed to the store")
STREAMING_UP = Gauge("apim_pipeline_streaming_job_running", "1 while the streaming job runs on Flink")


class Health:
    """Healthy unless work has been waiting and no run has committed for ``unhealthy_after_s``."""

    def __init__(self, unhealthy_after_s: float) -> None:
        self.unhealthy_after_s = unhealthy_after_s
        self._last_progress = time.monotonic()
        self._lock = threading.Lock()

    def progressed(self) -> None:
        """A run committed, or there was nothing to do."""
        with self._lock:
            self._last_progress = time.monotonic()

    def status(self) -> tuple[bool, str]:
        with self._lock:
            stalled = time.monotonic() - self._last_progress
        if stalled > self.unhealthy_after_s:
            return False, f"no run has committed for {stalled:.0f}s while records were waiting\n"
        return True, "ok\n"


def serve(listen: str, health: Health) -> ThreadingHTTPServer:
    """Start the listener in a daemon thread (``host:port``; port 0 picks a free one)."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, code, ctype = generate_latest(), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok, text = health.status()
                body, code, ctype = text.encode(), 200 if ok else 503, "text/plain; charset=utf-8"
            else:
                body, code, ctype = b"not found\n", 404, "text/plain; charset=utf-8"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # requests are not worth a log line each
            return

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="pipeline-metrics", daemon=True).start()
    return server
