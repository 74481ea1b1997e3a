"""A parent's host counters in a forked child neither deadlock nor wait for dead streams.

Run by tests/reliability/test_fork.py::test_parent_counters_in_a_forked_child_neither_deadlock_nor_wait_for_dead_streams."""

import os
import threading
import time

import cudaevents as ce

waiting = ce.AtomicEvent()  # host backend (no GPU, or CUDAEVENTS_ATOMIC_BACKEND=host)
gate = threading.Event()
cs = ce.CpuStream()
cs.enqueue(gate.wait, 30)
waiting.signal(1, cs)  # pending on the CpuStream's thread, which the child will not have
held = ce.AtomicEvent()
held.signal(3)
held._lock.acquire()  # as if another thread were inside the counter at the fork
pid = os.fork()
if pid == 0:
    code = 0
    t0 = time.monotonic()
    try:
        waiting.wait(1, timeout=5)
        code = 3
    except ce.ClosedError as exc:
        if "os.fork()" not in str(exc) or time.monotonic() - t0 > 1:
            code = 4
    if not held.is_signaled(3):  # the lock held at the fork does not block the child
        code = 5
    held.signal(4)
    held.wait(4, timeout=1)
    os._exit(code)
held._lock.release()
_, status = os.waitpid(pid, 0)
gate.set()
waiting.wait(1, timeout=10)  # the parent is unaffected
cs.close(timeout=10)
print("child exit", os.waitstatus_to_exitcode(status))
