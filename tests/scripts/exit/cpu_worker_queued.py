"""(c, CPU) a Worker with tasks committed behind a CpuStream that never gets there, and tasks
added but never committed; a second Worker busy in a task at exit.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

import threading
import time

import cudaevents as ce

never = threading.Event()
blocked = ce.CpuStream()
blocked.enqueue(never.wait)
w = ce.Worker()
ran = []
for i in range(200):
    w.add_task(ran.append, i)
    if i % 10 == 9:
        w.commit(blocked)
w.add_task(print, "uncommitted: must not run before exit")
busy = ce.Worker()
inside = threading.Event()
def long_task():
    inside.set()
    time.sleep(3600)
busy.add_task(long_task)
busy.commit(ce.CpuStream())
assert inside.wait(30)
time.sleep(0.01)
assert ran == []
print("ready", flush=True)
