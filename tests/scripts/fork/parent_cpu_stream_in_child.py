"""A parent's CpuStream and Worker refuse work in a forked child.

Run by tests/reliability/test_fork.py::test_parent_cpu_stream_used_in_forked_child_is_refused."""

from helpers.forking import fork_and_wait

import cudaevents as ce
from cudaevents import ClosedError

cs = ce.CpuStream()
w = ce.Worker()
def child():
    try:
        cs.enqueue(print, "child: ran")
        cs.synchronize(timeout=1)
    except ClosedError:
        pass
    else:
        raise AssertionError("a parent's CpuStream accepted work in the forked child")
    try:
        w.add_task(print, "child: ran")
        w.commit(cs)
        w.synchronize(timeout=5)
    except ClosedError:
        pass
    else:
        raise AssertionError("a parent's Worker accepted work in the forked child")
code = fork_and_wait(child)
assert code == 0
