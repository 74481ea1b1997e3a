"""A process that exits with CudaEvent records pending behind a GPU stream held by a latch
nobody releases: it must exit 0 printing nothing. Run by tests/test_gpu_process.py."""

from helpers.latch import Latch

import cudaevents as ce

s = ce.GpuStream(0)
latch = Latch()  # never released
latch.block(s)
events = [ce.CudaEvent(0).record(s) for _ in range(20)]
assert not events[-1].query()
