"""The few calls of Flink's REST API the streaming driver needs: find its job, read its state, cancel it.

Why not Beam's ``PipelineResult.cancel()``: through the portable job server it
reports CANCELLED while the Flink job keeps running, and restarts forever once
the LOOPBACK workers are gone (docs/kafka-and-beam.md). Cancelling through
Flink itself stops it for real.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from pipeline.errors import PipelineError

TERMINAL_STATES = frozenset({"FINISHED", "CANCELED", "FAILED"})


class FlinkUnavailable(PipelineError):
    """Flink's REST API did not answer, or did not know the job."""


@dataclass(frozen=True)
class FlinkJob:
    base_url: str  # http://host:port of the REST API that runs the job
    jid: str
    name: str
    state: str


def _call(url: str, method: str = "GET", timeout_s: float = 3.0) -> dict:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = response.read()
    return json.loads(body) if body else {}


def _jobs(host: str, ports: list[int]) -> list[tuple[int, FlinkJob]]:
    """(start time, job) of every job Flink knows on any of the REST ports (a port not answering has none)."""
    found = []
    for port in ports:
        base = f"http://{host}:{port}"
        try:
            jobs = _call(f"{base}/jobs/overview", timeout_s=3.0).get("jobs", [])
        except (OSError, ValueError, urllib.error.URLError):
            continue
        found += [(int(j.get("start-time", 0)), FlinkJob(base, j["jid"], str(j.get("name", "")), j["state"]))
                  for j in jobs]
    return found


def find_job(host: str, ports: list[int], name: str) -> FlinkJob | None:
    """The newest job called ``name`` on any of the REST ports (the embedded mini-cluster's port varies)."""
    named = [(started, job) for started, job in _jobs(host, ports) if job.name == name]
    return max(named, key=lambda f: f[0])[1] if named else None


def running_jobs(host: str, ports: list[int], name_prefix: str) -> list[FlinkJob]:
    """Jobs not yet ended whose name starts with ``name_prefix``, on any of the REST ports."""
    return [job for _, job in _jobs(host, ports)
            if job.name.startswith(name_prefix) and job.state not in TERMINAL_STATES]


def job_state(job: FlinkJob) -> str:
    """The job's state now; "GONE" once its mini-cluster has shut down (the embedded mode, after the end)."""
    try:
        return str(_call(f"{job.base_url}/jobs/{job.jid}")["state"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "GONE"
        raise FlinkUnavailable(f"Flink at {job.base_url}: HTTP {exc.code} for job {job.jid}") from exc
    except (OSError, ValueError, urllib.error.URLError):
        return "GONE"


def cancel(job: FlinkJob, wait_s: float = 60.0) -> str:
    """Cancel ``job`` and wait until Flink reports it ended; returns the last state seen."""
    try:
        _call(f"{job.base_url}/jobs/{job.jid}?mode=cancel", method="PATCH")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise FlinkUnavailable(f"Flink at {job.base_url} refused to cancel job {job.jid}: HTTP {exc.code}",
                                   hint="cancel it in Flink's web UI or with `flink cancel`") from exc
    except (OSError, urllib.error.URLError) as exc:
        raise FlinkUnavailable(f"Flink at {job.base_url} did not answer the cancel of job {job.jid}: {exc}",
                               hint="cancel it in Flink's web UI or with `flink cancel`") from exc
    deadline = time.monotonic() + wait_s
    state = "CANCELLING"
    while time.monotonic() < deadline:
        state = job_state(job)
        if state in TERMINAL_STATES or state == "GONE":
            return state
        time.sleep(0.5)
    return state
