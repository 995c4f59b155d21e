# Stub for the Cython module collector/_wire.pyx (mypy cannot read .pyx files).
from core.wire import WireUnsupported

from collector.decode import Decoded

Unsupported = WireUnsupported

def decode_call(raw: bytes) -> Decoded: ...
