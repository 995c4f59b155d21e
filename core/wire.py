"""What the two compiled wire decoders share at the Python level.

collector/_wire.pyx (Mixer calls) and pipeline/_columns.pyx (the pipeline's
records) read protobuf wire bytes themselves, with the primitives in
core/_wire_primitives.pxd. Both give up on any input they do not handle
exactly by raising :class:`WireUnsupported`, and their caller then decodes that
input with the protobuf runtime (the reference), so the fast and the reference
path accept and reject the same inputs.
"""

from __future__ import annotations


class WireUnsupported(ValueError):
    """Not handled by a compiled decoder; decode with the protobuf runtime instead.

    Control flow between a compiled decoder and its caller, never shown to a
    user: every caller catches it and falls back (so it is not one of the
    ``core.errors.ApimError`` family, which is what the project reports).
    """
