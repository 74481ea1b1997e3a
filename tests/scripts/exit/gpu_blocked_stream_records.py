"""(b) records, Timer regions, counter signals and a value event queued behind a stream that never
gets going; a CudaEvent dropped while its record is pending.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

from helpers.latch import Latch

import cudaevents as ce

latch = Latch.for_exit()  # nobody releases it (under compute-sanitizer: the device, later)

s = ce.GpuStream(0)
t = ce.GpuStream(0)
latch.block(s)
timer = ce.Timer()
events = []
for i in range(50):
    with timer.region("behind the latch", s):
        pass
    events.append(ce.CudaEvent(timing=True).record(s))
assert not events[-1].query()
ce.CudaEvent(0).record(s)            # dropped at once, record still pending
a = ce.AtomicEvent(0)
a.signal(1, s)                       # behind the latch
a.wait(1, t)                         # t waits for s on the device
v = ce.Event(0)
v.signal(s)
v.wait(t)
after = ce.CudaEvent(blocking_sync=True).record(t)
print("ready", flush=True)
