"""(c) Worker tasks queued behind a blocked GPU stream (the worker's thread waits in the driver at
exit), behind a blocked CPU stream, and added but never committed.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

import threading
import time

from helpers.latch import Latch

import cudaevents as ce

latch = Latch.for_exit()  # nobody releases it (under compute-sanitizer: the device, later)

s = ce.GpuStream(0)
latch.block(s)
w = ce.Worker()
ran = []
for i in range(100):
    w.add_task(ran.append, i)
    if i % 10 == 9:
        w.commit(s)
never = threading.Event()
cs = ce.CpuStream()
cs.enqueue(never.wait)
w2 = ce.Worker()
for i in range(100):
    w2.add_task(ran.append, -i)
    if i % 10 == 9:
        w2.commit(cs)
w3 = ce.Worker()
w3.add_task(ran.append, "gpu then cpu")
w3.commit(s)
w3.add_task(ran.append, "cpu")
w3.commit(cs)
w.add_task(print, "uncommitted: must not run before exit")
time.sleep(0.05)
assert ran == [], ran
print("ready", flush=True)
