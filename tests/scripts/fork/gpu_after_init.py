"""A real CUDA parent forks (os.fork and multiprocessing's 'fork'): the child is refused every
CUDA use; the parent goes on.

Run by tests/reliability/test_fork.py::test_gpu_fork_after_init_child_gets_clear_error."""

import multiprocessing

from helpers.forking import expect_closed_by_fork, expect_fork_error, fork_and_wait

import cudaevents as ce
from cudaevents._core import driver
from cudaevents._core.errors import CudaUnavailableError

assert ce.is_available(), driver.unavailable_reason()
s = ce.GpuStream(0)
ev = ce.CudaEvent(0, timing=True).record(s)
ev.synchronize(timeout=30)
pool = ce.EventPool(max_cached=0)
live = [ce.CudaEvent(pool=pool).record(s) for _ in range(3)]
timer = ce.Timer()
for _ in range(5):
    with timer.region("step", s):
        pass
w = ce.Worker()
w.add_task(print, "parent: worker task ran", flush=True)
w.commit(s)
w.synchronize(timeout=30)
s.synchronize(timeout=30)

def child():
    assert not ce.is_available() and driver.state.forked
    assert "'spawn'" in driver.unavailable_reason()
    expect_fork_error("CudaEvent().record(GpuStream())", lambda: ce.CudaEvent().record(ce.GpuStream()))
    expect_fork_error("CudaEvent(0).record(s)", lambda: ce.CudaEvent(0).record(s))
    expect_fork_error("ev.query()", ev.query)
    expect_fork_error("ev.synchronize()", ev.synchronize)
    expect_fork_error("ev.elapsed_time", ev.elapsed_time, ev)
    expect_fork_error("s.synchronize()", s.synchronize)
    expect_fork_error("Event(0).signal(s)", lambda: ce.Event(0).signal(s))
    expect_fork_error("Fence(0)", lambda: ce.Fence(0).update(s))
    expect_fork_error("timer.region", lambda: timer.region("child", s).__enter__())
    expect_closed_by_fork("worker.add_task", w.add_task, print, "child: must not run")
    expect_closed_by_fork("worker.commit(s)", w.commit, s)
    expect_fork_error("Device(0).synchronize()", ce.Device(0).synchronize)
    for e in live:
        e.close()
    ev.close()
    s.close()
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0


# multiprocessing's 'fork' start method: the same refusal


def mp_child():
    try:
        ce.GpuStream()
    except CudaUnavailableError as exc:
        assert "'spawn'" in str(exc)
        print("mp child: refused", flush=True)
        return
    raise SystemExit(3)


p = multiprocessing.get_context("fork").Process(target=mp_child)
p.start()
p.join(60)
if p.is_alive():
    p.kill()
    p.join(10)
    raise AssertionError("the multiprocessing 'fork' child hung")
assert p.exitcode == 0, p.exitcode
# the parent is unaffected
e2 = ce.CudaEvent(0, timing=True).record(s)
e2.synchronize(timeout=30)
assert ev.elapsed_time(e2) >= 0
w.add_task(print, "parent: second task ran", flush=True)
w.commit(s)
w.synchronize(timeout=30)
print("parent: ok", flush=True)
