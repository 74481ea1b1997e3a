"""``benchmark()`` of a valid call where no device is usable prints ``unavailable`` (it raised
CudaUnavailableError). Run by tests/test_bench.py."""

import cudaevents as c

try:
    c.benchmark(lambda: None, repeat=3)
except c.CudaUnavailableError:
    print("unavailable")
