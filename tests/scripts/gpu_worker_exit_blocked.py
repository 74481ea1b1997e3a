"""A process that exits with Worker commits behind a GPU stream held by a latch nobody releases
(the worker's thread waits in the driver) and a task never committed: it must exit 0 printing
nothing. Run by tests/test_gpu_worker.py."""

from helpers.latch import Latch

import cudaevents as ce

s = ce.GpuStream(0)
latch = Latch()  # never released
latch.block(s)
w = ce.Worker()
for i in range(20):
    w.add_task(print, "never", i)
    w.commit(s)
w.add_task(print, "uncommitted")
