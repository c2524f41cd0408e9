"""Builds the optional C extension ``gradwatch.stats._native``; every other setting is in pyproject.toml.

``optional=True``: where no C compiler is found the build goes on without it, and gradwatch computes
the same statistics with numpy (``gradwatch/stats/host.py`` chooses by whether the module imports).
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -fopenmp-simd: the OpenMP SIMD pragmas only (vectorised reductions), no OpenMP runtime.
FLAGS = ["/O2"] if sys.platform == "win32" else ["-O3", "-fopenmp-simd"]


class BuildExt(build_ext):
    """Retry without the SIMD flag where a compiler refuses it (the pragmas are then ignored)."""

    def build_extension(self, ext: Extension) -> None:  # noqa: D102
        try:
            super().build_extension(ext)
        except Exception:
            if "-fopenmp-simd" not in ext.extra_compile_args:
                raise
            ext.extra_compile_args = [f for f in ext.extra_compile_args if f != "-fopenmp-simd"]
            super().build_extension(ext)


setup(
    ext_modules=[
        Extension(
            "gradwatch.stats._native", ["gradwatch/stats/_native.c"], extra_compile_args=FLAGS, optional=True
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
