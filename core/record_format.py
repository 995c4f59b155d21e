"""The Kafka records' contract, in one place for producers and consumers.

A record's ``schema`` header names the message type and the format revision;
a consumer that meets any other value treats the record as poison (dead
letter, offset advances) rather than guessing. Format 2 dictionary-encodes
string columns (``StringColumn``); format 1 (plain repeated strings) was never
released. The record layout is described in
schemas/apim/usage/v1/usage_event_columns.proto (``UsageEventColumns``).

The headers are written here as literals so this bottom layer imports nothing
of the project; tests/unit/test_layering.py checks them against the
descriptors in ``schemas``.
"""

from __future__ import annotations

USAGE_RECORD_FORMAT = 2
USAGE_EVENT_COLUMNS_TYPE = "apim.usage.v1.UsageEventColumns"
DEAD_LETTER_TYPE = "apim.usage.v1.DeadLetter"

USAGE_RECORD_SCHEMA: bytes = f"{USAGE_EVENT_COLUMNS_TYPE};format={USAGE_RECORD_FORMAT}".encode()
"""``schema`` header of a usage record."""
DEAD_LETTER_SCHEMA: bytes = DEAD_LETTER_TYPE.encode()
"""``schema`` header of a dead-letter record."""
