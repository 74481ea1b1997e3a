"""Churn: many threads acquiring, recording, waiting on and releasing pooled events, and a Timer
with 100,000 regions. Nothing may leak, no handle may have two owners at once, the statistics
must be exact, and the pool may hold no more handles than the peak concurrent demand (and no
more cached ones than its cap).

``CUDAEVENTS_CHURN_CYCLES`` (default 10,000) sets the cycles per thread; the GPU variants
use real CUDA events, the CI variants the stand-in handles of ``fake_pool``.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
import tracemalloc

import pytest
from helpers.fakes import fake_stream

from cudaevents import CudaError, CudaEvent, EventPool, GpuStream, Timer, device_count
from cudaevents._core import driver

pytestmark = pytest.mark.timeout(900)

CYCLES = int(os.environ.get("CUDAEVENTS_CHURN_CYCLES", "10000"))
REGIONS = 100_000
THREADS = [1, 8, 32]

# CUevent_flags: timing (0), disable-timing (2), blocking-sync (1), interprocess (4, needs 2)
FLAGS = {"timing": 0, "no-timing": 2, "blocking-sync": 1 | 2, "interprocess": 4 | 2}


class Ledger:
    """Who holds which handle: every acquisition tags the handle with its owner and every
    release removes the tag, under one lock; a handle tagged twice, released by someone
    else, or handed out after it was destroyed is a violation. Also tracks the demand per
    pool key (handles asked for and not yet given back, counted from before acquire() until
    after release() returns) and its peaks: a key's handles (live or cached) never outnumber
    the peak demand for that key, since the pool creates one only when that key's free list
    is empty."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: dict = {}
        self.violations: list[str] = []
        self.acquisitions = 0
        self.demand = 0  # over all keys
        self.peak = 0
        self.key_demand: dict = {}
        self.key_peak: dict = {}
        self.destroyed: set = set()

    @property
    def bound(self) -> int:
        """How many handles the pool may hold at most: the per-key peaks, summed."""
        return sum(self.key_peak.values())

    def want(self, key, n: int = 1) -> None:
        with self.lock:
            self.demand += n
            if self.demand > self.peak:
                self.peak = self.demand
            d = self.key_demand[key] = self.key_demand.get(key, 0) + n
            if d > self.key_peak.get(key, 0):
                self.key_peak[key] = d

    def took(self, handle, who) -> None:
        key = int(handle)
        with self.lock:
            self.acquisitions += 1
            if key in self.owner:
                self.violations.append(f"{key:#x} given to {who} while {self.owner[key]} holds it")
            if key in self.destroyed:
                self.violations.append(f"{key:#x} given to {who} after it was destroyed")
            self.owner[key] = who

    def giving(self, handle, who) -> None:
        key = int(handle)
        with self.lock:
            holder = self.owner.pop(key, None)
            if holder != who:
                self.violations.append(f"{key:#x} released by {who} but held by {holder}")

    def gave(self, key, n: int = 1) -> None:
        with self.lock:
            self.demand -= n
            self.key_demand[key] -= n


def run_threads(n: int, target, timeout: float = 600) -> list:
    """Run ``target(i)`` on ``n`` threads at once (started together); returns their errors."""
    errors = []
    start = threading.Barrier(n)

    def body(i):
        try:
            start.wait(30)
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a churn thread hung"
    return errors


class Monitor:
    """Samples pool.stats() while the threads churn and checks the invariants that hold at
    every instant: the handles the pool knows (live + cached) are exactly creates - destroys,
    no more than the peak demand so far (per key, summed), and the cached ones within the cap."""

    def __init__(self, pool: EventPool, ledger: Ledger, cap_total: int | None):
        self.pool, self.ledger, self.cap_total = pool, ledger, cap_total
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            s = self.pool.stats()
            peak = self.ledger.bound  # read after the snapshot: never below the bound at its time
            self.samples += 1
            held = s.live + s.cached
            if held != s.creates - s.destroys:
                self.problems.append(f"live+cached {held} != creates-destroys {s.creates - s.destroys}: {s}")
            if held > peak:
                self.problems.append(f"pool holds {held} handles, peak demand was {peak}: {s}")
            if self.cap_total is not None and s.cached > self.cap_total:
                self.problems.append(f"{s.cached} cached, cap {self.cap_total}: {s}")
            time.sleep(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def check_final(pool: EventPool, ledger: Ledger, cap_total: int | None, created: int | None = None,
                destroyed: int | None = None) -> None:
    s = pool.stats()
    assert ledger.violations == [], ledger.violations[:10]
    assert ledger.owner == {} and ledger.demand == 0
    assert s.live == 0, s
    assert s.creates + s.reuses == ledger.acquisitions, s
    assert s.cached == s.creates - s.destroys, s
    assert s.creates - s.destroys <= ledger.bound, (s, ledger.key_peak)
    assert s.high_water <= ledger.peak, (s, ledger.peak)
    if cap_total is not None:
        assert s.cached <= cap_total, s
    if created is not None:
        assert s.creates == created and s.destroys == destroyed, (s, created, destroyed)


# -- CI: stand-in handles ----------------------------------------------------------------------
KEYS = [(0, FLAGS["no-timing"]), (0, FLAGS["timing"]), (1, FLAGS["no-timing"]), (0, FLAGS["blocking-sync"])]


def churn_fake(pool: EventPool, ledger: Ledger, fake, nthreads: int, cycles: int) -> list:
    recorded: dict[int, tuple] = {}  # handle -> (owner, cycle): a "record" that a second owner would clobber

    def work(i):
        rng = random.Random(i)
        who = f"thread-{i}"
        for cycle in range(cycles):
            device, flags = KEYS[rng.randrange(len(KEYS))]
            pair = cycle % 4 == 3  # every fourth cycle a timing pair, as the Timer takes them
            n = 2 if pair else 1
            key = (device, flags)
            ledger.want(key, n)
            handles = pool.acquire_many(device, flags, 2) if pair else [pool.acquire(device, flags)]
            for h in handles:
                ledger.took(h, who)
                recorded[h] = (who, cycle)  # "record"
            for h in handles:  # "wait": nobody else recorded on it meanwhile
                if recorded.get(h) != (who, cycle):
                    ledger.violations.append(f"{h:#x} recorded by {recorded.get(h)} during {who}'s cycle {cycle}")
            for h in handles:
                ledger.giving(h, who)
            if pair:
                pool.release_many(device, flags, handles)
            else:
                pool.release(device, flags, handles[0])
            ledger.gave(key, n)

    return run_threads(nthreads, work)


@pytest.mark.parametrize("cap", [None, 0, 3], ids=["no-cap", "cap-0", "cap-3"])
@pytest.mark.parametrize("nthreads", THREADS)
def test_fake_pool_churn(fake, nthreads, cap):
    ledger = Ledger()

    def destroy(handle):
        with ledger.lock:
            if handle in ledger.destroyed:
                ledger.violations.append(f"{handle:#x} destroyed twice")
            ledger.destroyed.add(handle)
            if handle in ledger.owner:
                ledger.violations.append(f"{handle:#x} destroyed while {ledger.owner[handle]} holds it")
        fake.destroy(handle)

    pool = EventPool(cap, create=fake.create, destroy=destroy)
    cap_total = None if cap is None else cap * len(KEYS)
    with Monitor(pool, ledger, cap_total) as mon:
        errors = churn_fake(pool, ledger, fake, nthreads, CYCLES)
    assert errors == []
    assert mon.problems == [], mon.problems[:10]
    assert ledger.acquisitions == nthreads * (CYCLES + CYCLES // 4)
    check_final(pool, ledger, cap_total, created=len(fake.created), destroyed=len(fake.destroyed))
    if cap is None:
        assert pool.stats().destroys == 0
    if cap == 0:
        assert pool.stats().cached == 0 and pool.stats().destroys == pool.stats().creates
    # without a cap every handle is recycled: never more created than the peak demand
    if cap is None:
        assert pool.stats().creates <= ledger.bound
    n = pool.trim(0)
    assert pool.stats().cached == 0 and n >= 0
    assert len(set(fake.destroyed)) == len(fake.destroyed) == pool.stats().destroys


def test_fake_pool_churn_with_a_failing_create(fake):
    """Creation failing now and then (driver errors under pressure) loses no accounting: an
    acquire_many() that fails half way hands back what it took, counting the cached handles
    it took as no reuse and the handles it created as creations (they exist, now cached)."""
    mine = threading.local()

    def create(device, flags):
        handle = fake.create(device, flags)
        mine.created.append(handle)  # handles created by the calling thread's current acquire
        return handle

    pool = EventPool(2, create=create, destroy=fake.destroy)
    ledger = Ledger()
    failures = []
    created_then_returned = []

    def work(i):
        who = f"thread-{i}"
        for cycle in range(CYCLES // 4):
            if cycle % 97 == 0:
                with fake.lock:
                    fake.fail_next_create = True
            ledger.want((0, 2), 2)
            mine.created = []
            try:
                handles = pool.acquire_many(0, 2, 2)
            except RuntimeError:
                failures.append(1)
                created_then_returned.extend(mine.created)
                ledger.gave((0, 2), 2)
                continue
            for h in handles:
                ledger.took(h, who)
            for h in handles:
                ledger.giving(h, who)
            pool.release_many(0, 2, handles)
            ledger.gave((0, 2), 2)

    assert run_threads(8, work) == []
    assert failures  # some creations did fail
    ledger.acquisitions += len(created_then_returned)  # created (and counted so), never handed out
    check_final(pool, ledger, 2, created=len(fake.created), destroyed=len(fake.destroyed))


def timer_churn(timer: Timer, stream, regions: int, work=None) -> tuple[int, int]:
    """Time ``regions`` regions; returns (bytes traced before, after results()) and checks the
    per-region growth."""
    for _ in range(1000):  # warm-up: the pool, the spare lists, the sample list's first growth
        with timer.region("warm", stream):
            pass
    timer.synchronize(timeout=60)
    timer.reset()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(regions):
            with timer.region("r", stream):
                if work is not None and i % 100 == 0:
                    work()
        results = timer.results(timeout=120)
        assert len(results) == regions
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_region = (after - before) / regions
    # a Sample (named tuple of 5) and its two floats are about 150 bytes; 1 KiB is generous
    assert per_region < 1024, f"{per_region:.0f} bytes per region"
    return before, after


def test_timer_with_100000_regions_on_fake_gpu(fake, fake_pool, fake_driver):
    fake_driver.keeps_up = True  # records complete at once: a GPU that keeps up
    stream = fake_stream(0x10)
    timer = Timer(pool=fake_pool, nvtx=False)
    timer_churn(timer, stream, REGIONS)
    s = fake_pool.stats()
    assert s.live == 1, s  # the per-device reference event only
    assert s.creates <= 4 * 64 + 1, s  # bounded by regions in flight, not by regions
    del timer
    gc.collect()
    s = fake_pool.stats()
    assert s.live == 0 and s.cached == s.creates - s.destroys, s


# -- GPU: real CUDA events ----------------------------------------------------------------------
def churn_gpu(pool: EventPool, ledger: Ledger, nthreads: int, cycles: int, devices: list[int], flags: int,
              invalid: list) -> list:
    """Each thread: a stream pair per device; per cycle an event (bound at creation, or at its
    first record every other cycle) is recorded on one stream of a random device, waited on by
    the other stream (device side) and, now and then, on the host; then closed."""
    kwargs = {"timing": not flags & 2, "blocking_sync": bool(flags & 1), "interprocess": bool(flags & 4)}

    def work(i):
        rng = random.Random(i)
        who = f"thread-{i}"
        streams = {d: (GpuStream(d), GpuStream(d)) for d in devices}
        try:
            for cycle in range(cycles):
                d = devices[rng.randrange(len(devices))] if len(devices) > 1 else devices[0]
                s, other = streams[d]
                waiter = streams[devices[(devices.index(d) + 1) % len(devices)]][1]  # another device if any
                key = (d, flags)
                ledger.want(key)
                ev = CudaEvent(d if cycle % 2 else None, pool=pool, **kwargs)
                try:
                    ev.record(s)
                    ledger.took(ev.handle, who)
                    try:
                        ev.wait(other)
                        ev.wait(waiter)
                        if cycle % 64 == 63:
                            ev.synchronize(timeout=30)
                            assert ev.query()
                    finally:
                        ledger.giving(ev.handle, who)
                except CudaError as exc:
                    invalid.append(exc)
                finally:
                    ev.close()
                    ledger.gave(key)
                if cycle % 256 == 255:
                    for pair in streams.values():
                        for x in pair:
                            x.synchronize(timeout=60)
        finally:
            for pair in streams.values():
                for x in pair:
                    x.synchronize(timeout=60)
                    x.close()

    return run_threads(nthreads, work)


@pytest.mark.gpu
@pytest.mark.parametrize("flags", list(FLAGS), ids=list(FLAGS))
@pytest.mark.parametrize("nthreads", THREADS)
def test_gpu_event_churn(pool, nthreads, flags):
    ledger, invalid = Ledger(), []
    with Monitor(pool, ledger, None) as mon:
        errors = churn_gpu(pool, ledger, nthreads, CYCLES, [0], FLAGS[flags], invalid)
    assert errors == [] and invalid == [], (errors[:3], invalid[:3])
    assert mon.problems == [], mon.problems[:10]
    assert ledger.acquisitions == nthreads * CYCLES
    check_final(pool, ledger, None)
    s = pool.stats()
    assert s.destroys == 0 and s.creates <= nthreads, s  # recycled: one handle per thread at most
    assert ledger.bound <= nthreads


@pytest.mark.gpu
@pytest.mark.parametrize("nthreads", [8, 32])
def test_gpu_event_churn_with_a_cap(nthreads):
    pool = EventPool(2)
    try:
        ledger, invalid = Ledger(), []
        with Monitor(pool, ledger, 2) as mon:
            errors = churn_gpu(pool, ledger, nthreads, CYCLES // 2, [0], FLAGS["no-timing"], invalid)
        assert errors == [] and invalid == []
        assert mon.problems == [], mon.problems[:10]
        check_final(pool, ledger, 2)
    finally:
        pool.clear()


@pytest.mark.multigpu
@pytest.mark.parametrize("flags", ["no-timing", "timing", "blocking-sync"])
@pytest.mark.parametrize("nthreads", THREADS)
def test_multigpu_event_churn_with_random_devices(pool, nthreads, flags):
    """Events of random devices recorded on their device's streams and waited on by another
    device's stream: no invalid-handle (or any other) CudaError, ever."""
    devices = list(range(device_count()))
    ledger, invalid = Ledger(), []
    with Monitor(pool, ledger, None) as mon:
        errors = churn_gpu(pool, ledger, nthreads, CYCLES, devices, FLAGS[flags], invalid)
    assert invalid == [], f"{len(invalid)} CudaErrors, e.g. {invalid[:3]}"
    assert errors == []
    assert mon.problems == [], mon.problems[:10]
    check_final(pool, ledger, None)
    for d in devices:
        s = pool.stats(d)
        assert s.live == 0 and s.creates <= nthreads, (d, s)


@pytest.mark.gpu
def test_timer_with_100000_regions_on_gpu(pool):
    """Empty regions, with a tiny memset in one of every hundred: after results() only the
    per-device reference event is live, after the Timer goes none is, and the memory grew by
    its samples only."""
    stream = GpuStream(0)
    buf = driver.mem_alloc(0, 4096)
    try:
        timer = Timer(pool=pool, nvtx=False)
        timer_churn(timer, stream, REGIONS,
                    work=lambda: driver.memset_d32_async(buf, 7, 16, stream._handle))
        s = pool.stats()
        assert s.live == 1, s  # the reference event only
        assert s.creates < REGIONS // 10, s  # recycled
        del timer
        gc.collect()
        s = pool.stats()
        assert s.live == 0 and s.cached == s.creates - s.destroys, s
    finally:
        stream.synchronize(timeout=60)
        driver.mem_free(buf)
        stream.close()

