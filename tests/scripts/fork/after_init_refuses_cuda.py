"""A parent that initialized (simulated) CUDA and holds events, a stream, a Timer and a busy
Worker forks: the child is refused every CUDA use and leaks what it inherited.

Run by tests/reliability/test_fork.py::test_fork_after_init_refuses_cuda_and_leaks_inherited_objects."""

import gc

from helpers.fake_driver import install
from helpers.forking import expect_closed_by_fork, expect_fork_error, fork_and_wait

import cudaevents as ce
from cudaevents._core import driver

fake = install(keeps_up=True)  # a simulated driver, initialized: the parent has used CUDA
fake.hold_host_waits()  # cuEventSynchronize blocks, as on GPU work still running

assert ce.is_available()
pool = ce.EventPool(max_cached=0)            # every release would destroy a handle
s = ce.GpuStream(0)
ev = ce.CudaEvent(0, timing=True).record(s)
cached = ce.CudaEvent(0)
cached.close()                               # one handle cached in the default pool
live = [ce.CudaEvent(pool=pool).record(s) for _ in range(3)]
timer = ce.Timer()
for _ in range(5):
    with timer.region("step", s):
        pass
w = ce.Worker()
w.add_task(print, "parent: worker task ran", flush=True)
fake.keeps_up = False                        # the commit's work is still running on the GPU:
w.commit(s)                                  # its thread sleeps in the driver until it is done
fake.keeps_up = True
idle = ce.CpuStream()


def child():
    global live, timer
    assert driver.state.forked and driver.state.exiting
    assert not ce.is_available()
    reason = driver.unavailable_reason()
    assert "fork" in reason and "'spawn'" in reason, reason
    assert ce.device_count() == 0
    expect_fork_error("driver()", driver.bindings)
    expect_fork_error("GpuStream()", ce.GpuStream)
    expect_fork_error("GpuStream(0)", ce.GpuStream, 0)
    expect_fork_error("CudaEvent().record(s)", lambda: ce.CudaEvent().record(s))
    expect_fork_error("CudaEvent(0) from the pool, record", lambda: ce.CudaEvent(0).record(s))
    expect_fork_error("new pool", lambda: ce.CudaEvent(pool=ce.EventPool()).record(s))
    expect_fork_error("ev.query()", ev.query)
    expect_fork_error("ev.synchronize(timeout)", ev.synchronize, timeout=5)
    expect_fork_error("ev.synchronize()", ev.synchronize)
    expect_fork_error("ev.record(s)", ev.record, s)
    expect_fork_error("ev.wait(s)", ev.wait, s)
    expect_fork_error("elapsed_time", ev.elapsed_time, ev)
    expect_fork_error("s.query()", s.query)
    expect_fork_error("s.synchronize()", s.synchronize)
    expect_fork_error("s.synchronize(timeout)", s.synchronize, timeout=5)
    expect_fork_error("as_stream(raw handle)", ce.as_stream, 1234, device=0)
    expect_fork_error("Device(0).synchronize()", ce.Device(0).synchronize)
    expect_fork_error("stream memory operation", driver.stream_write_value, s._handle, 0, 1, 64)
    expect_fork_error("host function", driver.launch_host_func, s._handle, 0, 0)
    expect_fork_error("pushed(0)", lambda: driver.pushed(0).__enter__())
    expect_fork_error("in_context(0)", driver.in_context, 0, print)
    expect_fork_error("timer.region", lambda: timer.region("child", s).__enter__())
    expect_fork_error("timer.harvest()", timer.harvest)
    expect_fork_error("timer.results()", timer.results, timeout=5)
    # the parent's worker has no thread here (and a commit in flight): refused, never queued
    assert w.closed and idle.closed
    expect_closed_by_fork("worker.add_task", w.add_task, print, "child: must not run behind a stream")
    expect_closed_by_fork("worker.commit(s)", w.commit, s)
    expect_closed_by_fork("worker.synchronize()", w.synchronize)
    assert "1 commit(s) unfinished" in expect_closed_by_fork("worker.close()", w.close)
    idle.close()                             # nothing was left to run on it: closes quietly
    w2 = ce.Worker()
    w2.add_task(gc.collect)
    expect_fork_error("new worker.commit(s)", w2.commit, s)
    # dropping what the parent made: leaked, never destroyed through the driver
    assert pool.trim() == 0 and ce.default_pool().trim() == 0
    ev.close()
    for e in live:
        e.close()
    s.close()
    live = timer = None
    gc.collect()
    assert fake.child_calls == [], fake.child_calls
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0
# the parent is unaffected
assert fake.child_calls == []
assert ce.is_available() and not driver.state.forked and not driver.state.exiting
fake.release_host_waits()
fake.run()  # the GPU finishes the commit's work, and the worker's own wait
w.synchronize(timeout=30)
assert ev.query()
ce.CudaEvent(pool=pool).record(s).close()
assert pool.stats().destroys >= 1
print("parent: ok", flush=True)
