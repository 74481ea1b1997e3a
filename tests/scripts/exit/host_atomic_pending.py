"""Host-backend counters with waits that are never satisfied: a CpuStream blocked in a wait with
signals queued behind it, a daemon thread blocked in a host wait, a Fence and an Event waited
on by CPU streams.

An exit scenario of tests/reliability/test_exit.py: prints "ready", then exits with that work in
flight."""

import threading
import time

import cudaevents as ce

a = ce.AtomicEvent()
assert a.backend == "host"
cs = ce.CpuStream()
a.signal(1, cs)
a.wait(10, cs)            # never signalled: cs blocks here
a.signal(11, cs)          # queued behind the wait
other = ce.CpuStream()
a.wait(11, other)
t = threading.Thread(target=a.wait, args=(20,), daemon=True)
t.start()
f = ce.Fence()
f.update(other)
f.wait(ce.CpuStream())
e = ce.Event()
e.signal(cs)              # behind the blocked wait: never happens
e.wait(ce.CpuStream())
a.wait(1, timeout=30)
time.sleep(0.01)
print("ready", flush=True)
