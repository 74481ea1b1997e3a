"""After any fork, every CpuStream and Worker made before it is closed in the child; new ones work.

Run by tests/reliability/test_fork.py::test_parent_threads_refused_in_child_of_any_fork."""

import gc
import threading

from helpers.forking import expect_closed_by_fork, fork_and_wait

import cudaevents as ce
from cudaevents import ClosedError
from cudaevents._core import driver

assert not driver.state.forked
gate = threading.Event()
ran = []                                     # appended by the parent's tasks, in any process
idle = ce.CpuStream()
busy = ce.CpuStream()
busy.enqueue(gate.wait, 60)                  # holds busy's thread until the parent lets go
busy.enqueue(ran.append, "busy")
done = ce.CpuStream()
done.enqueue(ran.append, "done")
done.close(timeout=30)                       # closed, nothing left: not the fork's business
w_idle = ce.Worker()
w_busy = ce.Worker()
w_busy.add_task(ran.append, "w_busy committed")
w_busy.commit(busy)                          # waits behind busy
w_busy.add_task(ran.append, "w_busy uncommitted")
w_pending = ce.Worker()
w_pending.add_task(ran.append, "w_pending uncommitted")
before = list(ran)


def child():
    assert not driver.state.forked            # CUDA plays no part in this
    for s in (idle, busy):
        assert s.closed
        expect_closed_by_fork("enqueue", s.enqueue, ran.append, "child")
        expect_closed_by_fork("synchronize()", s.synchronize)
        expect_closed_by_fork("synchronize(timeout)", s.synchronize, timeout=30)
        expect_closed_by_fork("with", s.__enter__)
    idle.close()
    idle.close(timeout=1)
    msg = expect_closed_by_fork("close() with tasks unfinished", busy.close)
    assert "3 task(s) unfinished" in msg and "never run here" in msg, msg  # with the commit marker
    assert done.closed
    try:
        done.enqueue(ran.append, "child")
    except ClosedError as exc:
        assert "was closed" in str(exc), exc
    else:
        raise AssertionError("a closed stream accepted work")
    done.close()
    for w in (w_idle, w_busy, w_pending):
        assert w.closed
        expect_closed_by_fork("add_task", w.add_task, ran.append, "child")
        expect_closed_by_fork("commit", w.commit, idle)
        expect_closed_by_fork("synchronize()", w.synchronize)
        expect_closed_by_fork("with", w.__enter__)
    w_idle.close()
    msg = expect_closed_by_fork("worker close() with work unfinished", w_busy.close)
    assert "1 commit(s) unfinished and 1 task(s) uncommitted" in msg, msg
    msg = expect_closed_by_fork("worker close() with tasks uncommitted", w_pending.close)
    assert "0 commit(s) unfinished and 1 task(s) uncommitted" in msg, msg
    # what the child makes works
    cs = ce.CpuStream()
    w = ce.Worker()
    mine = []
    for i in range(20):
        cs.enqueue(mine.append, i)
        w.add_task(mine.append, -i)
        w.commit(cs)
    w.synchronize(timeout=30)
    cs.synchronize(timeout=30)
    assert sorted(mine) == sorted(list(range(20)) + [-i for i in range(20)]), mine
    w.close(timeout=30)
    cs.close(timeout=30)
    gc.collect()
    assert ran == before, ran                # nothing of the parent's ran in the child
    print("child: ok", flush=True)


code = fork_and_wait(child, timeout=60)
assert code == 0
# the parent's streams and workers are untouched
gate.set()
busy.synchronize(timeout=30)
w_busy.synchronize(timeout=30)
idle.enqueue(ran.append, "idle")
idle.synchronize(timeout=30)
w_busy.close(timeout=30)
w_pending.close(timeout=30)
w_idle.close(timeout=30)
busy.close(timeout=30)
idle.close(timeout=30)
assert ran == ["done", "busy", "w_busy committed", "idle", "w_busy uncommitted", "w_pending uncommitted"], ran
print("parent: ok", flush=True)
