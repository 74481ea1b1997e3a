"""CPU-only parts made in a child of a (simulated) CUDA parent work there.

Run by tests/reliability/test_fork.py::test_cpu_parts_work_in_a_forked_child."""

import time

from helpers.fake_driver import install
from helpers.forking import fork_and_wait

import cudaevents as ce
from cudaevents._core import driver

fake = install(keeps_up=True)  # a simulated driver, initialized: the parent has used CUDA

parent_idle = ce.CpuStream()
def child():
    assert driver.state.forked
    cs = ce.CpuStream()
    done = []
    for i in range(100):
        cs.enqueue(done.append, i)
    cs.synchronize(timeout=30)
    assert done == list(range(100))
    a = ce.AtomicEvent()
    assert a.backend == "host"
    a.signal(3, cs)
    a.wait(3, timeout=30)
    a.wait(4, cs)
    a.signal(4)
    cs.synchronize(timeout=30)
    w = ce.Worker()
    ran = []
    for i in range(50):
        w.add_task(ran.append, i)
        w.commit(cs)
    w.synchronize(timeout=30)
    assert ran == list(range(50)) and w.errors == []
    t = ce.Timer()
    with t.region("cpu", cs):
        cs.enqueue(time.sleep, 0.001)
    assert len(t.results(timeout=30).durations("cpu")) == 1
    w.close(timeout=30)
    cs.close(timeout=30)
    a.close()
    parent_idle.close(timeout=30)
    assert fake.child_calls == [], fake.child_calls
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
