"""A process that exits with live recorded CudaEvents, cached handles, GpuStreams, a CpuStream
stuck on a gate with a task behind it, and events of a pool capped at 0: it must exit 0
printing nothing. Run by tests/test_gpu_process.py."""

import threading

import cudaevents as ce

live = [ce.CudaEvent(0, timing=True).record(ce.GpuStream(0)) for _ in range(10)]
for _ in range(10):
    ce.CudaEvent(0).close()  # cached
streams = [ce.GpuStream(0) for _ in range(3)]
cpu = ce.CpuStream()
gate = threading.Event()
cpu.enqueue(gate.wait, 30)
cpu.enqueue(print, end="")
pool = ce.EventPool(0)
capped = [ce.CudaEvent(0, pool=pool) for _ in range(5)]
