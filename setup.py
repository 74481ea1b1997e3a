"""The compiled hot path (cudaevents._core._hot): built where a C compiler is found, and
optional: where it cannot be built the install goes on and cudaevents runs in pure Python.
It needs no CUDA toolkit (the driver's entry points are found at run time)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cudaevents._core._hot", ["src/cudaevents/_core/_hot.c"], optional=True)])
