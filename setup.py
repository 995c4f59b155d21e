"""Build hook for the one compiled module (everything else is in pyproject.toml).

collector/_wire.pyx is the collector's wire decoder (Cython); when it cannot be
built (no compiler), the package still works on the pure-Python reference
decoder in collector/decode.py, slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("collector._wire", ["collector/_wire.pyx"], optional=True, extra_compile_args=["-O3"])],
)
