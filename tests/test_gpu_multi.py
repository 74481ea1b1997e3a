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


def test_an_event_of_gpu_0_orders_a_peer_copy_on_gpu_1():
    """Peer to peer: GPU 0 fills a buffer behind a long kernel and records an event; a stream
    of GPU 1 waits on it and copies the buffer across. The copy holds what GPU 0 wrote, with
    no device synchronize and no host wait between them."""
    torch = pytest.importorskip("torch")
    s0 = torch.cuda.Stream(0)
    s1 = torch.cuda.Stream(1)
    src = torch.zeros(1 << 20, device="cuda:0")
    dst = torch.empty(1 << 20, device="cuda:1")
    with torch.cuda.stream(s0):
        torch.cuda._sleep(1000)  # load the kernels before the timing-sensitive part
        src.fill_(0.0)
    with CudaEvent(0) as warm:
        warm.record(as_stream(s0)).synchronize(timeout=30)
    for value in (1.0, 2.0, 3.0):
        with torch.cuda.stream(s0):
            torch.cuda._sleep(50_000_000)  # ~25 ms: the copy would read early without the wait
            src.fill_(value)
        ev = CudaEvent(0).record(as_stream(s0))
        ev.wait(as_stream(s1))
        with torch.cuda.stream(s1):
            dst.copy_(src, non_blocking=True)
        done = CudaEvent(1).record(as_stream(s1))
        done.synchronize(timeout=30)
        assert torch.all(dst == value).item(), f"GPU 1 copied before GPU 0 wrote {value}"
        ev.close()
        done.close()


def test_layers_on_two_gpus_time_each_on_its_own_device():
    """A model split over two GPUs (pipeline style): each module's forward and backward
    regions go on the stream of the device its work runs on."""
    torch = pytest.importorskip("torch")
    from cudaevents import LayerTimer

    nn = torch.nn

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(64, 64).to("cuda:0")
            self.second = nn.Linear(64, 64).to("cuda:1")

        def forward(self, x):
            return self.second(self.first(x).to("cuda:1"))

    model = Split()
    x = torch.randn(32, 64, device="cuda:0")
    model(x).sum().backward()  # warm up
    with LayerTimer(model, backward=True) as layers:
        for _ in range(3):
            model(x).sum().backward()
    r = layers.results(timeout=60)
    devices = {}
    for s in r.samples:
        devices.setdefault(s.name, set()).add(s.device)
    assert devices["first"] == {0} and devices["second"] == {1}
    assert devices["first.backward"] == {0} and devices["second.backward"] == {1}
    assert {n: st.count for n, st in r.summary().items()}["first.backward"] == 3


def test_nccl_ranks_one_per_gpu_flag_the_slowed_rank():
    """Cross-rank timing with one rank per GPU over NCCL (NVLink multicast off): the report
    flags the slowed rank, each rank's regions are on its own device, and the gather time per
    rank is printed."""
    torch = pytest.importorskip("torch")
    import json

    from helpers.subproc import run_script

    world = min(torch.cuda.device_count(), 4)
    r = run_script("ranks/timed_ranks.py", str(world), "1", "nccl", timeout=300, env={"NCCL_NVLS_ENABLE": "0"})
    assert r.returncode == 0, r
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{world} NCCL ranks:\n{out['table']}")
    print("gather of 1,000 region names, per rank: "
          + ", ".join(f"rank {i}: {s * 1e3:.2f} ms, {n:,} bytes" for i, (s, n) in enumerate(out["gather_1000_names"])))
    assert out["stragglers"] == [1]
    assert out["trace_pids"] == list(range(world)) and out["devices"] == list(range(world))
