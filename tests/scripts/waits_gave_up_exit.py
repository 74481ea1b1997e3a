"""Waits that timed out leave threads blocked on things that never come (a CPU stream on a gate
nobody sets, a worker commit behind it)
the process must still exit at once, printing
nothing. Run by tests/reliability/test_timeouts.py."""

import threading

import cudaevents as c

gate = threading.Event()
s = c.CpuStream()
s.enqueue(gate.wait)  # never set
a = c.AtomicEvent()
a.signal(1, s)
ev = c.Event()
ev.signal(s)
f = c.Fence()
f.update(s)
w = c.Worker()
w.add_task(print, "never")
w.commit(s)
t = c.Timer(nvtx=False)
with t.region("r", s):
    pass
calls = [lambda: a.wait(1, timeout=0.05), lambda: ev.wait(timeout=0.05), lambda: f.wait(timeout=0.05),
         lambda: s.synchronize(timeout=0.05), lambda: w.synchronize(timeout=0.05),
         lambda: t.results(timeout=0.05), lambda: w.close(timeout=0.05), lambda: s.close(timeout=0.05)]
for call in calls:
    try:
        call()
    except TimeoutError:
        pass
    else:
        raise SystemExit(f"no TimeoutError from {call!r}")
