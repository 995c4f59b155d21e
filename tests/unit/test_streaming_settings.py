"""The streaming flags: what PipelineSettings.validate refuses (with which message), the Flink REST port
range, and the Beam options and job names the streaming driver derives from the settings."""

from __future__ import annotations

import hashlib
import re

import pytest

from core.settings import SettingsError
from pipeline.settings import PipelineSettings, flink_rest_ports
from pipeline.stream_job import beam_options, job_family, job_name_for

PG = "postgresql+psycopg://apim:secret@db:5432/apim"


def streaming(**kw) -> PipelineSettings:
    return PipelineSettings(streaming=True, **kw)


def test_the_default_streaming_settings_are_valid() -> None:
    streaming().validate()
    streaming(environment_type="EXTERNAL", environment_config="127.0.0.1:50000", commit_groups=3,
              commit_interval_s=0.25, flink_rest="flink.example:8081", parallelism=4).validate()


@pytest.mark.parametrize(("kw", "message"), [
    ({"follow": True}, "--streaming and --follow are two ways to keep running: choose one"),
    ({"commit_interval_s": 0.0}, "--commit-interval must be positive"),
    ({"commit_interval_s": -1.0}, "--commit-interval must be positive"),
    ({"commit_groups": 0}, "--commit-groups must be at least 1"),
    ({"commit_groups": -2}, "--commit-groups must be at least 1"),
    ({"environment_type": "DOCKER"}, "--environment-type must be LOOPBACK or EXTERNAL, not 'DOCKER'"),
    ({"environment_type": "loopback"}, "--environment-type must be LOOPBACK or EXTERNAL, not 'loopback'"),
    ({"environment_type": "EXTERNAL"}, "--environment-config: expected HOST:PORT, got ''"),
    ({"environment_type": "EXTERNAL", "environment_config": "pool"},
     "--environment-config: expected HOST:PORT, got 'pool'"),
    ({"job_endpoint": "localhost"}, "--job-endpoint: expected HOST:PORT, got 'localhost'"),
    ({"flink_rest": "x"}, "--flink-rest must be HOST:PORT or HOST:FIRST-LAST, not 'x'"),
    ({"flink_rest": "127.0.0.1:9-1"},
     "--flink-rest must be HOST:PORT or HOST:FIRST-LAST (at most 100 ports), not '127.0.0.1:9-1'"),
    ({"flink_rest": "127.0.0.1:8000-8101"},
     "--flink-rest must be HOST:PORT or HOST:FIRST-LAST (at most 100 ports), not '127.0.0.1:8000-8101'"),
    ({"flink_rest": ":8281"},
     "--flink-rest must be HOST:PORT or HOST:FIRST-LAST (at most 100 ports), not ':8281'"),
    ({"flink_rest": "h:0"}, "--flink-rest must be HOST:PORT or HOST:FIRST-LAST (at most 100 ports), not 'h:0'"),
    ({"flink_rest": "h:65536"},
     "--flink-rest must be HOST:PORT or HOST:FIRST-LAST (at most 100 ports), not 'h:65536'"),
    ({"flink_rest": "h:a-b"}, "--flink-rest must be HOST:PORT or HOST:FIRST-LAST, not 'h:a-b'"),
    ({"parallelism": -1}, "--parallelism must be 0 or more, --checkpoint-interval-ms at least 100 and "
                          "--max-bundle-ms at least 1"),
    ({"checkpoint_interval_ms": 99}, "--parallelism must be 0 or more, --checkpoint-interval-ms at least 100 and "
                                     "--max-bundle-ms at least 1"),
    ({"max_bundle_ms": 0}, "--parallelism must be 0 or more, --checkpoint-interval-ms at least 100 and "
                           "--max-bundle-ms at least 1"),
])
def test_bad_streaming_settings_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        streaming(**kw).validate()
    assert str(err.value) == message


def test_streaming_flags_are_not_checked_without_streaming() -> None:
    PipelineSettings(follow=True, commit_interval_s=0, commit_groups=0, environment_type="DOCKER",
                     flink_rest="x").validate()


def test_flink_rest_ports() -> None:
    assert flink_rest_ports("127.0.0.1:8281-8283") == ("127.0.0.1", [8281, 8282, 8283])
    assert flink_rest_ports("flink-jobmanager:8081") == ("flink-jobmanager", [8081])
    assert flink_rest_ports("[::1]:8081") == ("[::1]", [8081])
    assert flink_rest_ports("h:1-100") == ("h", list(range(1, 101)))  # 100 ports: the most allowed
    assert flink_rest_ports(PipelineSettings().flink_rest) == ("127.0.0.1", list(range(8281, 8300)))


def test_a_range_of_101_ports_is_refused() -> None:
    with pytest.raises(SettingsError, match="at most 100 ports"):
        flink_rest_ports("h:1-101")


# --- the streaming driver's Beam options and job names ---------------------------------------------

def options_of(settings: PipelineSettings, extra: list[str] | None = None) -> dict:
    return beam_options(settings, "apim-usage-job", extra).get_all_options(retain_unknown_options=True)


def test_beam_options_for_loopback() -> None:
    opts = options_of(PipelineSettings(streaming=True, job_endpoint="10.0.0.5:8099", checkpoint_interval_ms=7000,
                                       max_bundle_ms=150))
    assert {k: opts[k] for k in ("runner", "job_endpoint", "environment_type", "environment_config", "streaming",
                                 "checkpointing_interval", "max_bundle_time_mills", "job_name", "parallelism")} == {
        "runner": "PortableRunner", "job_endpoint": "10.0.0.5:8099", "environment_type": "LOOPBACK",
        "environment_config": None, "streaming": True, "checkpointing_interval": "7000",
        "max_bundle_time_mills": "150", "job_name": "apim-usage-job", "parallelism": -1}


def test_beam_options_for_an_external_worker_pool_with_parallelism_and_extra_flags() -> None:
    settings = PipelineSettings(streaming=True, environment_type="EXTERNAL", environment_config="10.0.0.9:50000",
                                parallelism=2)
    opts = options_of(settings, ["--parallelism=3", "--max_parallelism=8"])
    assert {k: opts[k] for k in ("environment_type", "environment_config", "parallelism", "max_parallelism",
                                 "checkpointing_interval", "max_bundle_time_mills")} == {
        "environment_type": "EXTERNAL", "environment_config": "10.0.0.9:50000",
        "parallelism": 3,  # extra Beam flags come last and win
        "max_parallelism": 8, "checkpointing_interval": "5000", "max_bundle_time_mills": "200"}


def test_job_family_is_per_topic_and_store() -> None:
    a = PipelineSettings(topic="apim.usage.v1", store=PG)
    digest = hashlib.sha256(PG.encode()).hexdigest()[:8]
    assert job_family(a) == f"apim-usage-apim-usage-v1-{digest}-"
    same = PipelineSettings(topic="apim.usage.v1", store=PG, commit_groups=4, kafka="other:9092")
    assert job_family(same) == job_family(a)
    assert job_family(PipelineSettings(topic="apim.usage.v1", store=PG + "2")) != job_family(a)
    assert job_family(PipelineSettings(topic="apim.usage.v2", store=PG)) != job_family(a)
    long_topic = PipelineSettings(topic="a/b c" + "x" * 60, store=PG)
    assert job_family(long_topic) == f"apim-usage-a-b-c{'x' * 35}-{digest}-"


def test_job_names_share_their_family_and_differ_per_submission() -> None:
    s = PipelineSettings(topic="apim.usage.v1", store=PG)
    first, second = job_name_for(s), job_name_for(s)
    family = job_family(s)
    assert first != second
    for name in (first, second):
        assert re.fullmatch(re.escape(family) + "[0-9a-f]{8}", name), name
    assert not job_name_for(PipelineSettings(topic="apim.usage.v1", store=PG + "2")).startswith(family)


def test_a_running_job_that_commits_nothing_while_records_wait_is_stalled() -> None:
    import time
    from types import SimpleNamespace

    from pipeline.settings import PipelineSettings
    from pipeline.stream_job import _stalled

    settings = PipelineSettings(stall_resubmit_s=30.0)
    now = time.monotonic()
    quiet = SimpleNamespace(waiting=5, last_progress=now - 100)
    assert _stalled(settings, quiet, running_since=now - 40)  # type: ignore[arg-type]
    assert not _stalled(settings, quiet, running_since=now - 10)  # type: ignore[arg-type]  # just started
    assert not _stalled(settings, quiet, running_since=None)  # type: ignore[arg-type]  # not running
    assert not _stalled(settings, SimpleNamespace(waiting=0, last_progress=now - 100),  # type: ignore[arg-type]
                        running_since=now - 40)  # nothing waits
    assert not _stalled(settings, SimpleNamespace(waiting=5, last_progress=now - 5),  # type: ignore[arg-type]
                        running_since=now - 40)  # committed recently
    assert not _stalled(PipelineSettings(stall_resubmit_s=0), quiet, running_since=now - 40)  # type: ignore[arg-type]
