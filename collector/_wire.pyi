# Stub for the Cython module collector/_wire.pyx (mypy cannot read .pyx files).
from collector.decode import Decoded
from core.wire import WireUnsupported

Unsupported = WireUnsupported

def decode_call(raw: bytes) -> Decoded: ...
