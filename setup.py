"""Builds the optional C extension ``gradwatch.stats._native``; every other setting is in pyproject.toml.

``optional=True``: where no C compiler is found the build goes on without it, and gradwatch computes
the same statistics with numpy (``gradwatch/stats/host.py`` chooses by whether the module imports).
"""

import sys

from setuptools import Extension, setup

# -fopenmp-simd: the OpenMP SIMD pragmas only (vectorised reductions), no OpenMP runtime.
FLAGS = ["/O2"] if sys.platform == "win32" else ["-O3", "-fopenmp-simd"]

setup(
    ext_modules=[
        Extension(
            "gradwatch.stats._native", ["gradwatch/stats/_native.c"], extra_compile_args=FLAGS, optional=True
        )
    ]
)
