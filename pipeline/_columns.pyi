# Stub for the Cython module pipeline/_columns.pyx (mypy cannot read .pyx files).
from collections.abc import Sequence

from core.wire import WireUnsupported
from pipeline.decode import Chunk, ColumnSpec

Unsupported = WireUnsupported

class CompiledChunkBuilder:
    spec: tuple[ColumnSpec, ...]
    n: int
    def __init__(self, spec: Sequence[ColumnSpec], capacity: int = ...) -> None: ...
    @property
    def compiled(self) -> bool: ...
    def add(self, value: bytes | None) -> tuple[int, str]: ...
    def accept(self) -> None: ...
    def take(self) -> Chunk: ...
