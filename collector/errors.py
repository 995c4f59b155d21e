"""The collector's error root (see core.errors): callers catch one type for
everything the collector raises on purpose."""

from __future__ import annotations

from core.errors import ApimError, InputError, RetriableError
from core.kafka_errors import KafkaUnavailable as _CoreKafkaUnavailable


class CollectorError(ApimError):
    """An error the collector raises on purpose."""


# --- Kafka, as the publisher translates it (collector.publisher) ---------------------------------


class KafkaUnavailable(CollectorError, _CoreKafkaUnavailable):
    """Kafka did not take the records now: no producer connected, unreachable, or no
    acknowledgement in time. Retriable; the records wait in the spool meanwhile."""


class RecordRejected(CollectorError):
    """Kafka will never accept this record (larger than the broker or the producer allows).
    Not retriable: a spooled copy is set aside for an operator instead of blocking the spool."""


# --- the local spool (collector.spool) -----------------------------------------------------------

class SpoolFull(CollectorError, RetriableError):
    """The entries do not fit under the spool's ``max_bytes``; nothing was written.

    Retriable: the server answers the call UNAVAILABLE, so Mixer retries later
    (when the drain has made room) instead of the events being dropped.

    Attributes:
        depth_bytes: bytes already held (unacknowledged, framing included).
        requested_bytes: bytes the refused append needed (framing included).
        max_bytes: the spool's limit.
    """

    def __init__(self, message: str, *, depth_bytes: int, requested_bytes: int, max_bytes: int,
                 hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.depth_bytes = depth_bytes
        self.requested_bytes = requested_bytes
        self.max_bytes = max_bytes


class SpoolCorrupt(CollectorError):
    """Damage that is not a torn tail: durable, acknowledged-to-the-caller data is unreadable.

    Raised instead of silently skipping entries, because skipping would lose
    events that Mixer was told were safe. The message names the file and offset.
    """


# --- input files ------------------------------------------------------------------------------------

class CatalogError(CollectorError, InputError, ValueError):
    """A subscription catalog file cannot be used; the message names the file and the entry."""


# --- one call's content ---------------------------------------------------------------------------

class MalformedCall(CollectorError, InputError):
    """The bytes are not a HandleMetricRequest (or hold invalid UTF-8); answered INVALID_ARGUMENT."""


class ValueKindError(CollectorError):
    """A decoded Value does not hold a kind the event field can use (collector.values)."""


class InstanceRejected(CollectorError):
    """One instance cannot become an event; the reason goes to the dead-letter topic.

    Attributes:
        code: the stable reason code (``collector.mapping.RejectCode``).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
