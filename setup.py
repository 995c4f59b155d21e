"""Build hook for the compiled modules (everything else is in pyproject.toml).

collector/_wire.pyx is the collector's wire decoder and pipeline/_columns.pyx
the pipeline's record decoder (both Cython); they share the protobuf wire
primitives in core/_wire_primitives.pxd, found through the repository root on
Cython's include path. Both are required: without a C compiler (or Cython) the
build fails, rather than installing a package that silently runs its hot paths
on the slower pure-Python reference decoders (collector/decode.py,
pipeline/decode.py), which remain as the reference the tests compare against.
"""

from setuptools import Extension, setup

PRIMITIVES = "core/_wire_primitives.pxd"

setup(
    ext_modules=[
        Extension("collector._wire", ["collector/_wire.pyx"], include_dirs=["."], depends=[PRIMITIVES],
                  extra_compile_args=["-O3"]),
        Extension("pipeline._columns", ["pipeline/_columns.pyx"], include_dirs=["."], depends=[PRIMITIVES],
                  extra_compile_args=["-O3"]),
    ],
)
