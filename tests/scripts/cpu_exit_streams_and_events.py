"""A process that exits with a CpuStream stuck on a gate (tasks queued behind), an idle one, an
unrecorded CudaEvent and a pool: it must exit 0 printing nothing. Run by tests/test_without_gpu.py."""

import threading

import cudaevents as c

s = c.CpuStream()
t = c.CpuStream()
gate = threading.Event()
s.enqueue(gate.wait, 30)
for i in range(100):
    s.enqueue(print, end='')
t.enqueue(lambda: None)
e = c.CudaEvent()
pool = c.EventPool()
