"""The usage topic's record contract, in one place for producers and consumers.

A record's ``schema`` header names the message type and the format revision;
a consumer that meets any other value treats the record as poison (dead
letter, offset advances) rather than guessing. Format 2 dictionary-encodes
string columns (``StringColumn``); format 1 (plain repeated strings) was never
released.
"""

from __future__ import annotations

from schemas.apim.usage.v1.usage_event_columns_pb2 import UsageEventColumns

USAGE_RECORD_FORMAT = 2
USAGE_RECORD_SCHEMA: bytes = f"{UsageEventColumns.DESCRIPTOR.full_name};format={USAGE_RECORD_FORMAT}".encode()
