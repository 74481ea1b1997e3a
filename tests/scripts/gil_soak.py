"""GIL and driver locks under load (tests/reliability/test_gil_soak.py): the main thread keeps
calling CUDA for CUDAEVENTS_SOAK_SECONDS while a Worker runs ``sys.argv[1]`` Python tasks
committed behind GPU work on four streams. Prints one JSON line of what happened; a stall
dumps every thread's stack (faulthandler) and exits."""

import faulthandler
import json
import os
import sys
import time

import cudaevents as ce
from cudaevents._core import driver

SOAK = float(os.environ.get("CUDAEVENTS_SOAK_SECONDS", "120"))
N = int(sys.argv[1])
faulthandler.dump_traceback_later(SOAK + 45, exit=True)  # a stall shows every thread's stack

assert ce.is_available(), driver.unavailable_reason()
STREAMS = 4
WORDS = 1 << 14
streams = [ce.GpuStream(0) for _ in range(STREAMS)]
buf = driver.mem_alloc(0, STREAMS * WORDS * 4)
pool = ce.EventPool(max_cached=2)
w = ce.Worker()
ran = []


def task(i, stream):
    x = 0
    for k in range(25):  # a little Python work, holding the GIL
        x += k * i
    if i % 8 == 0:
        stream.query()   # a task calling the driver from the worker's thread
    ran.append(i)


committed = 0
it = 0
syncs = 0
start = time.monotonic()
while True:
    elapsed = time.monotonic() - start
    if committed >= N and elapsed >= SOAK:
        break
    k = it % STREAMS
    s = streams[k]
    driver.memset_d32_async(buf + k * WORDS * 4, it & 0xFFFF, WORDS, s._handle)
    # commit the tasks spread over the soak (at least as fast as time passes)
    due = N if SOAK <= 0 else min(N, int(N * elapsed / SOAK) + 1)
    batch = min(due - committed, 16)
    for _ in range(batch):
        w.add_task(task, committed, s)
        committed += 1
    if batch:
        w.commit(s)
    events = [ce.CudaEvent(pool=pool).record(streams[(k + j) % STREAMS]) for j in range(4)]
    events[0].wait(streams[(k + 1) % STREAMS])          # a device-side wait across streams
    other = streams[(k + 2) % STREAMS]
    if it % 4 == 0:
        other.synchronize()              # in the driver with the GIL released (bounded by the subprocess timeout)
    else:
        other.synchronize(timeout=60)    # polling from Python
    syncs += 1
    events[1].synchronize(timeout=60)
    for e in events:
        e.close()                        # beyond the cap of 2: destroyed while the worker runs
    it += 1

w.synchronize(timeout=120)
for s in streams:
    s.synchronize(timeout=60)
errors = w.errors
w.close(timeout=60)
driver.mem_free(buf)
stats = pool.stats()
print(json.dumps({"ran": len(ran), "in_order": ran == list(range(N)), "errors": [repr(e) for e in errors],
                  "iterations": it, "syncs": syncs, "creates": stats.creates, "destroys": stats.destroys,
                  "seconds": round(time.monotonic() - start, 1)}), flush=True)
faulthandler.cancel_dump_traceback_later()
