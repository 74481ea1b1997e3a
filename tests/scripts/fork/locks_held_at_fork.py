"""Locks held by another parent thread at the fork do not hang the child.

Run by tests/reliability/test_fork.py::test_locks_held_by_parent_threads_at_fork_do_not_hang_the_child."""

import threading

from helpers.forking import expect_closed_by_fork, fork_and_wait

import cudaevents as ce
from cudaevents._sync import counter_storage

cs = ce.CpuStream()
w = ce.Worker()
counter_storage.slab_stats()                          # makes the slab (no memory without CUDA)
locks = [cs._runner.cond, w._cond, counter_storage._slab_lock, counter_storage._slab._lock, counter_storage._quarantine._lock]
holding, release = threading.Event(), threading.Event()


def hold():
    for lock in locks:
        lock.acquire()
    holding.set()
    release.wait(60)
    for lock in reversed(locks):
        lock.release()


holder = threading.Thread(target=hold, daemon=True)
holder.start()
assert holding.wait(30)


def child():
    expect_closed_by_fork("enqueue", cs.enqueue, print)
    expect_closed_by_fork("synchronize", cs.synchronize)
    cs.close()
    expect_closed_by_fork("add_task", w.add_task, print)
    expect_closed_by_fork("synchronize", w.synchronize)
    w.close()
    assert counter_storage.slab_stats()["bytes"] == 0
    assert counter_storage._quarantine.reclaim() == 0
    counter_storage._quarantine.add([], lambda: None)
    print("child: ok", flush=True)


try:
    code = fork_and_wait(child, timeout=30)
finally:
    release.set()
    holder.join(30)
assert code == 0
cs.enqueue(print, "parent: stream ok", flush=True)
cs.close(timeout=30)
w.close(timeout=30)
