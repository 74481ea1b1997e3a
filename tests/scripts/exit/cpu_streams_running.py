"""(d) CpuStreams still running tasks: sleeping, spinning in Python, blocked on a lock nobody
releases, with more tasks queued behind them; one stream is dropped while busy.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

import threading
import time

import cudaevents as ce

never = threading.Event()
streams = [ce.CpuStream() for _ in range(4)]
started = threading.Barrier(5, timeout=30)

def spin():
    started.wait()
    x = 0
    while True:
        x += 1

def sleep_long():
    started.wait()
    time.sleep(3600)

def block():
    started.wait()
    never.wait()

def busy_small():
    started.wait()
    while True:
        sum(range(100))
        time.sleep(0)

for s, fn in zip(streams, (spin, sleep_long, block, busy_small)):
    s.enqueue(fn)
    for i in range(100):
        s.enqueue(sum, range(i))
started.wait()
dropped = ce.CpuStream()
dropped.enqueue(time.sleep, 3600)
dropped.enqueue(print, "must not run")
del dropped
print("ready", flush=True)
