"""(d, GPU) CpuStreams still running tasks that call CUDA in a loop (some thread is inside the
driver when the interpreter finalizes), and CPU-stream Timer regions in flight.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

import threading
import time

import cudaevents as ce
from cudaevents._core import driver

buf = driver.mem_alloc(0, 1 << 20)
started = threading.Barrier(4, timeout=30)

def hammer(stream):
    ev = ce.CudaEvent(0)
    started.wait()
    i = 0
    while True:
        driver.memset_d32_async(buf, i, 1 << 16, stream._handle)
        ev.record(stream)
        ev.query()
        stream.query()
        if i % 16 == 0:
            stream.synchronize()
        i += 1

def churn(stream):
    started.wait()
    while True:
        with ce.CudaEvent(0) as e:
            e.record(stream)

gpu = [ce.GpuStream(0) for _ in range(3)]
cpus = [ce.CpuStream() for _ in range(3)]
cpus[0].enqueue(hammer, gpu[0])
cpus[1].enqueue(hammer, gpu[1])
cpus[2].enqueue(churn, gpu[2])
timer = ce.Timer()
c = ce.CpuStream()
with timer.region("cpu", c):
    c.enqueue(time.sleep, 3600)
started.wait()
time.sleep(0.05)
print("ready", flush=True)
