"""An EventPool whose lock another thread held at the fork: the child's pool has a fresh lock
and works. Prints ``child exit N`` (0: the child's pool worked). Run by tests/test_pool.py."""

import itertools
import os

from cudaevents import EventPool

ids = itertools.count(1)
pool = EventPool(create=lambda d, f: next(ids), destroy=lambda h: None)
pool._lock.acquire()  # as if another thread were inside the pool at the fork
pid = os.fork()
if pid == 0:
    pool.release(0, 0, pool.acquire(0, 0))
    os._exit(0 if pool.stats().live == 0 else 3)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
