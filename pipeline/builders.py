"""The chunk builder a reader uses: the compiled one, which setup.py must build.

The reference builder (:class:`pipeline.decode.ChunkBuilder`, the protobuf runtime) stays for the
tests that hold the compiled one to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline._columns import CompiledChunkBuilder
from pipeline.decode import AGGREGATED_COLUMNS, ColumnSpec

__all__ = ["CompiledChunkBuilder", "new_builder"]


def new_builder(spec: Sequence[ColumnSpec] = AGGREGATED_COLUMNS, *, capacity: int = 1 << 16) -> CompiledChunkBuilder:
    """The compiled builder for ``spec``."""
    return CompiledChunkBuilder(spec, capacity)
