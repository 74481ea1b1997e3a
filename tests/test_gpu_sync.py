"""AtomicEvent, Event and Fence on a real GPU, each counter backend forced in turn."""

from __future__ import annotations

import ctypes
import logging
import threading
import time

import pytest

import cudaevents
from cudaevents import (
    AtomicEvent,
    CpuStream,
    CudaEvent,
    DeviceMismatchError,
    Event,
    Fence,
    GpuStream,
)
from cudaevents._core import driver
from cudaevents._sync import counter_storage

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["mem64", "mem32", "hostfn"]


@pytest.fixture(params=GPU_BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", request.param)
    return request.param


@pytest.fixture
def streams(gpu_streams):
    return gpu_streams(3)


def pending(stream) -> CudaEvent:
    return CudaEvent(0).record(stream)


def test_auto_backend_on_this_gpu():
    assert cudaevents.atomic_backend(0) == "mem64"
    assert AtomicEvent(0).backend == "mem64"


def test_forced_backend_is_used(backend):
    assert AtomicEvent(0).backend == backend
    assert cudaevents.atomic_backend(0) == backend


def test_cpu_to_gpu_to_cpu(backend, streams):
    s = streams[0]
    ping, pong = AtomicEvent(0), AtomicEvent(0)
    for i in range(1, 201):
        ping.wait(i, s)  # the GPU waits for the host...
        pong.signal(i, s)  # ...then signals back
        if i == 1:
            time.sleep(0.02)
            assert not pong.is_signaled(1)
        ping.signal(i)
        pong.wait(i, timeout=10)
        assert pong.value == i
    ping.close()
    pong.close()


def test_gpu_to_gpu_waits_for_the_value(backend, streams, latch):
    s1, s2 = streams[0], streams[1]
    a = AtomicEvent(0)
    latch.block(s1)
    a.signal(3, s1)
    a.wait(3, s2)
    behind = pending(s2)
    time.sleep(0.02)
    assert not behind.query() and a.value == 0
    latch.release()
    behind.synchronize(timeout=10)
    assert a.value == 3
    a.wait(3, timeout=1)


def test_signals_on_two_gpu_streams_complete_in_call_order(backend, streams, latch):
    s1, s2 = streams[0], streams[1]
    a = AtomicEvent(0)
    latch.block(s1)
    a.signal(5, s1)
    a.signal(7, s2)  # must wait for the 5, or the 5 would land after it
    seen = []
    watcher = threading.Thread(target=lambda: [seen.append(a.value) for _ in range(20000)])
    time.sleep(0.02)
    assert a.value == 0
    watcher.start()
    latch.release()
    a.wait(7, timeout=10)
    watcher.join(timeout=10)
    assert all(x <= y for x, y in zip(seen, seen[1:]))
    assert a.value == 7


def test_cpu_stream_to_gpu_stream(backend, streams):
    cpu = CpuStream()
    a = AtomicEvent(0)
    gate = threading.Event()
    cpu.enqueue(gate.wait, 10)
    a.signal(1, cpu)
    a.wait(1, streams[0])
    behind = pending(streams[0])
    time.sleep(0.02)
    assert not behind.query()
    gate.set()
    behind.synchronize(timeout=10)
    cpu.close(timeout=10)


def test_pipeline_cpu_producer_two_gpu_streams_cpu_consumer(backend):
    """A CpuStream fills pinned buffers, GPU stream A uploads them, GPU stream B copies and
    downloads; the host checks every round. No device-wide synchronize anywhere."""
    n_words, rounds, slots = 1 << 18, 24, 3
    nbytes = n_words * 4
    producer = CpuStream()
    a_stream, b_stream = GpuStream(0), GpuStream(0)
    host_in = [driver.mem_host_alloc(nbytes) for _ in range(slots)]
    host_out = [driver.mem_host_alloc(nbytes) for _ in range(slots)]
    dev_a = [driver.mem_alloc(0, nbytes) for _ in range(slots)]
    dev_b = [driver.mem_alloc(0, nbytes) for _ in range(slots)]
    produced, uploaded, consumed = (Fence(0) for _ in range(3))
    downloaded = AtomicEvent(0)  # round r's download sets it to r + 1
    try:
        def fill(slot, value):
            arr = (ctypes.c_uint32 * n_words).from_address(host_in[slot])
            ctypes.memset(host_in[slot], 0, nbytes)
            for k in range(0, n_words, 997):
                arr[k] = value + k

        for r in range(rounds):
            slot = r % slots
            if r >= slots:
                consumed.wait(producer)  # the slot is free again once the host consumed round r - slots
            producer.enqueue(fill, slot, r * 7919)
            produced.update(producer)
            produced.wait(a_stream)
            driver.memcpy_htod_async(dev_a[slot], host_in[slot], nbytes, a_stream._handle)
            uploaded.update(a_stream)
            uploaded.wait(b_stream)
            driver.memcpy_dtod_async(dev_b[slot], dev_a[slot], nbytes, b_stream._handle)
            driver.memcpy_dtoh_async(host_out[slot], dev_b[slot], nbytes, b_stream._handle)
            downloaded.signal(r + 1, b_stream)
            if r >= 1:
                check_round(r - 1, downloaded, consumed, host_out, slots, n_words)
        check_round(rounds - 1, downloaded, consumed, host_out, slots, n_words)
    finally:
        producer.close(timeout=30)
        for s in (a_stream, b_stream):
            s.synchronize(timeout=30)
            s.close()
        for f in (produced, uploaded, downloaded, consumed):
            f.close()
        for p in host_in + host_out:
            driver.mem_host_free(p)
        for p in dev_a + dev_b:
            driver.mem_free(p)


def check_round(r, downloaded, consumed, host_out, slots, n_words):
    downloaded.wait(r + 1, timeout=30)
    arr = (ctypes.c_uint32 * n_words).from_address(host_out[r % slots])
    for k in range(0, n_words, 997):
        assert arr[k] == r * 7919 + k, f"round {r} word {k}"
    assert arr[1] == 0
    consumed.update()


def test_fence_across_gpu_and_cpu_streams(backend, streams, latch):
    s1, s2, s3 = streams
    f = Fence(0)
    latch.block(s1)
    f.update(s1)
    f.update(s2)
    cpu = CpuStream()
    f.update(cpu)
    f.wait(s3)
    behind = pending(s3)
    time.sleep(0.02)
    assert not behind.query() and f.completed < 3
    latch.release()
    behind.synchronize(timeout=10)
    f.wait(timeout=10)
    assert f.completed == 3 and f.count == 3
    cpu.close(timeout=10)


def test_event_uses_a_cuda_event_then_moves_to_a_counter(backend, streams, latch):
    s1, s2 = streams[0], streams[1]
    ev = Event()
    latch.block(s1)
    ev.signal(s1)
    assert ev.backing == "cuda"
    ev.wait(s2)
    behind = pending(s2)
    cpu = CpuStream()
    ev.value = 2
    ev.signal(cpu)  # needs a counter: the CUDA event's completion is carried over first
    assert ev.backing == "atomic"
    time.sleep(0.02)
    assert not behind.query() and not ev.is_signaled()
    latch.release()
    ev.wait(timeout=10)
    behind.synchronize(timeout=10)
    cpu.close(timeout=10)


def test_event_gpu_only_stays_on_cuda_events(streams):
    ev = Event()
    ev.signal(streams[0])
    ev.wait(streams[1])
    ev.wait(timeout=10)
    assert ev.is_signaled() and ev.backing == "cuda"
    cpu = CpuStream()
    ev.wait(cpu)
    cpu.synchronize(timeout=10)
    cpu.close(timeout=10)
    ev.close()


def test_a_failed_producer_releases_gpu_waiters_and_fails_host_waiters(backend, streams):
    a = AtomicEvent(0)
    s = streams[0]
    a.wait(1, s)
    behind = pending(s)
    cpu = CpuStream()
    cpu.enqueue(lambda: (_ for _ in ()).throw(OSError("disk gone")))
    a.signal(1, cpu)
    with pytest.raises(OSError, match="disk gone"):
        a.wait(1, timeout=10)
    behind.synchronize(timeout=10)  # the GPU stream was let go, not left to hang
    with pytest.raises(OSError, match="disk gone"):
        a.wait(2, streams[1])
    with pytest.raises(OSError):
        cpu.synchronize(timeout=10)
    cpu.close(timeout=10)


def test_gpu_wait_from_the_signalling_cpu_stream_is_refused(backend, streams):
    a = AtomicEvent(0)
    cpu = CpuStream()
    gate = threading.Event()
    cpu.enqueue(gate.wait, 10)
    cpu.enqueue(a.wait, 1, streams[0])  # runs on cpu's thread; cpu signals 1 only afterwards
    a.signal(1, cpu)
    gate.set()
    with pytest.raises(RuntimeError, match="would stall that very stream"):
        cpu.synchronize(timeout=10)
    cpu.close(timeout=10)


def test_host_backend_refuses_gpu_streams(monkeypatch, streams):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "host")
    a = AtomicEvent(0)
    assert a.backend == "host"
    with pytest.raises(ValueError, match="host backend"):
        a.signal(1, streams[0])


def test_mem32_refuses_values_beyond_32_bits(monkeypatch, streams):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "mem32")
    a = AtomicEvent(0)
    a.signal((1 << 31) - 1, streams[0])
    a.wait((1 << 31) - 1, timeout=10)
    with pytest.raises(ValueError, match=r"mem32 backend holds values below 2\*\*31"):
        a.signal(1 << 31)


def test_slots_are_recycled(streams):
    before = counter_storage.slab_stats()
    for i in range(3000):
        a = AtomicEvent(0)
        a.signal(1, streams[i % 3])
        a.wait(1, streams[(i + 1) % 3])
        a.close()
    for s in streams:
        s.synchronize(timeout=30)
    counter_storage._quarantine.reclaim()
    after = counter_storage.slab_stats()
    assert after["in_use"] <= before["in_use"]  # earlier tests' quarantined slots may come back too
    assert after["bytes"] - before["bytes"] <= 8 * 4096  # 3000 events did not take 3000 slots


def test_a_counter_dropped_in_a_reference_cycle_retires_cleanly(backend, streams):
    """A counter collected with its cell and their events in one garbage cycle: the collector
    runs every finalizer there, the events' own too, while the counter's close() still reads
    them and hands them to the quarantine. Found under compute-sanitizer: the hostfn cell's
    events came to the quarantine already given back, so it queried NULL handles forever."""
    import gc

    live_before = cudaevents.default_pool().stats().live
    a = AtomicEvent(0)
    a.wait(1, streams[0])           # hostfn: a host function and an event recorded after it
    a.signal(1)                     # the host releases the wait
    a.signal(2, streams[1])         # a GPU signal's event
    for s in streams:
        s.synchronize(timeout=10)
    before = {id(fences) for fences, _ in counter_storage._quarantine.entries()}
    box = {"counter": a}
    box["box"] = box
    del a, box
    gc.collect()  # the counter closes on the finalizer thread; its events go back once done
    deadline = time.monotonic() + 10
    while True:
        counter_storage._quarantine.reclaim()
        left = [fences for fences, _ in counter_storage._quarantine.entries() if id(fences) not in before]
        live = cudaevents.default_pool().stats().live
        if (not left and live <= live_before) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert left == [] and live <= live_before, (left, live, live_before)


def test_closing_with_unreachable_gpu_waits_releases_them(backend, streams, caplog):
    a = AtomicEvent(0)
    a.wait(5, streams[0])
    behind = pending(streams[0])
    with caplog.at_level(logging.WARNING, logger="cudaevents"):
        a.close()
    behind.synchronize(timeout=10)
    assert "released them" in caplog.text


@pytest.mark.multigpu
def test_counter_of_another_device_is_refused():
    a = AtomicEvent(0)
    other = GpuStream(1)
    with pytest.raises(DeviceMismatchError, match="create it with device=1"):
        a.wait(1, other)
    other.close()


# -- what close() promises, stream identity, event-ordered streams (issue: concurrency defects) ----
@pytest.mark.parametrize("gpu_backend", ["mem64", "mem32"], indirect=True)
def test_close_does_not_let_consumers_run_before_the_producer(gpu_backend, gpu_streams, latch, buffers):
    producer, consumer = gpu_streams(2)
    data = buffers(4)
    host = driver.mem_host_alloc(4)
    try:
        ctypes.c_uint32.from_address(host).value = 0
        driver.memset_d32_async(data, 1, 1, producer.handle)  # warm-up of both operations
        driver.memcpy_dtoh_async(host, data, 4, consumer.handle)
        producer.synchronize(timeout=10)
        consumer.synchronize(timeout=10)
        ctypes.c_uint32.from_address(host).value = 0
        counter = AtomicEvent(0)
        latch.block(producer)
        driver.memset_d32_async(data, 7, 1, producer.handle)  # the data, behind the latch
        counter.signal(5, producer)
        counter.wait(5, consumer)
        driver.memcpy_dtoh_async(host, data, 4, consumer.handle)  # reads the data once 5 lands
        counter.close()  # must not let the consumer go before the producer
        time.sleep(0.2)
        assert ctypes.c_uint32.from_address(host).value == 0
        latch.release()
        consumer.synchronize(timeout=10)
        assert ctypes.c_uint32.from_address(host).value == 7
    finally:
        driver.mem_host_free(host)


@pytest.mark.parametrize("gpu_backend", ["mem64", "mem32"], indirect=True)
def test_stranded_gpu_waits_go_after_the_pending_signal(gpu_backend, gpu_streams, latch):
    producer, consumer = gpu_streams(2)
    counter = AtomicEvent(0)
    latch.block(producer)
    counter.signal(5, producer)
    counter.wait(9, consumer)  # never signalled
    counter.close()
    latch.release()
    consumer.synchronize(timeout=10)  # let go after the signal of 5, not hung


@pytest.mark.parametrize("gpu_backend", ["mem64", "mem32"], indirect=True)
def test_a_stranded_wait_behind_the_pending_signal_on_its_own_stream_is_let_go(gpu_backend, gpu_streams, latch):
    (s,) = gpu_streams(1)
    counter = AtomicEvent(0)
    latch.block(s)
    counter.signal(5, s)
    counter.wait(9, s)  # never signalled, on the signal's own stream: the release must not queue behind it
    counter.close()
    latch.release()
    s.synchronize(timeout=10)


def test_a_destroyed_streams_reused_handle_keeps_signal_order(backend):
    if backend == "hostfn":
        pytest.skip("the hostfn backend signals with CUDA events: no stream memory writes to reorder")
    from helpers.latch import Latch

    lt = Latch()
    held = GpuStream()
    counter = AtomicEvent(0)
    lt.block(held)
    counter.signal(5, held)
    handle = held.handle
    held.close()  # destroyed with the signal pending
    again = GpuStream()  # often gets the same handle back
    try:
        counter.signal(7, again)
        lt.release()
        counter.wait(7, timeout=10)
        again.synchronize(timeout=10)
        time.sleep(0.05)
        assert counter.value == 7, (counter.value, again.handle == handle)
    finally:
        lt.close()
        again.close()
        counter.close()


def test_event_host_signal_while_its_gpu_signal_lags(streams, latch):
    s = streams[0]
    ev = Event()
    latch.block(s)
    ev.signal(s)  # a CUDA event behind the latch
    ev.value = 2
    ev.signal()  # the host sets it now: no ValueError
    ev.wait(timeout=5)
    latch.release()
    s.synchronize(timeout=10)
    ev.close()


def test_closing_an_event_while_a_cpu_stream_waits_on_it(streams, latch, cpu):
    s, c = streams[0], cpu()
    ev = Event()
    latch.block(s)
    ev.signal(s)
    ev.wait(c)
    ev.close()
    latch.release()
    c.synchronize(timeout=10)  # no ClosedError: the wait saw the work it waited for


def test_many_counters_leave_no_fence_events_behind(backend, streams):
    pool_before = cudaevents.default_pool().stats().live
    for i in range(300):
        counter = AtomicEvent(0)
        counter.signal(1, streams[i % 3])
        counter.wait(1, streams[(i + 1) % 3])
        counter.close()
    for s in streams:
        s.synchronize(timeout=10)
    counter_storage.reclaim()
    assert cudaevents.default_pool().stats().live - pool_before <= 3
