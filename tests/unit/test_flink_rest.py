"""pipeline.flink_rest against small local HTTP servers: what "no jobs", "gone" and "not answering" mean.

The distinction matters: the streaming driver submits a job only when Flink said
there is none of its family, so a REST API that accepts and does not answer must
never read as "no jobs" (that is how two jobs ended up on one cluster).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import flink_rest
from pipeline.flink_rest import FlinkJob, FlinkUnavailable

JOBS = {"jobs": [
    {"jid": "a1", "name": "apim-usage-t-1234abcd-old", "state": "RUNNING", "start-time": 100},
    {"jid": "b2", "name": "apim-usage-t-1234abcd-old", "state": "CANCELED", "start-time": 50},
    {"jid": "c3", "name": "other-job", "state": "RESTARTING", "start-time": 120},
    {"jid": "d4", "name": "apim-usage-t-1234abcd-done", "state": "FINISHED", "start-time": 130},
]}


class _Flink(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/jobs/overview":
            self._json(200, JOBS)
        elif self.path == "/jobs/a1":
            self._json(200, {"state": "RUNNING"})
        else:
            self._json(404, {"errors": ["not found"]})

    def do_PATCH(self) -> None:
        self._json(202 if self.path.startswith("/jobs/a1") else 404, {})

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flink() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port that accepts connections and never answers (a JobManager stuck in garbage collection)."""
    monkeypatch.setattr(flink_rest, "REST_TIMEOUT_S", 0.3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_jobs_are_listed_from_every_port_and_refusing_ports_have_none(flink: int) -> None:
    jobs = flink_rest.list_jobs("127.0.0.1", [_closed_port(), flink])
    assert sorted(j.jid for _, j in jobs) == ["a1", "b2", "c3", "d4"]
    assert flink_rest.newest(jobs, "apim-usage-t-1234abcd-old").jid == "a1"  # the later of two
    assert flink_rest.newest(jobs, "not-there") is None
    assert [j.jid for j in flink_rest.running_jobs("127.0.0.1", [flink], "apim-usage-t-1234abcd-")] == ["a1"]
    assert flink_rest.list_jobs("127.0.0.1", [_closed_port()]) == []


def test_a_port_that_accepts_and_does_not_answer_is_not_taken_for_no_jobs(flink: int, silent: int) -> None:
    with pytest.raises(FlinkUnavailable, match="did not answer"):
        flink_rest.running_jobs("127.0.0.1", [flink, silent], "apim-usage-")
    assert FlinkUnavailable.retriable  # the driver asks again before it submits anything


def test_job_state_tells_gone_from_not_answering(flink: int, silent: int) -> None:
    base = f"http://127.0.0.1:{flink}"
    assert flink_rest.job_state(FlinkJob(base, "a1", "x", "RUNNING")) == "RUNNING"
    assert flink_rest.job_state(FlinkJob(base, "zz", "x", "RUNNING")) == "GONE"  # 404: Flink forgot it
    assert flink_rest.job_state(FlinkJob(f"http://127.0.0.1:{_closed_port()}", "a1", "x", "RUNNING")) == "GONE"
    assert flink_rest.job_state(FlinkJob(f"http://127.0.0.1:{silent}", "a1", "x", "RUNNING")) == "UNKNOWN"


def test_cancel_reports_a_silent_rest_api_as_unavailable_with_what_to_do(silent: int) -> None:
    with pytest.raises(FlinkUnavailable) as raised:
        flink_rest.cancel(FlinkJob(f"http://127.0.0.1:{silent}", "a1", "x", "RUNNING"), wait_s=0.5)
    assert "flink cancel" in raised.value.one_line()
