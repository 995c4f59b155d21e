"""Build hook for the compiled modules (everything else is in pyproject.toml).

collector/_wire.pyx is the collector's wire decoder and pipeline/_columns.pyx
the pipeline's record decoder (both Cython). Both are required: without a C
compiler (or Cython) the build fails, rather than installing a package that
silently runs its hot paths on the slower pure-Python reference decoders
(collector/decode.py, pipeline/decode.py), which remain as the reference the
tests compare against.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("collector._wire", ["collector/_wire.pyx"], extra_compile_args=["-O3"]),
        Extension("pipeline._columns", ["pipeline/_columns.pyx"], extra_compile_args=["-O3"]),
    ],
)
