"""The bottom layer: what every package may import and which imports none of them.

Settings machinery (``core.settings``), structured logs (``core.logs``), the
error root (``core.errors``) and the translation of Kafka clients' errors
(``core.kafka_errors``), the Kafka records' header constants
(``core.record_format``), topic creation (``core.topics``), base64url and
compact-JWS parsing shared by the collector and the simulator (``core.jose``),
and what the two compiled wire decoders share (``core.wire``,
``core/_wire_primitives.pxd``).
"""
