"""Borrowing streams from PyTorch, CuPy and cuda.core (each where installed)."""

from __future__ import annotations

import gc
import weakref

import pytest

from cudaevents import CudaEvent, Device, DeviceMismatchError, GpuStream, as_stream

pytestmark = pytest.mark.gpu


def _cuda_core():
    mod = pytest.importorskip("cuda.core")
    if not hasattr(mod, "Device"):
        mod = pytest.importorskip("cuda.core.experimental")
    return mod


def test_torch_streams(pool):
    torch = pytest.importorskip("torch")
    ts = torch.cuda.Stream(device=0)
    s = as_stream(ts)
    assert s.handle == ts.cuda_stream and s.device is Device(0) and not s.owned
    assert s._owner is ts
    x = torch.randn(2048, 2048, device="cuda:0")
    with torch.cuda.stream(ts):
        start = CudaEvent(timing=True, pool=pool).record(ts)
        y = x @ x
        end = CudaEvent(timing=True, pool=pool).record(ts)
    end.synchronize(timeout=30)
    assert start.elapsed_time(end) > 0
    assert torch.isfinite(y).all()


def test_torch_default_stream_and_external_stream(pool):
    torch = pytest.importorskip("torch")
    default = as_stream(torch.cuda.current_stream(0))
    assert default.handle == torch.cuda.current_stream(0).cuda_stream
    CudaEvent(pool=pool).record(default).synchronize(timeout=10)
    ours = GpuStream(0)
    external = torch.cuda.ExternalStream(ours.handle, device="cuda:0")
    assert as_stream(external).handle == ours.handle
    ours.close()


def test_torch_event_order_against_ours(pool):
    """Work that torch enqueues after our event's wait really waits for it."""
    torch = pytest.importorskip("torch")
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    a = torch.zeros(1 << 24, device="cuda:0")
    with torch.cuda.stream(producer):
        torch.cuda._sleep(50_000_000)  # about tens of ms of spinning
        a.fill_(3.0)
    done = CudaEvent(pool=pool).record(producer)
    done.wait(consumer)
    with torch.cuda.stream(consumer):
        total = a.sum()
    as_stream(consumer).synchronize(timeout=30)
    assert total.item() == 3.0 * (1 << 24)


def test_cupy_streams(pool):
    cupy = pytest.importorskip("cupy")
    with cupy.cuda.Device(0):
        cs = cupy.cuda.Stream(non_blocking=True)
        s = as_stream(cs)
        assert s.handle == cs.ptr and s.device is Device(0)
        with cs:
            start = CudaEvent(timing=True, pool=pool).record(cs)
            x = cupy.arange(1 << 22, dtype=cupy.float32).sum()
            end = CudaEvent(timing=True, pool=pool).record(cs)
        end.synchronize(timeout=10)
        assert start.elapsed_time(end) >= 0
        assert float(x) == pytest.approx((1 << 22) * ((1 << 22) - 1) / 2, rel=1e-5)
        null = as_stream(cupy.cuda.Stream.null)
        CudaEvent(pool=pool).record(null).synchronize(timeout=10)


def test_cuda_core_streams_are_kept_alive(pool):
    core = _cuda_core()
    dev = core.Device(0)
    dev.set_current()
    cs = dev.create_stream()
    alive = weakref.ref(cs)
    s = as_stream(cs)
    handle = s.handle
    del cs
    gc.collect()
    assert alive() is not None, "the borrowed stream's owner was not kept alive"
    ev = CudaEvent(pool=pool).record(s)
    ev.synchronize(timeout=10)
    assert s.handle == handle and s.device is Device(0)
    del s
    gc.collect()
    assert alive() is None  # and released once our wrapper is gone


def test_cuda_core_borrows_our_stream(pool):
    core = _cuda_core()
    dev = core.Device(0)
    dev.set_current()
    ours = GpuStream(0)
    theirs = dev.create_stream(ours)
    assert int(theirs.handle) == ours.handle
    ev = CudaEvent(pool=pool).record(theirs)
    ev.synchronize(timeout=10)
    theirs.close()
    ours.close()


def test_stated_device_must_match(pool):
    torch = pytest.importorskip("torch")
    ts = torch.cuda.Stream(device=0)
    assert as_stream(ts, device=0).handle == ts.cuda_stream
    if torch.cuda.device_count() > 1:
        with pytest.raises(DeviceMismatchError, match="belongs to device 0, not device 1"):
            as_stream(ts, device=1)
