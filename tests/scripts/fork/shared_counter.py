"""A shared AtomicEvent in forked children: the child maps the page through a descriptor of
its own (its file lock is not the parent's), uses the counter from the host, is not attached
(its exit is no death), and does not unlink what the parent created; in the child of a
(simulated) CUDA parent, GPU streams are refused before anything changes for the parent.

Run by tests/test_shared_counter.py::test_a_forked_child_uses_an_inherited_shared_counter_from_the_host."""

import fcntl
import os
import select
import threading

from helpers.fake_driver import install
from helpers.forking import expect_fork_error, fork_and_wait
from helpers.spawning import T, attached_pids

import cudaevents as ce

a = ce.AtomicEvent(shared=True)           # host only: the parent has not initialized CUDA yet
a.signal(1)
r, w = os.pipe()
held = threading.Event()


def hold_the_file_lock():
    with a._cell.locked():                # held across the fork, until the child has tried it
        held.set()
        select.select([r], [], [], T)


def child():
    try:
        fcntl.flock(a._cell._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("child: the parent's file lock is not the child's", flush=True)
    else:
        raise AssertionError("the child's descriptor shares the parent's file lock")
    os.write(w, b"x")
    a.signal(2)                           # once the parent's thread has let go
    s = ce.CpuStream("child")
    a.signal(3, s)
    a.wait(3, timeout=T)
    s.close(timeout=T)
    assert os.getpid() not in attached_pids(a)
    a.close()
    assert os.path.exists(a._cell.path)   # not the creator's close


holder = threading.Thread(target=hold_the_file_lock)
holder.start()
assert held.wait(T)
assert fork_and_wait(child) == 0
holder.join(T)
assert a.value == 3 and a.error is None
assert attached_pids(a) == {os.getpid()}
try:
    a.wait(4, timeout=0.5)
except TimeoutError:
    print("parent: the child's exit was no death", flush=True)
a.close()
assert not os.path.exists(a._cell.path)

fake = install(keeps_up=True)             # the parent has used (simulated) CUDA from here on
os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = "mem64"
g = ce.AtomicEvent(0, shared=True)
gs = ce.GpuStream(0)
g.signal(1, gs)
g.wait(1, timeout=T)


def cuda_child():
    assert g.value == 1                   # the page, mapped again in the child
    expect_fork_error("g.signal(2, gs)", g.signal, 2, gs)
    expect_fork_error("g.wait(5, gs)", g.wait, 5, gs)
    g.signal(2)


assert fork_and_wait(cuda_child) == 0
assert g.value == 2 and g.error is None
g.close()
print("parent: ok", flush=True)
