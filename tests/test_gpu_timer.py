"""Timer on real GPU streams: regions, bounded live events, traces, devices, torch streams."""

from __future__ import annotations

import json

import pytest

from cudaevents import EventPool, GpuStream, Timer, as_stream
from cudaevents._core import driver

pytestmark = pytest.mark.gpu

MiB = 1 << 20


@pytest.fixture
def buffer(buffers):
    return buffers(64 * MiB)


def test_regions_on_several_streams(buffer, pool):
    s1, s2 = GpuStream(0), GpuStream(0)
    t = Timer(pool=pool, nvtx=False)
    for _ in range(50):
        with t.region("outer", s1):
            driver.memset_d32_async(buffer, 1, 4 * MiB, s1._handle)
            with t.region("inner", s1):
                driver.memset_d32_async(buffer, 2, 8 * MiB, s1._handle)
        with t.region("side", s2):
            driver.memset_d32_async(buffer + 32 * MiB, 3, 4 * MiB, s2._handle)
    r = t.results(timeout=30)
    summary = r.summary()
    assert {n: st.count for n, st in summary.items()} == {"outer": 50, "inner": 50, "side": 50}
    assert all(st.min_ms > 0 for st in summary.values())
    assert summary["outer"].median_ms > summary["inner"].median_ms
    outer = [s for s in r.samples if s.name == "outer"]
    inner = [s for s in r.samples if s.name == "inner"]
    for o, i in zip(outer, inner):
        assert o.start_ms <= i.start_ms + 1e-3
        assert i.start_ms + i.duration_ms <= o.start_ms + o.duration_ms + 1e-3
    assert {s.stream for s in r.samples if s.name == "side"} == {s2.handle}
    assert {s.device for s in r.samples} == {0}
    for s in (s1, s2):
        s.close()


def test_live_events_stay_bounded_and_steady_state_creates_nothing(buffer):
    pool = EventPool()
    s = GpuStream(0)
    t = Timer(pool=pool, harvest_every=64, nvtx=False)

    def run(n):
        for _ in range(n):
            with t.region("tiny", s):
                driver.memset_d32_async(buffer, 0, 1024, s._handle)

    run(2000)  # warm-up: the pool grows to the regions in flight
    t.results(timeout=30)
    pool.reset_stats()
    run(10_000)
    r = t.results(timeout=60)
    st = pool.stats()
    assert len(r) == 12_000
    assert st.live == 1  # only the timer's reference event
    assert st.high_water < 2 * 64 + 2 * 512  # far below 2 x 10,000 regions
    assert st.creates <= st.high_water  # and far below 20,000 (none at all once warm)
    s.close()


def test_trace_has_one_track_per_stream(tmp_path, buffer, pool):
    streams = [GpuStream(0) for _ in range(3)]
    t = Timer(pool=pool, nvtx=False)
    for i, s in enumerate(streams):
        for _ in range(5):
            with t.region(f"work{i}", s):
                driver.memset_d32_async(buffer + i * 16 * MiB, i, MiB, s._handle)
    path = tmp_path / "trace.json"
    t.results(timeout=30).to_chrome_trace(path)
    trace = json.loads(path.read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == 15
    tracks = {e["tid"] for e in complete}
    assert len(tracks) == 3
    for tid in tracks:
        names = {e["name"] for e in complete if e["tid"] == tid}
        assert len(names) == 1
    assert all(e["dur"] > 0 for e in complete)
    # starts count from the reference event, recorded on the first stream ahead of its first
    # region: that stream's starts are >= 0; another stream may run ahead of it on the GPU
    first = [e for e in complete if e["name"] == "work0"]
    assert all(e["ts"] >= 0 for e in first)
    for s in streams:
        s.close()


def test_torch_stream_regions(pool):
    torch = pytest.importorskip("torch")
    t = Timer(pool=pool, nvtx=False)
    x = torch.randn(1024, 1024, device="cuda")
    stream = torch.cuda.current_stream()
    for _ in range(10):
        with t.region("matmul", stream):
            x @ x
    r = t.results(timeout=30)
    assert r.summary()["matmul"].count == 10 and r.summary()["matmul"].min_ms > 0


@pytest.mark.multigpu
def test_regions_on_two_devices(pool):
    t = Timer(pool=pool, nvtx=False)
    streams = [GpuStream(0), GpuStream(1)]
    bufs = [driver.mem_alloc(d, 16 * MiB) for d in (0, 1)]
    for d, s in enumerate(streams):
        for _ in range(5):
            with t.region(f"dev{d}", s):
                driver.memset_d32_async(bufs[d], d, 4 * MiB, s._handle)
    r = t.results(timeout=30)
    assert {s.device for s in r.samples} == {0, 1}
    trace = r.to_chrome_trace()
    pids = {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert pids == {1, 2}
    for s in streams:
        s.close()
    for b in bufs:
        driver.mem_free(b)


def test_region_on_a_borrowed_stream_handle(buffer, pool):
    owned = GpuStream(0)
    t = Timer(pool=pool, nvtx=False)
    with t.region("raw", as_stream(owned.handle, device=0)):
        driver.memset_d32_async(buffer, 5, MiB, owned._handle)
    assert t.results(timeout=30).summary()["raw"].count == 1
    owned.close()


def test_laps_time_back_to_back_phases(buffer, pool, stream, latch):
    """Phases of different sizes on one stream, queued behind a latch so the GPU runs them back
    to back: each lap's time follows its work, the phases tile the stream's time with no gap,
    and the pool gets every event back."""
    t = Timer(pool=pool, nvtx=False)
    driver.memset_d32_async(buffer, 0, 16 * MiB, stream._handle)  # warm up
    stream.synchronize(timeout=30)
    latch.block(stream)
    with t.laps(stream) as lap:
        for _ in range(20):
            lap("small")
            driver.memset_d32_async(buffer, 1, 1 * MiB, stream._handle)
            lap("large")
            driver.memset_d32_async(buffer, 2, 16 * MiB, stream._handle)
    latch.release()
    r = t.results(timeout=30)
    summary = r.summary()
    assert {n: st.count for n, st in summary.items()} == {"small": 20, "large": 20}
    assert summary["large"].median_ms > summary["small"].median_ms > 0
    assert all(p.start_ms + p.duration_ms == pytest.approx(n.start_ms, abs=1e-3)  # float32 ms from the driver
               for p, n in zip(r.samples, r.samples[1:]))
    assert pool.stats().live <= 1  # at most the timer's reference event
