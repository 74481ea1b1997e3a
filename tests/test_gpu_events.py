"""CudaEvent, GpuStream, Device and EventPool on a real GPU."""

from __future__ import annotations

import ctypes
import gc
import pickle
import threading
import time

import pytest

import cudaevents
from cudaevents import (
    ClosedError,
    CudaError,
    CudaEvent,
    Device,
    GpuStream,
    NotReadyError,
    NotRecordedError,
    as_stream,
)
from cudaevents._core import driver

pytestmark = pytest.mark.gpu

MiB = 1 << 20


def read_word(ptr, device=0) -> int:
    word = ctypes.c_uint32()
    driver.memcpy_dtoh(device, ctypes.addressof(word), ptr, 4)
    return word.value


# -- devices -----------------------------------------------------------------------------
def test_device_basics():
    n = cudaevents.device_count()
    assert n >= 1 and cudaevents.is_available()
    dev = Device(0)
    assert dev is Device(0) and Device(dev) is dev and int(dev) == 0
    assert dev.name and dev.compute_capability[0] >= 7 and dev.total_memory > 0
    caps = dev.capabilities
    assert caps is dev.capabilities  # read once
    assert caps.stream_mem_ops_32 and caps.can_map_host_memory
    for value in vars(caps).values():
        assert isinstance(value, bool)
    assert pickle.loads(pickle.dumps(dev)) is dev
    with pytest.raises(ValueError, match=rf"valid ordinals are 0\.\.{n - 1}"):
        Device(n)
    with pytest.raises(ValueError, match="does not exist"):
        Device(-1)
    with pytest.raises(TypeError, match="integer ordinal"):
        Device("0")


def test_make_current_and_synchronize():
    assert Device(0).make_current() is Device(0)
    assert driver.current_device_index() == 0
    Device(0).synchronize()


def test_a_real_driver_failure_is_a_cuda_error():
    with pytest.raises(CudaError) as info:
        driver.call("cuDeviceGet", 10_000)
    assert info.value.call == "cuDeviceGet"
    assert info.value.name == "CUDA_ERROR_INVALID_DEVICE"
    assert pickle.loads(pickle.dumps(info.value)).code == info.value.code


# -- streams -----------------------------------------------------------------------------
def test_owned_stream_lifecycle():
    s = GpuStream(0)
    assert s.owned and s.device is Device(0) and s.handle != 0
    assert s.query()
    s.synchronize()
    s.synchronize(timeout=1)
    assert s.__cuda_stream__() == (0, s.handle)
    assert as_stream(s) is s
    s.close()
    s.close()
    assert s.closed
    for op in (s.query, s.synchronize, lambda: s.handle, lambda: CudaEvent().record(s)):
        with pytest.raises(ClosedError, match="GpuStream was closed"):
            op()
    with GpuStream(blocking=True) as s2:
        assert not s2.closed
    assert s2.closed


def test_stream_priority_range():
    greatest, least = driver.stream_priority_range(0)
    GpuStream(0, priority=greatest).close()
    GpuStream(0, priority=least).close()
    with pytest.raises(ValueError, match="outside device 0's range"):
        GpuStream(0, priority=greatest - 1)
    with pytest.raises(TypeError, match="priority must be an int"):
        GpuStream(0, priority=1.5)


def test_raw_handle_needs_its_device(stream):
    borrowed = as_stream(stream.handle, device=0)
    assert not borrowed.owned and borrowed.handle == stream.handle and borrowed.device is Device(0)
    with pytest.raises(TypeError, match="needs device="):
        as_stream(stream.handle)
    borrowed.close()  # dropping a borrowed stream leaves the owner's stream alone
    assert stream.query()


def test_stream_query_and_timeout_while_blocked(stream, latch):
    latch.block(stream)
    assert not stream.query()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="GpuStream.synchronize"):
        stream.synchronize(timeout=0.05)
    assert time.monotonic() - t0 < 0.05 + 0.05
    latch.release()
    stream.synchronize(timeout=10)
    assert stream.query()


# -- events ------------------------------------------------------------------------------
def test_time_real_work(stream, buffers, pool):
    ptr = buffers(256 * MiB)
    start = CudaEvent(timing=True, pool=pool).record(stream)
    driver.memset_d32_async(ptr, 7, 64 * MiB, stream._handle)
    end = CudaEvent(timing=True, pool=pool).record(stream)
    end.synchronize(timeout=10)
    assert start.query() and end.query()
    ms = start.elapsed_time(end)
    assert 0 < ms < 1000
    assert read_word(ptr) == 7
    assert start.device is Device(0) and start.recorded and start.handle
    start.close()
    end.close()


def test_not_ready_state_with_a_latch(stream, latch, pool):
    start = CudaEvent(timing=True, pool=pool).record(stream)
    latch.block(stream)
    end = CudaEvent(timing=True, pool=pool).record(stream)
    start.synchronize(timeout=10)        # recorded ahead of the latch: completes soon, not at once
    assert start.query()
    assert not end.query()
    with pytest.raises(NotReadyError, match=r"call end.synchronize\(\)"):
        start.elapsed_time(end)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="CudaEvent.synchronize"):
        end.synchronize(timeout=0.1)
    assert time.monotonic() - t0 < 0.1 + 0.05
    latch.release()
    end.synchronize(timeout=10)
    assert end.query() and start.elapsed_time(end) >= 0


def test_device_side_wait_orders_work_across_streams(stream, latch, buffers, pool):
    src, dst = buffers(4 * MiB), buffers(4 * MiB)
    consumer = GpuStream(0)
    driver.memset_d32_async(dst, 1, MiB, consumer._handle)
    consumer.synchronize(timeout=10)
    latch.block(stream)
    driver.memset_d32_async(src, 42, MiB, stream._handle)
    produced = CudaEvent(pool=pool).record(stream)
    produced.wait(consumer)
    driver.memcpy_dtod_async(dst, src, 4 * MiB, consumer._handle)
    consumed = CudaEvent(pool=pool).record(consumer)
    time.sleep(0.05)
    assert not consumed.query(), "the consumer ran before the producer's event"
    latch.release()
    consumed.synchronize(timeout=10)
    assert read_word(dst) == 42
    consumer.close()


def test_default_stream_record_and_wait(pool):
    ev = CudaEvent(0, pool=pool).record()  # legacy default stream of device 0
    ev.synchronize(timeout=10)
    ev.wait()
    ev2 = CudaEvent(pool=pool).record(None)
    assert ev2.device is Device(0)
    ev2.synchronize(timeout=10)


def test_pool_reuses_a_handle_after_completion(stream, pool):
    ev = CudaEvent(0, pool=pool).record(stream)
    ev.synchronize(timeout=10)
    handle = ev.handle
    ev.close()
    again = CudaEvent(0, pool=pool).record(stream)
    assert again.handle == handle
    s = pool.stats()
    assert (s.creates, s.reuses, s.live, s.cached) == (1, 1, 1, 0)
    del again
    assert pool.stats().live == 0 and pool.stats().cached == 1


def test_releasing_a_pending_event_is_safe(stream, latch, pool):
    """A handle released while its record is pending is reused at once: waits already
    enqueued keep the state they captured, the new owner's record replaces it."""
    waiter = GpuStream(0)
    latch.block(stream)
    old = CudaEvent(0, pool=pool).record(stream)
    old.wait(waiter)
    behind_wait = CudaEvent(0, pool=pool).record(waiter)
    handle = old.handle
    old.close()
    new = CudaEvent(0, pool=pool)
    assert new.handle == handle
    idle = GpuStream(0)
    new.record(idle)
    new.synchronize(timeout=10)  # captures only the idle stream's (empty) work
    assert not behind_wait.query()  # the earlier wait still waits for the latch
    latch.release()
    behind_wait.synchronize(timeout=10)
    for s in (waiter, idle):
        s.close()


def test_misuse_on_a_real_device(stream, pool):
    ev = CudaEvent(0, pool=pool)
    for op in (ev.wait, ev.query, ev.synchronize):
        with pytest.raises(NotRecordedError, match="call record"):
            op()
    untimed = CudaEvent(0, pool=pool).record(stream)
    timed = CudaEvent(0, timing=True, pool=pool).record(stream)
    with pytest.raises(ValueError, match="timing=True"):
        untimed.elapsed_time(timed)
    with pytest.raises(ValueError, match="end event was created without timing"):
        timed.elapsed_time(untimed)
    timed.close()
    with pytest.raises(ClosedError):
        timed.record(stream)
    with pytest.raises(ClosedError, match="start event was closed"):
        timed.elapsed_time(untimed)


def test_interprocess_and_blocking_sync_events(stream, pool):
    ipc = CudaEvent(0, interprocess=True, pool=pool).record(stream)
    ipc.synchronize(timeout=10)
    blocking = CudaEvent(0, blocking_sync=True, timing=True, pool=pool)
    start = CudaEvent(0, blocking_sync=True, timing=True, pool=pool).record(stream)
    blocking.record(stream).synchronize(timeout=10)
    assert start.elapsed_time(blocking) >= 0
    assert pool.stats().creates == 3
    keys = set(pool._keys)
    assert len(keys) == 2  # interprocess and blocking-sync/timing handles are pooled apart


def test_threads_acquire_record_release(pool):
    nthreads, cycles = 8, 10_000
    errors = []

    def work():
        try:
            s = GpuStream(0)
            for _ in range(cycles):
                ev = CudaEvent(0, pool=pool)
                ev.record(s)
                ev.close()
            s.synchronize(timeout=30)
            s.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive()
    assert errors == []
    s = pool.stats()
    assert s.live == 0
    assert s.creates + s.reuses == nthreads * cycles
    assert s.creates <= nthreads and s.high_water <= nthreads
    assert s.cached == s.creates


def test_unbound_event_in_threads_without_a_current_context(pool):
    """Threads that never made a context current can create, record and time events."""
    out = []

    def work():
        s = GpuStream(0)
        a = CudaEvent(timing=True, pool=pool).record(s)
        b = CudaEvent(timing=True, pool=pool).record(s)
        b.synchronize(timeout=10)
        out.append(a.elapsed_time(b))
        s.close()

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=30)
    assert len(out) == 1 and out[0] >= 0


def test_pushing_a_context_restores_the_callers(pool):
    driver.call("cuCtxSetCurrent", None)
    try:
        CudaEvent(0, pool=pool)
        GpuStream(0).close()
        assert driver.current_device_index() is None
    finally:
        Device(0).make_current()


def test_gc_returns_handles(stream, pool):
    for _ in range(100):
        CudaEvent(0, pool=pool).record(stream)
    gc.collect()
    s = pool.stats()
    assert s.live == 0 and s.creates == 1


def test_host_wait_releases_the_gil(stream, latch, pool):
    """A thread blocked in synchronize() lets other Python threads run."""
    ev = CudaEvent(0, pool=pool)
    latch.block(stream)
    ev.record(stream)
    finished = threading.Event()

    def waiter():
        ev.synchronize()  # no timeout: waits inside the driver
        finished.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    time.sleep(0.02)
    count, deadline = 0, time.monotonic() + 0.1
    while time.monotonic() < deadline:
        count += 1
    assert count > 10_000, "the main thread barely ran while another thread waited"
    assert not finished.is_set()
    latch.release()
    assert finished.wait(timeout=10)
    t.join(timeout=10)
