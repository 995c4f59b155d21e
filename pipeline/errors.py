"""The pipeline's errors (see core.errors): one root, and whether a run may simply be planned again.

Kafka's errors reach the pipeline as :mod:`core.kafka_errors` types (translated
where the clients are called, in pipeline.kafka_source and pipeline.job), the
store's as :mod:`store.errors` types (translated by the store's engines).
"""

from __future__ import annotations

from core.errors import ApimError, RetriableError


class PipelineError(ApimError):
    """An error the pipeline raises on purpose."""


class ConcurrentRunError(PipelineError, RetriableError):
    """Another pipeline run moved the offsets since this run was planned; it must not commit.

    Retriable: nothing was written, and the next plan starts from the moved offsets.
    """


class PoisonRecord(PipelineError):
    """A Kafka record that cannot be counted; it goes to the dead-letter topic.

    Attributes:
        code: the dead letter's stable reason code (:class:`DeadLetterCode`).
    """

    def __init__(self, message: str, code: str = "UNDECODABLE_RECORD") -> None:
        super().__init__(message)
        self.code = code


class DeadLetterCode:
    """Stable reason codes of the pipeline's dead letters."""

    UNDECODABLE_RECORD = "UNDECODABLE_RECORD"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
