"""Behind a stream held on the device, the library's enqueue paths never make the caller wait for
the GPU while the same work written by hand with the driver would not (README, "How many
operations queue behind unfinished work"): each scenario stays below the driver's own limit for
the operations it needs, times every enqueue call (the longest is printed), then opens the
latch and checks that everything completed, in order, with nothing lost.

A watchdog opens the latch when one call has run for BLOCKED_S seconds (it blocked in the
driver behind the held stream), so such a test fails instead of hanging."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from cudaevents import AtomicEvent, CudaEvent, Event, Timer, Worker
from cudaevents._core import driver

pytestmark = pytest.mark.gpu

BLOCKED_S = 2.0


class _Timed:
    """Times enqueue calls (from any number of threads); opens the latch once one blocks."""

    def __init__(self, latch):
        self.latch = latch
        self.started: dict[int, float] = {}
        self.longest = 0.0
        self.blocked = False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.watchdog = threading.Thread(target=self._watch, daemon=True)
        self.watchdog.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.01):
            now = time.perf_counter()
            if any(now - t > BLOCKED_S for t in list(self.started.values())):
                self.blocked = True
                self.latch.release()
                return

    def __call__(self, fn, *args):
        me = threading.get_ident()
        self.started[me] = t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            dt = time.perf_counter() - t0
            del self.started[me]
            with self.lock:
                self.longest = max(self.longest, dt)

    def check(self, what: str) -> None:
        self.stop.set()
        self.watchdog.join(5)
        print(f"\n{what}: longest enqueue call {self.longest * 1e3:.3f} ms")
        assert not self.blocked, f"{what}: an enqueue call blocked behind the held stream"


def _warm_up(stream) -> None:
    """Every kind of operation the scenarios enqueue, once, on a stream nothing holds."""
    w = Worker()
    w.add_task(int)
    w.commit(stream)
    w.close(timeout=30)
    t = Timer()
    with t.region("warm", stream):
        pass
    t.results(timeout=30)
    c = AtomicEvent(0)
    c.signal(1, stream)
    c.wait(1, stream)
    c.close()
    e = Event()
    e.signal(stream)
    e.wait(timeout=30)
    e.close()
    stream.synchronize(timeout=30)


@pytest.fixture
def held(stream, latch):
    """The ``stream`` fixture warmed up, then held by ``latch``; returns (stream, timed)."""
    _warm_up(stream)
    latch.block(stream)
    return stream, _Timed(latch)


def test_1000_worker_commits_behind_a_held_stream(held, latch):
    stream, timed = held
    w = Worker()
    opened = threading.Event()
    ran = []
    try:
        for i in range(1000):
            w.add_task(lambda i=i: ran.append((i, opened.is_set())))
            timed(w.commit, stream)
        timed.check("1,000 Worker commits")
        time.sleep(0.05)
        assert ran == []
        opened.set()
        latch.release()
        w.synchronize(timeout=60)
        assert ran == [(i, True) for i in range(1000)] and w.errors == []
    finally:
        latch.release()
        w.close(timeout=60)


def test_worker_commits_from_several_threads_behind_a_held_stream(held, latch):
    stream, timed = held
    w = Worker()
    opened = threading.Event()
    ran = {n: [] for n in range(4)}

    def commit_many(n):
        for i in range(250):
            w.add_task(lambda i=i: ran[n].append((i, opened.is_set())))
            timed(w.commit, stream)

    threads = [threading.Thread(target=commit_many, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        timed.check("4 threads x 250 Worker commits")
        assert all(not r for r in ran.values())
        opened.set()
        latch.release()
        w.synchronize(timeout=60)
        assert all(r == [(i, True) for i in range(250)] for r in ran.values()) and w.errors == []
    finally:
        latch.release()
        w.close(timeout=60)


def test_300_timer_regions_behind_a_held_stream(held, latch):
    stream, timed = held
    t = Timer(harvest_every=64)
    for _ in range(300):
        timed(lambda: t.end(t.begin("region", stream)))
    timed.check("300 Timer regions (600 timing records)")
    latch.release()
    durations = t.results(timeout=60).durations("region")
    assert len(durations) == 300 and min(durations) >= 0


@pytest.mark.parametrize("gpu_backend", ["mem64", "mem32", "hostfn"], indirect=True)
def test_300_counter_signals_then_300_gpu_waits_on_another_stream(gpu_backend, held, latch, gpu_streams, buffers):
    stream, timed = held
    (consumer,) = gpu_streams(1)
    counter = AtomicEvent(0)
    n = 300
    dev = buffers(4 * (n + 1))
    driver.memset_d32_async(dev, 0, n + 1, stream.handle)
    host = driver.mem_host_alloc(4 * (n + 1))
    try:
        for k in range(1, n + 1):
            driver.memset_d32_async(dev + 4 * k, k, 1, stream.handle)  # item k, then its signal
            timed(counter.signal, k, stream)
        for k in range(1, n + 1):
            timed(counter.wait, k, consumer)
        driver.memcpy_dtoh_async(host, dev, 4 * (n + 1), consumer.handle)
        done = CudaEvent(0).record(consumer)
        timed.check(f"{n} counter signals + {n} GPU waits ({gpu_backend})")
        assert not done.query()
        latch.release()
        done.synchronize(timeout=60)
        words = (ctypes.c_uint32 * (n + 1)).from_address(host)
        assert list(words) == list(range(n + 1))  # every item was there when the consumer passed
        assert counter.value == n
        done.close()
    finally:
        latch.release()
        counter.close()
        consumer.synchronize(timeout=60)
        driver.mem_host_free(host)


def test_1000_event_signals_behind_a_held_stream(held, latch):
    stream, timed = held
    events = [Event() for _ in range(1000)]
    for e in events:
        timed(e.signal, stream)
    timed.check("1,000 Event signals")
    assert not events[-1].is_signaled()
    latch.release()
    for e in events:
        e.wait(timeout=60)
        e.close()
