"""Finalizers that the garbage collector runs inside the library's own critical sections.

The collector may run at any allocation, in the thread that holds a lock; a finalizer that
then takes the same (non-reentrant) lock deadlocks that thread, and every later user of the
structure with it. Here the structure's ``_lock`` is replaced by a :class:`CollectingLock`,
which takes the real lock and then runs ``gc.collect()`` while objects in reference cycles are
garbage whose finalizers give back into that very structure: pool handles (CudaEvent, Timer),
slab slots (a counter cell retired with no fences), quarantine entries. Automatic collection is
off, so the collections happen exactly there.

Usage: ``finalizers_in_locks.py SCENARIO`` (see ``SCENARIOS``). Prints ``ok SCENARIO`` and exits
0; a call that has not returned after ``DEADLINE`` seconds prints ``DEADLOCK ...`` and exits 3
at once (the stuck thread holds the lock forever, and the collector stays marked as running).
Uses only APIs older than the fix, so that the code before it fails by deadlocking, nothing
else. Run by tests/test_finalizers.py."""

from __future__ import annotations

import gc
import os
import sys
import threading

DEADLINE = 10.0


class CollectingLock:
    """A lock whose acquisition runs the garbage collector once the real lock is held, as an
    allocation inside the critical section may."""

    def __init__(self):
        self._real = threading.Lock()
        self.collections = 0

    def acquire(self, blocking=True, timeout=-1):
        ok = self._real.acquire(blocking, timeout)
        if ok:
            self.collections += 1
            gc.collect()  # returns at once when already collecting (a finalizer's own lock use)
        return ok

    def release(self):
        self._real.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def drop_in_cycle(*objs) -> None:
    """Make ``objs`` garbage that only the collector frees: held by a dict that holds itself."""
    box = {"objs": objs}
    box["box"] = box


def within_deadline(what: str, fn):
    """``fn()`` in another thread; exits the process with 3 if it is still running after
    DEADLINE seconds (deadlocked)."""
    result = []

    def run():
        result.append(fn())

    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    t.join(DEADLINE)
    if t.is_alive():
        print(f"DEADLOCK: {what} did not return within {DEADLINE:g} s: a finalizer run by the garbage "
              "collector inside its critical section took the same lock", flush=True)
        os._exit(3)
    if not result:
        print(f"FAILED: {what} raised (see above)", flush=True)
        os._exit(4)
    return result[0]


# -- the pool: CudaEvents and a Timer given back by their finalizers -----------------------------
def _pool(cap=None):
    from helpers.fakes import FakeHandles

    import cudaevents
    import cudaevents._core.cuda_event as event_module

    event_module.resolve_device_index = int  # no driver: device 0 is just an ordinal here
    fake = FakeHandles()
    return cudaevents.EventPool(cap, create=fake.create, destroy=fake.destroy), fake


POOL_OPS = {  # what each op does, and (live, cached, creates, reuses, destroys) afterwards
    "stats": (lambda pool, kept: pool.stats(), (1, 3, 4, 0, 0)),
    "acquire": (lambda pool, kept: pool.acquire(0, 2), (2, 2, 4, 1, 0)),
    "acquire_many": (lambda pool, kept: pool.acquire_many(0, 2, 2), (3, 1, 4, 2, 0)),
    "release": (lambda pool, kept: pool.release(0, 2, kept), (0, 4, 4, 0, 0)),
    "release_many": (lambda pool, kept: pool.release_many(0, 2, [kept]), (0, 4, 4, 0, 0)),
    "trim": (lambda pool, kept: pool.trim(0), (1, 0, 4, 0, 3)),
    "clear": (lambda pool, kept: pool.clear(), (1, 0, 0, 0, 0)),
    "reset_stats": (lambda pool, kept: pool.reset_stats(), (1, 3, 0, 0, 0)),
}


def pool_op(op: str) -> None:
    """Three CudaEvents (flags 2: no timing) of a pool dropped in a cycle, collected inside
    ``op``; one more handle of their key is held (``kept``)."""
    from cudaevents import CudaEvent

    pool, fake = _pool()
    drop_in_cycle(*[CudaEvent(0, pool=pool) for _ in range(3)])
    kept = pool.acquire(0, 2)
    assert pool.stats().live == 4
    pool._lock = lock = CollectingLock()
    fn, expected = POOL_OPS[op]
    within_deadline(f"EventPool.{op}()", lambda: fn(pool, kept))
    assert lock.collections >= 1
    s = within_deadline("EventPool.stats()", pool.stats)
    got = (s.live, s.cached, s.creates, s.reuses, s.destroys)
    assert got == expected, f"{op}: (live, cached, creates, reuses, destroys) = {got}, expected {expected}"
    assert len(fake.destroyed) == (3 if op in ("trim", "clear") else 0)


def pool_capped() -> None:
    """With a cap of 1: the finalizers' returns beyond it are destroyed, and counted, once applied."""
    from cudaevents import CudaEvent

    pool, fake = _pool(cap=1)
    drop_in_cycle(*[CudaEvent(0, pool=pool) for _ in range(3)])
    pool._lock = CollectingLock()
    within_deadline("EventPool.stats()", pool.stats)
    s = within_deadline("EventPool.stats()", pool.stats)
    assert (s.live, s.cached, s.creates, s.destroys) == (0, 1, 3, 2), s
    assert len(fake.destroyed) == 2


def timer() -> None:
    """A Timer dropped in a cycle with its regions still pending and spare events kept: its
    finalizer gives every pair back (release_many before the fix) while stats() holds the lock."""
    from helpers.fake_driver import install
    from helpers.fakes import fake_stream

    from cudaevents import Timer

    gpu = install()
    pool, _ = _pool()
    s = fake_stream(0x10)
    t = Timer(pool=pool, harvest_every=1000, nvtx=False)
    for _ in range(4):
        with t.region("done", s):
            pass
    gpu.run(s)
    t.harvest()  # four pairs kept as spares
    for _ in range(3):
        with t.region("pending", s):  # never run: still pending when the timer goes
            pass
    assert pool.stats().live == 1 + 2 * 4  # the reference event and the regions' pairs
    t.cycle = t
    del t
    pool._lock = CollectingLock()
    within_deadline("EventPool.stats()", pool.stats)
    st = within_deadline("EventPool.stats()", pool.stats)
    assert st.live == 0 and st.cached == st.creates == 9, st


# -- the slab: counter slots given back by a finalizer ----------------------------------------------
class RetiresItsCell:
    """Stands for a counter whose finalizer retires its cell with no stream to fence: the slot
    goes straight back to the slab (``_Slab.release``), from inside the collector."""

    def __init__(self, cell):
        self.cell, self.cycle = cell, self

    def __del__(self):
        self.cell.retire([])


def _slab_with_garbage(n: int):
    from helpers.fake_driver import install

    from cudaevents._sync import counter_storage

    install()
    owners = [RetiresItsCell(counter_storage.MemCell(0, 64)) for _ in range(n)]
    del owners
    slab = counter_storage._get_slab()
    assert slab.stats()["in_use"] == n
    slab._lock = CollectingLock()
    return counter_storage, slab


def slab_acquire() -> None:
    counter_storage, slab = _slab_with_garbage(3)
    within_deadline("_Slab.acquire()", lambda: counter_storage.MemCell(0, 64))  # a new counter's slot
    st = within_deadline("slab_stats()", counter_storage.slab_stats)
    assert (st["in_use"], st["free"], st["bytes"]) == (1, 511, 4096), st


def slab_stats() -> None:
    counter_storage, slab = _slab_with_garbage(3)
    within_deadline("slab_stats()", counter_storage.slab_stats)
    st = within_deadline("slab_stats()", counter_storage.slab_stats)
    assert (st["in_use"], st["free"], st["bytes"]) == (0, 512, 4096), st


# -- the quarantine: entries added by a finalizer ------------------------------------------------------
class Fence:
    """A fence event that has completed."""

    closed = 0

    def query(self):
        return True

    def close(self):
        Fence.closed += 1


released = []


class QuarantinesOnDrop:
    """Stands for a counter whose finalizer hands its slot to the quarantine behind a fence."""

    def __init__(self, n):
        self.n, self.cycle = n, self

    def __del__(self):
        from cudaevents._sync import counter_storage

        counter_storage._quarantine.add([Fence()], lambda n=self.n: released.append(n))


def _quarantine_with_garbage(n: int):
    from cudaevents._sync import counter_storage

    q = counter_storage._quarantine
    owners = [QuarantinesOnDrop(i) for i in range(n)]
    del owners
    q._lock = CollectingLock()
    return q


def quarantine_reclaim() -> None:
    q = _quarantine_with_garbage(3)
    within_deadline("Quarantine.reclaim()", q.reclaim)
    within_deadline("Quarantine.reclaim()", q.reclaim)  # before the fix, finalizers' adds could land late
    assert sorted(released) == [0, 1, 2] and Fence.closed == 3 and len(q) == 0, (released, len(q))


def quarantine_add() -> None:
    q = _quarantine_with_garbage(3)
    within_deadline("Quarantine.add()", lambda: q.add([Fence()], lambda: released.append("mine")))
    assert len(q) in (1, 4)  # 4 if the add collected (before the fix, it took the lock)
    within_deadline("Quarantine.reclaim()", q.reclaim)
    assert sorted(map(str, released)) == ["0", "1", "2", "mine"] and len(q) == 0, (released, len(q))


SCENARIOS = {
    **{f"pool_{op}": (lambda op=op: pool_op(op)) for op in POOL_OPS},
    "pool_capped": pool_capped,
    "timer": timer,
    "slab_acquire": slab_acquire,
    "slab_stats": slab_stats,
    "quarantine_reclaim": quarantine_reclaim,
    "quarantine_add": quarantine_add,
}

if __name__ == "__main__":
    gc.disable()  # collections happen where CollectingLock runs them, nowhere else
    name = sys.argv[1]
    SCENARIOS[name]()
    print("ok", name, flush=True)
