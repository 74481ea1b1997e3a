"""A process that exits with Worker tasks committed behind a CpuStream stuck on a gate, tasks
never committed, and a dropped Worker: it must exit 0 printing nothing (none of the tasks runs).
Run by tests/test_worker.py."""

import threading

import cudaevents as ce

gate = threading.Event()
s = ce.CpuStream()
s.enqueue(gate.wait, 30)
w = ce.Worker()
for i in range(5):
    w.add_task(print, "committed", i)
    w.commit(s)
w.add_task(print, "uncommitted")
dropped = ce.Worker()
dropped.add_task(gate.wait, 30)
dropped.add_task(print, "dropped")
dropped.commit(s)
del dropped
