"""Two GPUs: separate pools per device, cross-device waits, wrong-device errors."""

from __future__ import annotations

import time

import pytest

from cudaevents import CudaEvent, Device, DeviceMismatchError, GpuStream, as_stream

pytestmark = [pytest.mark.gpu, pytest.mark.multigpu]


def test_pools_are_separate_per_device(pool):
    s0, s1 = GpuStream(0), GpuStream(1)
    for _ in range(10):
        CudaEvent(pool=pool).record(s0)
        CudaEvent(pool=pool).record(s1)
    a = CudaEvent(pool=pool).record(s0)
    b = CudaEvent(pool=pool).record(s1)
    assert a.device is Device(0) and b.device is Device(1)
    assert pool.stats(0).creates == 1 and pool.stats(1).creates == 1
    assert pool.stats(0).live == 1 and pool.stats(1).live == 1
    a.close()
    assert pool.stats(0).cached == 1 and pool.stats(1).cached == 0
    b.close()
    s0.close()
    s1.close()


def test_cross_device_wait(stream, latch, pool):
    other = GpuStream(1)
    latch.block(stream)  # device 0
    ev0 = CudaEvent(pool=pool).record(stream)
    ev0.wait(other)
    ev1 = CudaEvent(pool=pool).record(other)
    assert ev1.device is Device(1)
    time.sleep(0.05)
    assert not ev1.query(), "device 1 did not wait for device 0's event"
    latch.release()
    ev1.synchronize(timeout=10)
    other.close()


def test_wrong_device_record_is_refused_before_the_driver(stream, pool):
    other = GpuStream(1)
    ev = CudaEvent(0, pool=pool)
    with pytest.raises(DeviceMismatchError, match="create the event with device=1"):
        ev.record(other)
    bound = CudaEvent(pool=pool).record(stream)  # binds to device 0
    with pytest.raises(DeviceMismatchError):
        bound.record(other)
    with pytest.raises(DeviceMismatchError, match="belongs to device 1, not device 0"):
        as_stream(other.handle, device=0)
    t0 = CudaEvent(0, timing=True, pool=pool).record(stream)
    t1 = CudaEvent(1, timing=True, pool=pool).record(other)
    t1.synchronize(timeout=10)
    t0.synchronize(timeout=10)
    with pytest.raises(DeviceMismatchError, match="one device"):
        t0.elapsed_time(t1)
    other.close()
