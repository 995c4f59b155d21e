"""The chunk builder a reader uses: the compiled one, which setup.py must build.

The reference builder (:class:`pipeline.decode.ChunkBuilder`, the protobuf runtime) stays for the
tests that hold the compiled one to it and for ``compiled=False`` comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline._columns import CompiledChunkBuilder
from pipeline.decode import AGGREGATED_COLUMNS, ChunkBuilder, ColumnSpec

__all__ = ["CompiledChunkBuilder", "new_builder"]


def new_builder(spec: Sequence[ColumnSpec] = AGGREGATED_COLUMNS, *, compiled: bool = True,
                capacity: int = 1 << 16) -> ChunkBuilder | CompiledChunkBuilder:
    """A builder for ``spec``: the compiled one unless ``compiled`` is False."""
    if compiled:
        return CompiledChunkBuilder(spec, capacity)
    return ChunkBuilder(spec, capacity)
