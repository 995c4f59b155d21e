"""The bottom layer: what every package may import and which imports none of them.

Settings machinery (``core.settings``), structured logs (``core.logs``), the
error root (``core.errors``), the Kafka records' header constants
(``core.record_format``) and topic creation (``core.topics``).
"""
