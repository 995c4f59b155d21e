"""A run's offset plan in one call, as pipeline.job.run_once makes it (waiting_ranges, then share_budget)."""

from __future__ import annotations

from collections.abc import Mapping

from kafka import KafkaConsumer

from pipeline.offsets import OffsetRange, share_budget, waiting_ranges


def plan_ranges(consumer: KafkaConsumer, topic: str, stored: Mapping[int, int], max_records: int
                ) -> list[OffsetRange]:
    """This run's bounds: from the stored offsets up to the high-water marks, within the budget."""
    return share_budget(topic, waiting_ranges(consumer, topic, stored), max_records)
