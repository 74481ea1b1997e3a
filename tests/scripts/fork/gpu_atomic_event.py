"""A real CUDA parent's counters are refused in the forked child and keep their values.

Run by tests/reliability/test_fork.py::test_gpu_fork_atomic_event_refused_and_parent_counter_untouched."""

from helpers.forking import expect_fork_error, fork_and_wait

import cudaevents as ce

s = ce.GpuStream(0)
a = ce.AtomicEvent(0)
a.signal(1, s)
a.wait(1, timeout=30)
b = ce.AtomicEvent(0)
b.close()                                      # its slot goes back to the slab's free list
s.synchronize(timeout=30)
def child():
    expect_fork_error("AtomicEvent(0)", ce.AtomicEvent, 0)
    expect_fork_error("a.signal(2)", a.signal, 2)
    expect_fork_error("a.value", lambda: a.value)
    expect_fork_error("a.wait(5, s)", a.wait, 5, s)
    a.close()
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
assert a.value == 1, a.value
a.signal(2, s)
a.wait(2, timeout=30)
print("parent: ok", flush=True)
