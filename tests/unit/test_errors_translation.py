"""Issue 11, item 2: every error the project raises derives from ``core.errors.ApimError``;
Kafka and gRPC errors are translated where they enter our code, by type and code (never
message text); the pipeline's follow loop retries retriable errors only."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import errors as kerr

from core.errors import ApimError
from core.kafka_errors import KafkaRefused, KafkaUnavailable, translate_kafka

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "store", "collector", "pipeline", "simulator", "query", "billing", "dashboards")


# --- every exception class derives from ApimError -------------------------------------------------

def _exception_classes(package: str) -> list[tuple[str, type]]:
    found: dict[str, type] = {}
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if "_pb2" in info.name or ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{name}"] = obj
    return sorted(found.items())


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exception_class_derives_from_apim_error(package: str) -> None:
    # The compiled decoders' fast-path signal: caught by their callers, never reported (see core.wire).
    exempt = {"core.wire.WireUnsupported"}
    strays = [name for name, cls in _exception_classes(package) if not issubclass(cls, ApimError)
              and name not in exempt]
    assert strays == [], f"exception classes not rooted on core.errors.ApimError: {strays}"


def test_package_roots_and_retriable_flags() -> None:
    from collector import errors as ce
    from pipeline import errors as pe
    from simulator import errors as se

    assert issubclass(ce.KafkaUnavailable, KafkaUnavailable) and ce.KafkaUnavailable.retriable
    assert ce.SpoolFull.retriable and not ce.SpoolCorrupt.retriable and not ce.RecordRejected.retriable
    assert ce.MalformedCall.usage
    assert pe.ConcurrentRunError.retriable and not pe.PoisonRecord.retriable
    assert se.CollectorUnavailable.retriable and issubclass(se.CollectorUnavailable, se.SimulatorError)


# --- kafka-python and confluent-kafka -> ours --------------------------------------------------------

@pytest.mark.parametrize("exc", [kerr.KafkaTimeoutError("Unable to bootstrap"), kerr.KafkaConnectionError("refused"),
                                 kerr.NotLeaderForPartitionError(), ConnectionRefusedError(111, "refused")])
def test_unreachable_kafka_becomes_retriable_kafka_unavailable(exc: BaseException) -> None:
    ours = translate_kafka(exc, bootstrap="k1:9092", topic="t", doing="reading from")
    assert isinstance(ours, KafkaUnavailable) and ours.retriable
    assert "k1:9092" in str(ours) and "'t'" in str(ours) and "APIM_KAFKA_BOOTSTRAP" in ours.hint


def test_a_refusal_no_retry_fixes_is_not_retriable() -> None:
    ours = translate_kafka(kerr.TopicAuthorizationFailedError(), bootstrap="k1:9092")
    assert isinstance(ours, KafkaRefused) and not ours.retriable


def test_classification_reads_types_not_message_text() -> None:
    # a retriable error whose text looks like a size problem stays retriable
    assert isinstance(translate_kafka(kerr.KafkaTimeoutError("MSG_SIZE_TOO_LARGE MessageSizeTooLarge"),
                                      bootstrap="k"), KafkaUnavailable)


def _publisher(client: str = "kafka-python"):
    from collector.publisher import ProducerSettings, make_publisher

    return make_publisher(client, ProducerSettings(bootstrap="k1:9092"))


@pytest.mark.parametrize("exc", [kerr.MessageSizeTooLargeError("The message is 20000000 bytes"),
                                 kerr.RecordListTooLargeError()])
def test_publisher_turns_too_large_into_record_rejected(exc: BaseException) -> None:
    from collector.errors import RecordRejected

    ours = _publisher().translate(exc)
    assert isinstance(ours, RecordRejected) and not ours.retriable and "k1:9092" in str(ours)


def test_publisher_turns_timeouts_into_its_kafka_unavailable() -> None:
    from collector.errors import CollectorError
    from collector.errors import KafkaUnavailable as CollectorKafkaUnavailable

    ours = _publisher().translate(kerr.KafkaTimeoutError("Batch expired"))
    assert isinstance(ours, CollectorKafkaUnavailable) and isinstance(ours, CollectorError) and ours.retriable


def test_confluent_codes_are_translated() -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from collector.errors import KafkaUnavailable as CollectorKafkaUnavailable
    from collector.errors import RecordRejected

    KafkaError, KafkaException = confluent_kafka.KafkaError, confluent_kafka.KafkaException  # noqa: N806 - the client's names
    publisher = _publisher("confluent")
    too_large = publisher.translate(KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))
    assert isinstance(too_large, RecordRejected)
    for code in (KafkaError._TRANSPORT, KafkaError._MSG_TIMED_OUT, KafkaError._ALL_BROKERS_DOWN):
        assert isinstance(publisher.translate(KafkaException(KafkaError(code))), CollectorKafkaUnavailable)
    assert isinstance(publisher.translate(BufferError("Local: Queue full")), CollectorKafkaUnavailable)
    refused = translate_kafka(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), bootstrap="k")
    assert isinstance(refused, KafkaRefused)


class _FakeFuture:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def add_callback(self, _fn) -> None:
        pass

    def add_errback(self, fn) -> None:
        fn(self.exc)


class _FakeProducer:
    """send() either raises (as kafka-python does for a record over max_request_size) or reports an error."""

    def __init__(self, raise_exc: BaseException | None = None, report_exc: BaseException | None = None) -> None:
        self.raise_exc, self.report_exc = raise_exc, report_exc

    def send(self, *_a, **_k) -> _FakeFuture:
        if self.raise_exc is not None:
            raise self.raise_exc
        assert self.report_exc is not None
        return _FakeFuture(self.report_exc)


@pytest.mark.parametrize("where", ["raised", "reported"])
def test_publisher_send_raises_ours_whether_the_client_raises_or_reports(where: str) -> None:
    from collector.errors import RecordRejected
    from collector.publisher import Record

    publisher = _publisher()
    exc = kerr.MessageSizeTooLargeError("too large")
    publisher._producer = _FakeProducer(**{"raise_exc" if where == "raised" else "report_exc": exc})
    with pytest.raises(RecordRejected) as info:
        asyncio.run(publisher.send([Record("t", 0, b"k", b"v")], 1.0))
    assert info.value.__cause__ is exc


def test_publisher_send_without_producer_or_ack_is_kafka_unavailable() -> None:
    from collector.errors import KafkaUnavailable as CollectorKafkaUnavailable
    from collector.publisher import Record

    publisher = _publisher()
    with pytest.raises(CollectorKafkaUnavailable):
        asyncio.run(publisher.send([Record("t", 0, b"k", b"v")], 1.0))

    class Silent(_FakeProducer):
        def send(self, *_a, **_k):
            return SimpleNamespace(add_callback=lambda _f: None, add_errback=lambda _f: None)

    publisher._producer = Silent()
    with pytest.raises(CollectorKafkaUnavailable, match=r"did not acknowledge 1 records within 0\.05s"):
        asyncio.run(publisher.send([Record("t", 0, b"k", b"v")], 0.05))


# --- the pipeline's follow loop ----------------------------------------------------------------------

def _settings(follow: bool = False, streaming: bool = False):
    from pipeline.settings import PipelineSettings

    return PipelineSettings(follow=follow, streaming=streaming, interval_s=0.001)


class _Steps:
    """A step that fails with the given errors in turn, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_follow_loop_retries_retriable_errors_until_success(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import job
    from pipeline.errors import ConcurrentRunError
    from store.errors import StoreUnavailable

    step = _Steps(KafkaUnavailable("away"), StoreUnavailable("away"), ConcurrentRunError("moved"))
    assert job.with_retries(step, _settings(follow=True), threading.Event(), "run") == "done"
    assert step.attempts == 4


@pytest.mark.parametrize("error", [ValueError("a defect"), KafkaRefused("not authorized"),
                                   RuntimeError("not ours, though it chains ours")])
def test_follow_loop_stops_on_the_first_non_retriable_error(error: BaseException) -> None:
    from pipeline import job

    if isinstance(error, RuntimeError):  # an error raised while handling ours is not ours
        error.__context__ = KafkaUnavailable("away")
    step = _Steps(error, KafkaUnavailable("never reached"))
    with pytest.raises(type(error)):
        job.with_retries(step, _settings(follow=True), threading.Event(), "run")
    assert step.attempts == 1


def test_once_mode_makes_three_attempts_at_a_retriable_error() -> None:
    from pipeline import job

    job_once = _settings(follow=False)
    step = _Steps(*(KafkaUnavailable(f"away {i}") for i in range(5)))
    original = job.ONCE_BACKOFF_S
    job.ONCE_BACKOFF_S = 0.001
    try:
        with pytest.raises(KafkaUnavailable, match="away 2"):
            job.with_retries(step, job_once, threading.Event(), "run")
    finally:
        job.ONCE_BACKOFF_S = original
    assert step.attempts == job.ONCE_ATTEMPTS == 3


def _beam_copy(original: BaseException, *, constructible: bool = True) -> BaseException:
    """What apache_beam.runners.common._reraise_augmented raises for an error from a DoFn."""
    try:
        raise original
    except BaseException:  # noqa: BLE001 - reproduces Beam's catch-all re-raise
        try:
            copy = type(original)(original.args[0] + " [while running 'Step']") if constructible \
                else RuntimeError(f"{type(original).__name__}: {original} [while running 'Step']")
            copy._tagged_with_step = True
            raise copy
        except BaseException as raised:  # noqa: BLE001 - returns the copy Beam would raise
            return raised


def test_runner_error_finds_ours_behind_beams_copies() -> None:
    from collector.errors import SpoolFull
    from pipeline.job import runner_error
    from store.errors import StoreUnavailable

    original = StoreUnavailable("db away", hint="start it")
    assert runner_error(_beam_copy(original)) is original  # the original keeps its hint
    kwargs_only = SpoolFull("full", depth_bytes=1, requested_bytes=2, max_bytes=3)
    assert runner_error(_beam_copy(kwargs_only, constructible=False)) is kwargs_only
    assert runner_error(_beam_copy(ValueError("a defect"))) is None


def test_beam_fnapirunner_reraises_a_dofn_error_as_found() -> None:
    """The experiment behind runner_error: FnApiRunner in this process, a DoFn raising ours."""
    beam = pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.bounded import DEFAULT_BEAM_ARGS
    from pipeline.job import runner_error
    from store.errors import StoreUnavailable

    class Boom(beam.DoFn):
        def process(self, _x):
            raise StoreUnavailable("db away", hint="start it")

    with pytest.raises(Exception) as info, beam.Pipeline(options=PipelineOptions(DEFAULT_BEAM_ARGS)) as p:
        _ = p | beam.Create([1]) | beam.ParDo(Boom())
    found = runner_error(info.value)
    assert isinstance(found, StoreUnavailable) and found.hint == "start it" and found.retriable


# --- the simulator -----------------------------------------------------------------------------------

def test_simulator_unreachable_collector_is_one_retriable_error() -> None:
    from schemas.mixer.template.metric.template_handler_service_pb2 import HandleMetricRequest
    from simulator.errors import CollectorUnavailable
    from simulator.sender import SendSettings, send

    settings = SendSettings(target="127.0.0.1:1", concurrency=2, timeout_s=1.0, max_attempts=2,
                            initial_backoff_s=0.01, max_backoff_s=0.01)
    expected = r"127\.0\.0\.1:1 took no call: UNAVAILABLE after 4 attempts"
    with pytest.raises(CollectorUnavailable, match=expected) as info:
        send([HandleMetricRequest(dedup_id="1"), HandleMetricRequest(dedup_id="2")], settings)
    assert info.value.retriable and info.value.code == "UNAVAILABLE" and "APIM_SIM_TARGET" in info.value.hint


def test_streaming_driver_retries_a_retriable_error_beyond_the_once_attempts() -> None:
    """The streaming driver keeps running like follow mode: a store away at start is waited for."""
    from pipeline import job

    step = _Steps(*(KafkaUnavailable(f"away {i}") for i in range(job.ONCE_ATTEMPTS + 1)))
    assert job.with_retries(step, _settings(streaming=True), threading.Event(), "run") == "done"
    assert step.attempts == job.ONCE_ATTEMPTS + 2
