"""Finalizers never take a lock that library code may hold while it allocates: they hand their
work back through lock-free pending lists, which the next caller of the structure applies, so
nothing is lost and the statistics stay exact (DESIGN.md, "What may run inside a lock").

The deadlock tests run tests/scripts/finalizers_in_locks.py in a subprocess: a deadlocked
thread there would hold the lock forever and leave the collector marked as running, which no
later test of this process should inherit."""

from __future__ import annotations

import gc
import threading

import pytest
from helpers.subproc import run_script

from cudaevents import CudaEvent, EventPool, PoolStats
from cudaevents._core.lifetime import Quarantine

SCENARIOS = [
    "pool_stats", "pool_acquire", "pool_acquire_many", "pool_release", "pool_release_many", "pool_trim",
    "pool_clear", "pool_reset_stats", "pool_capped", "timer", "slab_acquire", "slab_stats",
    "quarantine_reclaim", "quarantine_add",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_finalizer_run_by_the_collector_inside_the_lock_does_not_deadlock(scenario):
    r = run_script("finalizers_in_locks.py", scenario, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"ok {scenario}", r


# -- the pending lists themselves, in this process (no collector inside a lock here) -------------
@pytest.fixture
def event_on(monkeypatch):
    import cudaevents._core.cuda_event as event_module

    monkeypatch.setattr(event_module, "resolve_device_index", lambda d: int(d))
    return lambda pool: CudaEvent(0, pool=pool)


def test_a_dropped_event_is_counted_back_by_the_next_call(fake, fake_pool, event_on):
    ev = event_on(fake_pool)
    (h, _, flags), = fake.created
    del ev  # the finalizer only queues the return
    assert len(fake_pool._returned) == 1
    assert fake_pool.stats() == PoolStats(creates=1, reuses=0, destroys=0, cached=1, live=0, high_water=1)
    assert not fake_pool._returned
    assert fake_pool.acquire(0, flags) == h  # reused (LIFO)


@pytest.mark.parametrize("op", ["acquire", "acquire_many", "release", "release_many", "trim", "reset_stats", "stats"])
def test_every_call_applies_the_finalizers_returns_first(fake, fake_pool, op):
    held = fake_pool.acquire(0, 2)
    dropped = [fake_pool.acquire(0, 2) for _ in range(3)]
    for h in dropped:
        fake_pool.release_deferred(0, 2, h)
    call = {
        "acquire": lambda: fake_pool.acquire(0, 2),
        "acquire_many": lambda: fake_pool.acquire_many(0, 2, 2),
        "release": lambda: fake_pool.release(0, 2, held),
        "release_many": lambda: fake_pool.release_many(0, 2, [held]),
        "trim": lambda: fake_pool.trim(1),
        "reset_stats": fake_pool.reset_stats,
        "stats": fake_pool.stats,
    }[op]
    got = call()
    assert not fake_pool._returned
    s = fake_pool.stats()
    if op == "reset_stats":  # the counts start over at the exact live count
        assert (s.live, s.high_water, s.cached, s.creates) == (1, 1, 3, 0)
        return
    assert s.live + s.cached == s.creates - s.destroys == 4 - len(fake.destroyed)
    if op == "acquire":
        assert got == dropped[-1] and s.reuses == 1  # served from the returns
    if op == "acquire_many":
        assert got == dropped[-2:] and s.reuses == 2
    if op == "trim":
        assert got == 2 and s.cached == 1


def test_returns_beyond_the_cap_are_destroyed_when_applied(fake):
    pool = EventPool(1, create=fake.create, destroy=fake.destroy)
    handles = pool.acquire_many(0, 0, 3)
    pool.release_many_deferred(0, 0, handles)
    assert fake.destroyed == [] and pool._returned
    assert pool.stats() == PoolStats(creates=3, reuses=0, destroys=2, cached=1, live=0, high_water=3)
    assert fake.destroyed == handles[1:]


def test_a_failing_destroy_of_a_return_does_not_fail_the_caller(fake):
    def destroy(handle):
        raise RuntimeError("destroy failed")

    pool = EventPool(0, create=fake.create, destroy=destroy)
    pool.release_deferred(0, 0, pool.acquire(0, 0))
    h = pool.acquire(0, 0)  # applies the return, whose destroy fails: swallowed, as in a finalizer
    assert pool.stats().destroys == 1 and pool.stats().live == 1
    with pytest.raises(RuntimeError, match="destroy failed"):  # its own destroys still raise
        pool.release(0, 0, h)


def test_a_return_of_a_foreign_key_is_ignored(fake_pool):
    fake_pool.release_deferred(3, 9, 12345)
    assert fake_pool.stats() == PoolStats(0, 0, 0, 0, 0, 0) and not fake_pool._returned


def test_returns_from_many_threads_are_all_counted(fake, fake_pool, event_on):
    def work():
        for _ in range(2000):
            event_on(fake_pool)  # dropped at once: its finalizer queues the return

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    s = fake_pool.stats()
    assert s.live == 0 and s.creates + s.reuses == 8000 and s.cached == s.creates == len(fake.created) <= 8


def test_events_of_a_collected_cycle_come_back_exactly(fake, fake_pool, event_on):
    events = [event_on(fake_pool) for _ in range(5)]
    box = {"events": events}
    box["box"] = box
    del events, box
    gc.collect()
    assert fake_pool.stats() == PoolStats(creates=5, reuses=0, destroys=0, cached=5, live=0, high_water=5)


# -- the quarantine's pending adds -------------------------------------------------------------------
class _Fence:
    def __init__(self, done=True):
        self.done, self.closed = done, False

    def query(self):
        return self.done

    def close(self):
        self.closed = True


def test_quarantine_adds_wait_in_a_pending_list_and_count_at_once():
    q = Quarantine()
    released = []
    fence = _Fence(done=False)
    q.add([fence], lambda: released.append(1))
    assert len(q) == 1 and q._entries == [] and released == []  # no lock taken
    assert [fences for fences, _ in q.entries()] == [[fence]]
    assert q.reclaim() == 0 and len(q) == 1  # not finished: kept
    fence.done = True
    assert q.reclaim() == 1 and released == [1] and fence.closed and len(q) == 0
    q.add([], lambda: released.append(2))  # no fences: released now
    assert released == [1, 2] and len(q) == 0


def test_quarantine_disown_sets_the_pending_adds_aside_too():
    q = Quarantine()
    q.add([_Fence()], print)
    q.reclaim()
    q.add([_Fence(done=False)], print)
    q.reclaim()
    q.add([_Fence()], print)
    assert len(q.disown()) == 2 and len(q) == 0


def test_slab_releases_are_lock_free_and_counted_by_the_next_call(fake_driver):
    from cudaevents._sync.counter_storage import _Slab

    slab = _Slab()
    slots = [slab.acquire() for _ in range(3)]
    for slot in slots:
        slab.release(slot)
    assert slab.in_use == 3 and len(slab._returned) == 3  # not applied yet
    assert slab.stats()["in_use"] == 0 and slab.stats()["free"] == 512
    slab.release(slab.acquire())
    assert slab.acquire() == slots[-1]  # the returns are reused, most recent first
    assert slab.stats()["in_use"] == 1 and fake_driver.calls["cuMemHostAlloc"] == 1
