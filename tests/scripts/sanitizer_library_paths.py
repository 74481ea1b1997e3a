"""The library's own GPU paths that compute-sanitizer once caught reporting API errors: Timer
regions harvested while the GPU lags behind them (a latch the device itself releases
``LATCH_RELEASE_SECONDS`` after it blocks the stream), and a counter of each GPU backend
collected in a reference cycle after GPU waits and signals. Prints "ready" when every check
passed.

Run by tests/reliability/test_sanitizer.py."""

import gc
import os
import time

from helpers.latch import Latch

import cudaevents as ce
from cudaevents._sync import counter_storage

latch = Latch(release_after=int(os.environ["LATCH_RELEASE_SECONDS"]))

s = ce.GpuStream(0)
timer = ce.Timer(harvest_every=16)
with timer.region("first", s):            # the reference event, then a finished region
    pass
timer.synchronize(timeout=30)
latch.block(s)                            # the device releases it LATCH_RELEASE_SECONDS from now
for i in range(300):
    with timer.region("behind the latch", s):
        pass
    if i % 50 == 0:
        timer.harvest()                   # nothing has finished yet
assert timer.pending == 300, timer.pending
assert len(timer.results(timeout=60)) == 301

for backend in ("mem64", "mem32", "hostfn"):
    os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = backend
    t = ce.GpuStream(0)
    a = ce.AtomicEvent(0)
    assert a.backend == backend, a.backend
    a.wait(1, t)
    a.signal(1)
    a.signal(2, t)
    a.wait(2, timeout=30)
    box = {"counter": a}
    box["box"] = box
    del a, box
    gc.collect()
    t.synchronize(timeout=30)
deadline = time.monotonic() + 30
while len(counter_storage._quarantine) and time.monotonic() < deadline:
    counter_storage._quarantine.reclaim()
    time.sleep(0.01)
assert len(counter_storage._quarantine) == 0, "quarantined resources never came back"
print("ready", flush=True)
