"""(a) live CudaEvents (recorded, some never synchronized), cached and in-flight handles, a Timer
with regions not yet harvested on several streams, a GPU counter, real work.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

import cudaevents as ce
from cudaevents._core import driver

assert ce.is_available(), driver.unavailable_reason()
streams = [ce.GpuStream(0) for _ in range(4)]
buf = driver.mem_alloc(0, 4 << 20)
timer = ce.Timer()
events = []
for i in range(200):
    s = streams[i % 4]
    with timer.region(f"memset{i % 4}", s):
        driver.memset_d32_async(buf, i, 1 << 20, s._handle)
    events.append(ce.CudaEvent(timing=True).record(s))
for e in events[:50]:
    e.close()
with ce.CudaEvent(0) as cached:
    cached.record(streams[0])
pool = ce.EventPool(max_cached=1)
mine = [ce.CudaEvent(pool=pool).record(s) for s in streams]
a = ce.AtomicEvent(0)
a.signal(1, streams[0])
a.wait(1, streams[1])
v = ce.Event(0)
v.signal(streams[2])
f = ce.Fence(0)
f.update(streams[3])
f.wait(streams[0])
print("ready", flush=True)
