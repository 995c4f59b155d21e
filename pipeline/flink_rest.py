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

from core.errors import RetriableError
from pipeline.errors import PipelineError

TERMINAL_STATES = frozenset({"FINISHED", "CANCELED", "FAILED"})


class FlinkUnavailable(PipelineError, RetriableError):
    """Flink's REST API did not answer, or did not know the job; asking again later may work."""


@dataclass(frozen=True)
class FlinkJob:
    base_url: str  # http://host:port of the REST API that runs the job
    jid: str
    name: str
    state: str


#: How long one REST call may take: a JobManager busy restarting jobs can be slow to answer.
REST_TIMEOUT_S = 10.0


def _call(url: str, method: str = "GET") -> dict:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
        body = response.read()
    return json.loads(body) if body else {}


def list_jobs(host: str, ports: list[int]) -> list[tuple[int, FlinkJob]]:
    """(start time, job) of every job Flink knows on any of the REST ports.

    A port that refuses the connection has no jobs (the embedded mini-cluster binds
    one port of a range). A port that accepts but does not answer raises
    FlinkUnavailable: its jobs are unknown, and a caller that took them for none
    would submit a second job beside a running one.
    """
    found = []
    for port in ports:
        base = f"http://{host}:{port}"
        try:
            jobs = _call(f"{base}/jobs/overview").get("jobs", [])
        except ValueError:  # not JSON: something other than Flink listens there
            continue
        except (OSError, urllib.error.URLError) as exc:
            if _refused(exc) or (isinstance(exc, urllib.error.HTTPError) and exc.code == 404):
                continue
            raise FlinkUnavailable(f"Flink's REST API at {base} did not answer the job list: {exc}",
                                   hint="check the JobManager; the driver asks again") from exc
        found += [(int(j.get("start-time", 0)), FlinkJob(base, j["jid"], str(j.get("name", "")), j["state"]))
                  for j in jobs]
    return found


def _refused(exc: BaseException) -> bool:
    """Whether nothing listens there (as opposed to something listening and not answering)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ConnectionRefusedError)


def newest(jobs: list[tuple[int, FlinkJob]], name: str) -> FlinkJob | None:
    """The newest of ``jobs`` (as list_jobs gives them) called ``name``: a name may be listed more than
    once (the embedded mini-cluster's port varies, a cluster keeps ended jobs)."""
    named = [(started, job) for started, job in jobs if job.name == name]
    return max(named, key=lambda f: f[0])[1] if named else None


def running_jobs(host: str, ports: list[int], name_prefix: str) -> list[FlinkJob]:
    """Jobs not yet ended whose name starts with ``name_prefix``, on any of the REST ports."""
    return [job for _, job in list_jobs(host, ports)
            if job.name.startswith(name_prefix) and job.state not in TERMINAL_STATES]


def job_state(job: FlinkJob) -> str:
    """The job's state now: "GONE" once nothing serves it any more (the embedded mini-cluster shuts down
    with its job), "UNKNOWN" while its REST API is there but does not answer in time."""
    try:
        return str(_call(f"{job.base_url}/jobs/{job.jid}")["state"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "GONE"
        raise FlinkUnavailable(f"Flink at {job.base_url}: HTTP {exc.code} for job {job.jid}") from exc
    except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
        return "GONE" if _refused(exc) else "UNKNOWN"


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
