"""Build hook for the compiled modules (everything else is in pyproject.toml).

collector/_wire.pyx is the collector's wire decoder and pipeline/_columns.pyx
the pipeline's record decoder (both Cython); when they cannot be built (no
compiler), the package still works on the pure-Python reference decoders in
collector/decode.py and pipeline/decode.py, slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("collector._wire", ["collector/_wire.pyx"], optional=True, extra_compile_args=["-O3"]),
        Extension("pipeline._columns", ["pipeline/_columns.pyx"], optional=True, extra_compile_args=["-O3"]),
    ],
)
