"""The peer comparison behind ``cudaevents bench``: cudaevents next to raw cuda-bindings,
PyTorch, CuPy and cuda.core on the same machine. Not part of the library: only the ``bench``
command imports it."""
