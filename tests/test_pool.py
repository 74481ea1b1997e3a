"""EventPool logic and statistics, with a stand-in handle factory (no GPU needed)."""

from __future__ import annotations

import os
import threading

import pytest
from helpers.subproc import run_code, run_script

import cudaevents
from cudaevents import EventPool, PoolStats
from cudaevents._core import driver


def test_miss_then_hit(fake, fake_pool):
    h = fake_pool.acquire(0, 2)
    assert fake.created == [(h, 0, 2)]
    assert fake_pool.stats() == PoolStats(creates=1, reuses=0, destroys=0, cached=0, live=1, high_water=1)
    fake_pool.release(0, 2, h)
    assert fake_pool.stats() == PoolStats(creates=1, reuses=0, destroys=0, cached=1, live=0, high_water=1)
    assert fake_pool.acquire(0, 2) == h
    assert fake_pool.stats() == PoolStats(creates=1, reuses=1, destroys=0, cached=0, live=1, high_water=1)


def test_lifo_order(fake_pool):
    a, b, c = (fake_pool.acquire(0, 0) for _ in range(3))
    for h in (a, b, c):
        fake_pool.release(0, 0, h)
    assert [fake_pool.acquire(0, 0) for _ in range(3)] == [c, b, a]


def test_keys_are_separate(fake, fake_pool):
    h00 = fake_pool.acquire(0, 0)
    fake_pool.release(0, 0, h00)
    h02 = fake_pool.acquire(0, 2)
    h10 = fake_pool.acquire(1, 0)
    assert len({h00, h02, h10}) == 3
    assert [c[1:] for c in fake.created] == [(0, 0), (0, 2), (1, 0)]
    assert fake_pool.stats(0) == PoolStats(creates=2, reuses=0, destroys=0, cached=1, live=1, high_water=1)
    assert fake_pool.stats(1) == PoolStats(creates=1, reuses=0, destroys=0, cached=0, live=1, high_water=1)
    assert fake_pool.stats(7) == PoolStats(0, 0, 0, 0, 0, 0)
    assert fake_pool.stats().live == 2


def test_high_water_and_reset(fake_pool):
    handles = [fake_pool.acquire(0, 0) for _ in range(5)]
    for h in handles[:3]:
        fake_pool.release(0, 0, h)
    s = fake_pool.stats()
    assert (s.live, s.high_water, s.cached) == (2, 5, 3)
    fake_pool.reset_stats()
    s = fake_pool.stats()
    assert (s.creates, s.reuses, s.destroys, s.live, s.high_water, s.cached) == (0, 0, 0, 2, 2, 3)
    fake_pool.acquire(0, 0)
    assert fake_pool.stats() == PoolStats(creates=0, reuses=1, destroys=0, cached=2, live=3, high_water=3)


def test_cap_destroys_beyond_it(fake):
    pool = EventPool(2, create=fake.create, destroy=fake.destroy)
    handles = [pool.acquire(0, 0) for _ in range(3)]
    for h in handles:
        pool.release(0, 0, h)
    assert fake.destroyed == [handles[2]]
    assert pool.stats() == PoolStats(creates=3, reuses=0, destroys=1, cached=2, live=0, high_water=3)
    assert pool.max_cached == 2


def test_cap_zero_switches_recycling_off(fake):
    pool = EventPool(0, create=fake.create, destroy=fake.destroy)
    for _ in range(4):
        pool.release(0, 0, pool.acquire(0, 0))
    assert pool.stats() == PoolStats(creates=4, reuses=0, destroys=4, cached=0, live=0, high_water=1)
    assert len(fake.destroyed) == 4


def test_trim_keeps_the_newest(fake, fake_pool):
    handles = [fake_pool.acquire(0, 0) for _ in range(4)] + [fake_pool.acquire(1, 0)]
    for h in handles[:4]:
        fake_pool.release(0, 0, h)
    fake_pool.release(1, 0, handles[4])
    assert fake_pool.trim(keep=1) == 3
    assert fake.destroyed == handles[:3]
    assert fake_pool.stats().cached == 2
    assert fake_pool.acquire(0, 0) == handles[3]
    assert fake_pool.trim() == 1
    assert fake_pool.stats().destroys == 4


@pytest.mark.parametrize("keep", [-1, 1.5, True, "2"])
def test_trim_rejects_bad_keep(fake_pool, keep):
    with pytest.raises(ValueError, match="keep must be an int >= 0"):
        fake_pool.trim(keep)


def test_clear_destroys_cached_and_resets_counts(fake, fake_pool):
    live = fake_pool.acquire(0, 0)
    for h in [fake_pool.acquire(0, 0) for _ in range(3)]:
        fake_pool.release(0, 0, h)
    fake_pool.clear()
    assert len(fake.destroyed) == 3
    assert fake_pool.stats() == PoolStats(creates=0, reuses=0, destroys=0, cached=0, live=1, high_water=1)
    fake_pool.release(0, 0, live)
    assert fake_pool.stats().cached == 1


def test_release_of_a_foreign_key_is_refused(fake_pool):
    with pytest.raises(ValueError, match="never gave out"):
        fake_pool.release(3, 0, 12345)


@pytest.mark.parametrize("cap,exc,msg", [(-1, ValueError, ">= 0"), ("3", TypeError, "max_cached"), (True, TypeError, "max_cached")])
def test_bad_cap(cap, exc, msg):
    with pytest.raises(exc, match=msg):
        EventPool(cap)


def test_acquire_many_and_release_many(fake, fake_pool):
    first = fake_pool.acquire_many(0, 0, 3)  # all new
    assert len(set(first)) == 3 and len(fake.created) == 3
    fake_pool.release_many(0, 0, first[:2])
    second = fake_pool.acquire_many(0, 0, 4)  # the 2 cached ones, the newest first, and 2 new
    assert set(second[:2]) == set(first[:2])
    assert len(fake.created) == 5
    assert fake_pool.stats() == PoolStats(creates=5, reuses=2, destroys=0, cached=0, live=5, high_water=5)
    fake_pool.release_many(0, 0, [])
    fake_pool.release_many(0, 0, second + [first[2]])
    assert fake_pool.stats() == PoolStats(creates=5, reuses=2, destroys=0, cached=5, live=0, high_water=5)
    with pytest.raises(ValueError, match="never gave out"):
        fake_pool.release_many(3, 0, [1])


def test_release_many_respects_the_cap(fake):
    pool = EventPool(2, create=fake.create, destroy=fake.destroy)
    handles = pool.acquire_many(0, 0, 5)
    pool.release(0, 0, handles[0])
    pool.release_many(0, 0, handles[1:])
    assert sorted(fake.destroyed) == sorted(handles[2:])
    assert pool.stats() == PoolStats(creates=5, reuses=0, destroys=3, cached=2, live=0, high_water=5)


def test_acquire_many_gives_back_what_it_took_when_a_create_fails(fake, fake_pool):
    fake_pool.release(0, 0, fake_pool.acquire(0, 0))
    fake.fail_next_create = True
    with pytest.raises(RuntimeError, match="create failed"):
        fake_pool.acquire_many(0, 0, 3)
    s = fake_pool.stats()
    assert (s.live, s.cached, s.creates, s.reuses) == (0, 1, 1, 0)


def test_create_and_destroy_go_together(fake):
    with pytest.raises(TypeError, match="both create= and destroy="):
        EventPool(create=fake.create)


def test_failed_create_counts_nothing(fake, fake_pool):
    fake.fail_next_create = True
    with pytest.raises(RuntimeError, match="create failed"):
        fake_pool.acquire(0, 0)
    assert fake_pool.stats() == PoolStats(0, 0, 0, 0, 0, 0)
    fake_pool.acquire(0, 0)
    assert fake_pool.stats().creates == 1


def test_no_destroys_during_interpreter_exit(fake, monkeypatch):
    pool = EventPool(0, create=fake.create, destroy=fake.destroy)
    h = pool.acquire(0, 0)
    monkeypatch.setattr(driver.state, "exiting", True)
    pool.release(0, 0, h)
    assert pool.trim() == 0
    assert fake.destroyed == []


@pytest.mark.parametrize("nthreads,cap", [(16, None), (16, 4), (8, 0)])
def test_many_threads_exact_stats_and_single_owner(fake, nthreads, cap):
    pool = EventPool(cap, create=fake.create, destroy=fake.destroy)
    owners: dict[int, int] = {}
    owners_lock = threading.Lock()
    errors: list[str] = []
    cycles = 3000
    barrier = threading.Barrier(nthreads)

    def work(tid: int) -> None:
        barrier.wait(timeout=30)
        for i in range(cycles):
            device, flags = i % 2, (tid + i) % 3
            n = 1 + i % 3
            batch = i % 4 == 0  # some cycles take and give back their handles at once
            held = pool.acquire_many(device, flags, n) if batch else [pool.acquire(device, flags) for _ in range(n)]
            with owners_lock:
                for h in held:
                    if h in owners:
                        errors.append(f"handle {h} held by {owners[h]} and {tid}")
                    owners[h] = tid
            with owners_lock:
                for h in held:
                    del owners[h]
            if batch:
                pool.release_many(device, flags, held)
            else:
                for h in held:
                    pool.release(device, flags, h)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    assert errors == []
    acquires = nthreads * sum(1 + i % 3 for i in range(cycles))
    s = pool.stats()
    assert s.live == 0
    assert s.creates + s.reuses == acquires
    assert s.creates == len(fake.created)
    assert s.destroys == len(fake.destroyed)
    assert s.cached == s.creates - s.destroys
    assert s.high_water <= nthreads * 3
    if cap is not None:
        assert s.cached <= cap * 6  # 2 devices x 3 flag values
    per_device = [pool.stats(d) for d in (0, 1)]
    assert sum(p.creates for p in per_device) == s.creates
    assert sum(p.reuses for p in per_device) == s.reuses


def test_default_pool_is_shared():
    assert cudaevents.default_pool() is cudaevents.default_pool()


def test_default_pool_cap_from_environment():
    r = run_code("import cudaevents; print(cudaevents.default_pool().max_cached)", env={"CUDAEVENTS_POOL_MAX_CACHED": "3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"


@pytest.mark.parametrize("value,msg", [("many", "is not an integer"), ("-2", "is below 0")])
def test_default_pool_cap_rejects_bad_values(value, msg):
    r = run_code("import cudaevents; cudaevents.default_pool()", env={"CUDAEVENTS_POOL_MAX_CACHED": value})
    assert r.returncode == 1
    assert "CUDAEVENTS_POOL_MAX_CACHED" in r.stderr and msg in r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_lock_held_at_fork_is_fresh_in_the_child():
    done = run_script("pool_lock_held_at_fork.py", timeout=60)
    assert done.returncode == 0 and "child exit 0" in done.stdout, (done.stdout, done.stderr)


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_acquire_many_needs_a_positive_count(fake_pool, n):
    with pytest.raises(ValueError, match="n >= 1"):
        fake_pool.acquire_many(0, 0, n)
    assert fake_pool.stats() == PoolStats(0, 0, 0, 0, 0, 0)
