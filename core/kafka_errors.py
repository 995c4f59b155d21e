"""Kafka's errors, and the one place the Kafka clients' exceptions become ours.

Both clients expose what went wrong as data, and that is all this module
reads: kafka-python raises ``kafka.errors.KafkaError`` subclasses with a
``retriable`` attribute; confluent-kafka raises ``KafkaException`` holding a
``KafkaError`` whose ``code()`` is one of its constants (and whose
``retriable()`` librdkafka sets for some of them). No message text is read.

The collector adds its own refinement (a record the cluster will never take,
``collector.errors.RecordRejected``); the pipeline and the topic helper use
these as they are.
"""

from __future__ import annotations

import sys
from typing import Any

import kafka.errors as kafka_errors

from core.errors import ApimError, RetriableError

KAFKA_HINT = "check --kafka / APIM_KAFKA_BOOTSTRAP and that the broker is running"


class KafkaUnavailable(RetriableError):
    """Kafka cannot be reached or did not answer in time; the same call may succeed later."""


class KafkaRefused(ApimError):
    """Kafka answered, and refused the request for a reason a retry will not fix (authorization,
    an invalid topic, an unsupported request)."""


# confluent-kafka (librdkafka) codes after which the same request can succeed later: the
# cluster or the network is away or slow, or leadership is moving. Names looked up at run
# time, so a librdkafka without one of them still loads.
_CONFLUENT_UNAVAILABLE = (
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_TIMED_OUT_QUEUE", "_RESOLVE",
    "_QUEUE_FULL", "_WAIT_COORD", "_UNKNOWN_TOPIC", "_PURGE_QUEUE", "_PURGE_INFLIGHT", "_DESTROY",
    "NETWORK_EXCEPTION", "REQUEST_TIMED_OUT", "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION",
    "BROKER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "KAFKA_STORAGE_ERROR",
)
# A record (or batch) larger than the broker or the client accepts: no retry can fix it.
_CONFLUENT_TOO_LARGE = ("MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE")
_KAFKA_PYTHON_TOO_LARGE: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(kafka_errors, n, None) for n in
                ("MessageSizeTooLargeError", "RecordListTooLargeError", "RecordTooLargeError"))
    if isinstance(c, type))



def confluent_error(exc: BaseException) -> Any:
    """The ``confluent_kafka.KafkaError`` an exception carries (a ``KafkaException``'s first
    argument), or ``None`` for anything else. confluent-kafka is optional: never imported here."""
    confluent = sys.modules.get("confluent_kafka")  # not loaded: exc cannot be one of its exceptions
    if confluent is not None and isinstance(exc, confluent.KafkaException) and exc.args \
            and isinstance(exc.args[0], confluent.KafkaError):
        return exc.args[0]
    return None


def _confluent_codes(err: Any, names: tuple[str, ...]) -> set[int]:
    cls = type(err)
    return {getattr(cls, n) for n in names if hasattr(cls, n)}


def record_too_large(exc: BaseException) -> bool:
    """The client or the broker refuses the record for its size (by type or error code)."""
    if isinstance(exc, _KAFKA_PYTHON_TOO_LARGE):
        return True
    err = confluent_error(exc)
    return err is not None and err.code() in _confluent_codes(err, _CONFLUENT_TOO_LARGE)


def kafka_retriable(exc: BaseException) -> bool:
    """The same request may succeed later: Kafka was away, slow or moving leadership."""
    if isinstance(exc, kafka_errors.KafkaError):
        return bool(exc.retriable)
    err = confluent_error(exc)
    if err is not None:
        return bool(err.retriable()) or err.code() in _confluent_codes(err, _CONFLUENT_UNAVAILABLE)
    # sockets and name resolution failing under a client (both clients normally wrap these), and
    # confluent-kafka's BufferError: its local queue is full until the broker catches up
    return isinstance(exc, (OSError, BufferError))


def kafka_reason(exc: BaseException) -> str:
    """The client's own explanation, on one line (with the error's name or code)."""
    err = confluent_error(exc)
    if err is not None:
        text = f"{err.name()}: {err.str()}"
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, kafka_errors.KafkaError) and not text.startswith(type(exc).__name__):
            text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())[:300]


def kafka_place(bootstrap: str, topic: str | None = None) -> str:
    """``Kafka at HOST:PORT (topic 'x')``, for messages."""
    return f"Kafka at {bootstrap}" + (f" (topic {topic!r})" if topic else "")


def translate_kafka(exc: BaseException, *, bootstrap: str, topic: str | None = None,
                    doing: str = "talking to") -> ApimError:
    """Our error for a Kafka client's exception (returned, for ``raise ... from exc``).

    Args:
        exc: what kafka-python or confluent-kafka raised (an :class:`ApimError` is returned as is).
        bootstrap: the bootstrap servers, named in the message.
        topic: the topic involved, if any.
        doing: what we were doing, e.g. ``"reading from"``; the message reads
            ``"<doing> Kafka at <bootstrap> (topic 'x'): <the client's reason>"``.

    Returns:
        :class:`KafkaUnavailable` (retriable) when the same call may succeed later, else
        :class:`KafkaRefused`.
    """
    if isinstance(exc, ApimError):
        return exc
    message = f"{doing} {kafka_place(bootstrap, topic)}: {kafka_reason(exc)}"
    if kafka_retriable(exc):
        return KafkaUnavailable(message, hint=KAFKA_HINT)
    return KafkaRefused(message, hint="check the broker's log and the topic's configuration")
