"""A process that exits with a CpuStream blocked in a host-counter wait nobody satisfies and a
Fence updated behind it: it must exit 0 printing nothing. Run by tests/test_atomic_host.py."""

import cudaevents as c

a = c.AtomicEvent()
s = c.CpuStream()
a.wait(5, s)
f = c.Fence()
f.update(s)
