"""A (simulated) CUDA parent's GPU counters are refused in the forked child and keep their values.

Run by tests/reliability/test_fork.py::test_fork_counter_cells_refused_and_parent_counter_untouched."""

import ctypes
import gc
import os

from helpers.fake_driver import install
from helpers.forking import expect_fork_error, fork_and_wait

import cudaevents as ce
from cudaevents._core import driver
from cudaevents._sync import counter_storage

fake = install(keeps_up=True)  # a simulated driver, initialized: the parent has used CUDA

s = ce.GpuStream(0)
a = ce.AtomicEvent(0)
assert a.backend == "mem64", a.backend
a.signal(1, s)
a.wait(1, timeout=30)
b = ce.AtomicEvent(0)
b.close()                                    # its slot goes back to the slab's free list
assert counter_storage.slab_stats()["free"] > 0
dropped = ce.AtomicEvent(0)
dropped.signal(7)
os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = "hostfn"
h = ce.AtomicEvent(0)
del os.environ["CUDAEVENTS_ATOMIC_BACKEND"]
assert h.backend == "hostfn"
h.signal(1)
word = ctypes.c_uint64.from_address(a._cell._slot[0])
raw = a._cell._slot[0]
assert word.value == 1


def child():
    global dropped
    assert driver.state.forked and counter_storage._slab is None
    cell = a._cell
    expect_fork_error("cell.read()", cell.read)
    expect_fork_error("cell.store()", cell.store, 5)
    expect_fork_error("cell.gpu_signal()", cell.gpu_signal, s._handle, 5)
    expect_fork_error("cell.gpu_wait()", cell.gpu_wait, s._handle, 5)
    cell.release_waiters()                   # would store limit - 1: does nothing
    cell.retire([])                          # would free the slot: does nothing
    expect_fork_error("a.value", lambda: a.value)
    expect_fork_error("a.signal(2)", a.signal, 2)
    expect_fork_error("a.wait(5, s)", a.wait, 5, s)
    expect_fork_error("a.is_signaled(1)", a.is_signaled, 1)
    expect_fork_error("h.value", lambda: h.value)
    expect_fork_error("h cell store", h._cell.store, 9)
    expect_fork_error("h cell gpu_signal", h._cell.gpu_signal, s._handle, 9)
    h._cell.release_waiters()
    h._cell.retire([])
    expect_fork_error("new mem64 cell", counter_storage.make_cell, "mem64", 0)
    expect_fork_error("new mem32 cell", counter_storage.make_cell, "mem32", 0)
    expect_fork_error("AtomicEvent(0)", ce.AtomicEvent, 0)
    assert counter_storage.slab_stats()["bytes"] == 0
    assert counter_storage._quarantine.reclaim() == 0
    a.close()
    h.close()
    del dropped
    gc.collect()
    host = ce.AtomicEvent()
    assert host.backend == "host"
    host.signal(3)
    host.wait(3, timeout=5)
    host.close()
    assert ctypes.c_uint64.from_address(raw).value == 1
    assert fake.child_calls == [], fake.child_calls
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0
assert word.value == 1 and a.value == 1, word.value
assert dropped.value == 7 and h.value == 1
a.signal(2, s)
a.wait(2, timeout=30)
c = ce.AtomicEvent(0)                        # the parent's slab still serves slots
c.signal(1, s)
c.wait(1, timeout=30)
for e in (a, c, h, dropped):
    e.close()
print("parent: ok", flush=True)
