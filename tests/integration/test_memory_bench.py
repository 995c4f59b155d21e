"""bench/memory.py at a tiny size, against the real broker: exact outcomes only.

The memory numbers and their targets belong in the bench's output
(bench/results/memory.json), not here: these tests check that the bench
measures what it says (the sampler sees the process tree, every event sent is
acknowledged or stored exactly once) and writes the fields it documents, and
that a refused call leaves no reference cycle behind (what made the collector's
RSS climb while its spool was full).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bench import memory
from bench.collector_ceiling import build_calls
from collector.settings import CollectorSettings
from collector.spool import SpoolFull
from schemas.mixer.template.metric import template_handler_service_pb2_grpc as metric_grpc
from tests.integration.test_spine import RunningCollector

CHILD = "import time; x = bytearray(32 << 20); time.sleep(1.5)"


def test_sampler_follows_the_process_tree() -> None:
    proc = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c '{CHILD}' & wait"])
    sampler = memory.RssSampler(proc.pid, 0.1).start()
    proc.wait()
    samples = sampler.stop()
    assert samples, "no sample of a live process"
    assert max(s.processes for s in samples) == 2  # the shell and its python child
    assert max(s.rss_kb for s in samples) >= 32 << 10  # the child's 32 MB are counted in the tree
    summary = memory.summarize(samples, 0.1)
    assert summary["samples"] == len(samples)
    assert set(summary["rss_mb_at"]) == {"25%", "50%", "75%", "100%"}


@pytest.mark.integration
@pytest.mark.kafka
def test_collector_and_pipeline_at_a_tiny_size(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    memory.main(["--kafka", kafka_bootstrap, "--only", "collector,pipeline", "--duration", "5",
                 "--pool-events", "1000", "--events", "50000", "--rate", "100", "--out", str(out)])
    results = json.loads((out / "memory.json").read_text())
    assert results["benchmark"] == "memory"
    for key in ("date", "machine", "load_average_start", "load_average_end"):
        assert results[key], key
    assert set(results["components"]) == {"collector", "pipeline"}
    for c in results["components"].values():
        assert c["memory"]["samples"] > 0
        for key in ("peak_rss_mb", "rss_mb_at", "quarter_peak_rss_mb", "flat"):
            assert key in c["memory"], key
        assert isinstance(c["pass"], bool) and c["target_mb"] > 0 and c["vmhwm_mb"] > 0 and c["rss_series"]

    collector = results["components"]["collector"]
    load = collector["load"]
    assert load["calls"] > 0 and load["status_counts"] == {"OK": load["calls"]}
    assert load["events_acknowledged"] == 100 * load["calls"]
    assert collector["collector_counters"]["apim_collector_events_total"] == load["events_acknowledged"]

    pipeline = results["components"]["pipeline"]
    produced = pipeline["produced"]["events"]
    assert produced >= 50_000
    assert pipeline["store_totals"]["usage_minute"] == produced
    assert pipeline["store_totals"]["usage_hour"] == produced
    assert pipeline["store_totals"]["pipeline_runs.events"] == produced
    assert pipeline["pipeline"]["events"] == produced and pipeline["exact"] is True
    assert pipeline["pipeline"]["runs"] == len(pipeline["pipeline"]["per_run"]) >= 1


@pytest.mark.integration
@pytest.mark.kafka
def test_refused_calls_leave_no_reference_cycles(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    """A call answered UNAVAILABLE (spool full) or INVALID_ARGUMENT is freed as soon as it is answered: a
    full collection afterwards finds none of its frames (context.abort() used to leave each refused call,
    request bytes included, in a cycle until a full collection)."""
    running = RunningCollector(CollectorSettings(listen="127.0.0.1:0", kafka=kafka_bootstrap, topic=topic,
                                                 metrics_listen="", spool_dir=str(tmp_path / "spool")))

    async def spool_full(records: list) -> str:
        raise SpoolFull("spool full (test)", depth_bytes=1 << 20, requested_bytes=4096, max_bytes=1 << 20)

    assert running.collector.delivery is not None
    running.collector.delivery.deliver = spool_full
    calls = build_calls(500)
    gc.collect()
    gc.disable()
    try:
        codes = []
        with grpc.insecure_channel(running.target) as channel:
            stub = metric_grpc.HandleMetricServiceStub(channel)
            for call in calls:
                try:
                    stub.HandleMetric(call, timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            invalid = channel.unary_unary("/metric.HandleMetricService/HandleMetric")
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as refused:
                    invalid(b"\xff\xff not a protobuf", timeout=30)
                codes.append(refused.value.code())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        handler_frames = [o for o in gc.garbage if type(o).__name__ == "frame" and o.f_code.co_name == "_handle"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        running.stop()
    assert codes == [grpc.StatusCode.UNAVAILABLE] * len(calls) + [grpc.StatusCode.INVALID_ARGUMENT] * 5
    assert handler_frames == []
