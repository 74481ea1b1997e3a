"""Timer's GPU path against a simulated driver (no GPU needed): lazy harvesting of event pairs,
streams finishing out of order, the per-device reference event, failures, and handles going
back to the pool. The real driver is exercised by tests/test_gpu_timer.py."""

from __future__ import annotations

import math
import threading

import pytest
from helpers.fakes import ProtocolStream, TorchLikeStream, fake_stream
from helpers.threads import join_all

from cudaevents import CudaError, Timer
from cudaevents._core.streams import GpuStream, stream_identity

ILLEGAL_ADDRESS = 700


@pytest.fixture
def gpu(fake_driver):
    """The simulated GPU: records stay pending until ``gpu.run(stream)``."""
    return fake_driver


stream = fake_stream  # stream(handle, device=0): a stream of the simulated GPU


def test_pairs_are_harvested_lazily_and_go_back_to_the_pool(gpu, fake, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, harvest_every=4, nvtx=False)
    for round_ in range(5):
        for _ in range(8):
            with t.region("k", a):
                pass
        assert t.pending == 8 and t.harvest() == 0  # the GPU has not run: nothing to take
        gpu.run(a)
        assert t.harvest() == 8 and t.pending == 0
        # the reference event, and 2 x harvest_every spares kept for the next regions
        assert fake_pool.stats().live == 1 + 8
    r = t.results(timeout=5)
    assert fake_pool.stats().live == 1  # results() found nothing pending: the spares went back
    assert len(r) == 40 and r.names() == ["k"]
    assert all(s.duration_ms == 1.0 for s in r.samples)  # start and end were recorded back to back
    starts = [s.start_ms for s in r.samples]
    assert starts == sorted(starts) and starts[0] == 1.0  # measured from the reference event
    # 8 regions in flight at most: 16 handles plus the reference, never one per region
    assert fake_pool.stats().creates == 17 and len(fake.created) == 17


def test_streams_finish_out_of_order(gpu, fake_pool):
    a, b = stream(0x10), stream(0x20)
    t = Timer(pool=fake_pool, nvtx=False)
    gpu.run(a)  # nothing there yet
    with t.region("a", a):
        pass
    gpu.run(a)  # the reference (recorded on a) and a's region complete
    with t.region("b", b):
        pass
    with t.region("a2", a):
        pass
    gpu.run(b)
    assert t.harvest() == 2  # "a" and "b"; "a2" is still pending on a
    assert t.snapshot().names() == ["a", "b"]
    gpu.run(a)
    r = t.results(timeout=5)
    assert r.names() == ["a", "b", "a2"]
    assert len({s.stream for s in r.samples}) == 2


def test_a_lagging_reference_holds_back_other_streams(gpu, fake_pool):
    a, b = stream(0x10), stream(0x20)
    t = Timer(pool=fake_pool, nvtx=False)
    with t.region("first", a):  # the device's reference event goes on a, before this region
        pass
    with t.region("b", b):
        pass
    gpu.run(b)
    assert t.harvest() == 0  # b's pair is complete, but its start cannot be placed yet
    with pytest.raises(TimeoutError):
        t.results(timeout=0.05)
    gpu.run(a)
    assert t.results(timeout=5).names() == ["first", "b"]


def test_harvest_reads_elapsed_times_of_finished_pairs_only(gpu, fake_pool):
    """compute-sanitizer reports every cuEventElapsedTime that returns NOT_READY as an API
    error, so a profiled program run under it would show errors that are not there: the harvest
    finds how far each stream has got with cuEventQuery and reads finished pairs alone."""
    a, b = stream(0x10), stream(0x20)
    t = Timer(pool=fake_pool, harvest_every=4, nvtx=False)
    for i in range(40):
        with t.region("a", a):
            pass
        with t.region("b", b):
            pass
        if i % 3 == 0:
            gpu.run(a, events=5)  # the reference and some of a's pairs, ending mid-region
        if i % 5 == 0:
            gpu.run(b, events=7)
        t.harvest()
    assert 0 < t.collected < 80 and t.pending == 80 - t.collected
    gpu.run(a)
    gpu.run(b)
    r = t.results(timeout=5)
    assert len(r) == 80 and all(s.duration_ms >= 1.0 for s in r.samples)
    assert gpu.early_reads == 0


def test_a_failed_record_loses_no_handle(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    with t.region("ok", a):
        pass
    gpu.fail("cuEventRecord", ILLEGAL_ADDRESS)
    with pytest.raises(CudaError, match="cuEventRecord"):
        with t.region("begin fails", a):
            pass
    gpu.fail("cuEventRecord", 0)
    token = t.begin("end fails", a)
    gpu.fail("cuEventRecord", ILLEGAL_ADDRESS)
    with pytest.raises(CudaError, match="cuEventRecord"):
        t.end(token)
    gpu.fail("cuEventRecord", 0)
    gpu.run(a)
    assert t.results(timeout=5).names() == ["ok"]
    assert fake_pool.stats().live == 1


def test_a_sticky_error_surfaces_from_harvest(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    for _ in range(3):
        with t.region("k", a):
            pass
    gpu.run(a)
    gpu.fail("cuEventElapsedTime", ILLEGAL_ADDRESS)
    with pytest.raises(CudaError, match="cuEventElapsedTime"):
        t.harvest()
    assert t.pending == 3  # kept: nothing is reported as measured that was not


def test_discarded_regions_give_their_pair_back(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    token = t.begin("dropped", a)
    assert fake_pool.stats().live == 3  # the reference and the region's pair
    t.discard(token)
    again = t.begin("reuses the discarded pair", a)
    assert fake_pool.stats().live == 3 and fake_pool.stats().creates == 3
    t.discard(again)
    gpu.run(a)
    assert len(t.results(timeout=5)) == 0
    assert fake_pool.stats().live == 1


def test_stream_identity():
    assert stream_identity(TorchLikeStream(0x30, 1)) == (0x30, 1)
    assert stream_identity(ProtocolStream(0x40, 0)) == (0x40, 0)
    assert stream_identity(ProtocolStream(0x40)) == (0x40, None)  # no device stated
    assert stream_identity(0x40) is None and stream_identity(None) is None
    assert stream_identity(object()) is None


def test_stream_objects_of_other_libraries_are_wrapped_once(gpu, fake_pool, monkeypatch):
    made = []
    original = GpuStream._borrow.__func__

    def counting_borrow(cls, handle, device, owner):
        made.append(handle)
        return original(cls, handle, device, owner)

    monkeypatch.setattr(GpuStream, "_borrow", classmethod(counting_borrow))
    t = Timer(pool=fake_pool, nvtx=False)
    for _ in range(50):
        with t.region("k", TorchLikeStream(0x30)):  # a new object each time, as torch gives
            pass
    assert len(made) == 2  # as_stream's wrapper once, and the cached one without an owner
    gpu.run(stream(0x30))
    r = t.results(timeout=5)
    assert len(r) == 50 and {s.stream for s in r.samples} == {0x30}


def test_a_dropped_timer_gives_every_event_back(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, harvest_every=2, nvtx=False)
    for _ in range(6):
        with t.region("k", a):
            pass
    gpu.run(a)
    t.harvest()  # spares kept
    for _ in range(3):
        with t.region("pending", a):  # never run: still pending when the timer goes
            pass
    assert fake_pool.stats().live > 1
    del t
    import gc

    gc.collect()
    assert fake_pool.stats().live == 0


def test_threads_share_a_timer_without_sharing_events(gpu, fake_pool):
    streams = [stream(0x100 + i) for i in range(8)]
    t = Timer(pool=fake_pool, harvest_every=8, nvtx=False)

    def work(s):
        for _ in range(500):
            with t.region("k", s):
                pass

    with gpu.running(every=0.001):  # the "GPU" completes work while the threads keep timing
        workers = [threading.Thread(target=work, args=(s,)) for s in streams]
        for w in workers:
            w.start()
        join_all(workers, timeout=60)
    r = t.results(timeout=10)
    assert len(r) == 8 * 500 and gpu.twice == []
    assert {s.stream for s in r.samples} == {s._id for s in streams}
    assert fake_pool.stats().live == 1


def test_without_a_timeline_regions_have_no_start_times(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False, timeline=False)
    for _ in range(5):
        with t.region("k", a):
            pass
    gpu.run(a)
    r = t.results(timeout=5)
    assert [s.duration_ms for s in r.samples] == [1.0] * 5
    assert all(math.isnan(s.start_ms) for s in r.samples)
    assert gpu.calls["cuEventElapsedTime"] == 5  # one driver call per region, not two
    assert r.summary()["k"].count == 5
    with pytest.raises(ValueError, match="timeline=True"):
        r.to_chrome_trace()
    with pytest.raises(ValueError, match="timeline=True"):
        r.plot("unused.png", kind="timeline")


def test_region_names_are_checked(gpu, fake_pool):
    t = Timer(pool=fake_pool, nvtx=False)
    with pytest.raises(TypeError, match="name is a str"):
        t.region(7, stream(0x10))
    with pytest.raises(TypeError, match="name is a str"):
        t.begin(None, stream(0x10))


class FakeNvtx:
    """Stands in for the ``nvtx`` package: records the ranges pushed and popped."""

    def __init__(self):
        self.calls = []

    def push_range(self, name):
        self.calls.append(("push", name))

    def pop_range(self):
        self.calls.append(("pop",))


def test_regions_open_nvtx_ranges_of_the_same_name(gpu, fake_pool, monkeypatch):
    import sys

    fake_nvtx = FakeNvtx()
    monkeypatch.setitem(sys.modules, "nvtx", fake_nvtx)
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=True)
    with t.region("outer", a):
        with t.region("inner", a):
            pass
    token = t.begin("dropped", a)
    t.discard(token)
    assert fake_nvtx.calls == [("push", "outer"), ("push", "inner"), ("pop",), ("pop",), ("push", "dropped"), ("pop",)]
    quiet = Timer(pool=fake_pool, nvtx=False)  # off although installed
    with quiet.region("x", a):
        pass
    assert len(fake_nvtx.calls) == 6
    gpu.run(a)
    assert t.results(timeout=5).names() == ["inner", "outer"]


def test_gpu_regions_carry_the_step_they_ended_in(gpu, fake_pool):
    a, b = stream(0x10), stream(0x20)
    t = Timer(pool=fake_pool, nvtx=False)
    with t.region("fwd", a):
        pass
    t.step()
    with t.region("fwd", a), t.region("copy", b):
        pass
    gpu.run()
    r = t.results(timeout=5)
    assert sorted((s.name, s.step) for s in r.samples) == [("copy", 1), ("fwd", 0), ("fwd", 1)]


def test_a_region_without_a_stream_follows_torchs_current_stream(gpu, fake_pool, monkeypatch):
    """Where the program uses CUDA through torch, a bare region times torch's current stream
    (inside ``with torch.cuda.stream(s):``, ``s``), as LayerTimer and benchmark() do; a
    stand-in torch says which stream is current."""
    import sys
    import types

    current = {"raw": 0x51}

    def fake_torch(initialized: bool):
        cuda = types.SimpleNamespace(is_initialized=lambda: initialized, current_device=lambda: 0)
        return types.SimpleNamespace(cuda=cuda, _C=types.SimpleNamespace(
            _cuda_getDevice=lambda: 0, _cuda_getCurrentRawStream=lambda device: current["raw"]))

    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    t = Timer(pool=fake_pool, nvtx=False)
    with t.region("on torch's stream"):
        pass
    current["raw"] = 0x52  # `with torch.cuda.stream(other):`
    with t.region("on the other"):
        pass
    # another program: torch imported, its CUDA never started: the legacy stream
    monkeypatch.setitem(sys.modules, "torch", fake_torch(False))
    with t.region("legacy"):
        pass
    gpu.run()
    r = t.results(timeout=5)
    assert {s.name: s.stream for s in r.samples} == {"on torch's stream": 0x51, "on the other": 0x52, "legacy": 0}


def test_regions_that_meet_share_one_event(gpu, fake_pool):
    """Where regions end as others begin with nothing enqueued between (LayerTimer's
    backward), one record serves them all, and each handle goes back to the pool once."""
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    x = t.begin("x", a)
    y = t.begin("y", a)
    records = gpu.records
    z, w = t._meet([y, x], ["z", "w"], a)
    assert gpu.records == records + 1
    t.end(w)
    t.end(z)
    gpu.run(a)
    r = {s.name: s for s in t.results(timeout=5).samples}
    assert r["x"].start_ms + r["x"].duration_ms == r["y"].start_ms + r["y"].duration_ms == r["z"].start_ms
    assert r["z"].start_ms == r["w"].start_ms and r["w"].duration_ms < r["z"].duration_ms
    assert fake_pool.stats().live == 1  # the reference event: every shared handle given back once


def test_alone_a_meeting_is_a_plain_end_or_begin(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    x = t.begin("x", a)
    records = gpu.records
    assert t._meet([x], [], a) == []
    (y,) = t._meet([], ["y"], a)
    t.end(y)
    assert gpu.records == records + 3 and not t._shared
    gpu.run(a)
    assert t.results(timeout=5).names() == ["x", "y"] and fake_pool.stats().live == 1


@pytest.mark.parametrize("harvested_first", [False, True])
def test_discarding_a_region_that_began_at_a_shared_event(gpu, fake_pool, harvested_first):
    """The region that ended there keeps its sample; the shared handle goes back once, after
    both are done with it, in either order."""
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    x = t.begin("x", a)
    (z,) = t._meet([x], ["z"], a)
    if harvested_first:
        gpu.run(a)
        assert t.harvest() == 1
    t.discard(z)
    gpu.run(a)
    assert t.results(timeout=5).names() == ["x"]
    assert fake_pool.stats().live == 1 and not t._shared


def test_a_dropped_timer_gives_shared_events_back_once(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    x = t.begin("x", a)
    (z,) = t._meet([x], ["z"], a)
    t.end(z)  # both pending, sharing a handle
    del t, x, z
    import gc

    gc.collect()
    assert fake_pool.stats().live == 0


def test_laps_cost_one_record_per_phase(gpu, fake_pool):
    """Back-to-back phases: each begins where the one before ended, N phases in N + 1 records,
    and every handle goes back to the pool."""
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    with t.region("warm", a):  # the reference event and the spares first
        pass
    records = gpu.records
    with t.laps(a) as lap:
        for _ in range(3):
            lap("forward")
            lap("backward")
    assert gpu.records - records == 7
    gpu.run(a)
    r = t.results(timeout=5)
    laps = [s for s in r.samples if s.name != "warm"]
    assert [s.name for s in laps] == ["forward", "backward"] * 3
    assert all(p.start_ms + p.duration_ms == n.start_ms for p, n in zip(laps, laps[1:]))
    assert fake_pool.stats().live == 1 and not t._shared


def test_laps_end_their_last_phase_when_an_exception_leaves_the_block(gpu, fake_pool):
    a = stream(0x10)
    t = Timer(pool=fake_pool, nvtx=False)
    with pytest.raises(KeyError):
        with t.laps(a) as lap:
            lap("load")
            raise KeyError("batch")
    gpu.run(a)
    assert t.results(timeout=5).names() == ["load"] and fake_pool.stats().live == 1


def test_laps_misuse_says_what_to_do(gpu, fake_pool):
    t = Timer(pool=fake_pool, nvtx=False)
    laps = t.laps(stream(0x10))
    with pytest.raises(ValueError, match="inside their with block"):
        laps("early")
    with laps as lap:
        with pytest.raises(TypeError, match="a phase's name is a str"):
            lap(3)
    with pytest.raises(ValueError, match="have ended"):
        lap("late")
    with pytest.raises(ValueError, match="entered already"):
        with laps:
            pass


def test_threads_taking_laps_and_meeting_regions_never_reuse_a_pending_event(gpu, fake_pool):
    """Shared events under threads: laps, regions meeting (as LayerTimer's backward does),
    discards and plain regions on eight streams while the GPU runs and harvests happen in
    between: every sample arrives, no event is recorded again while a record of it is still
    pending, and every handle goes back to the pool once."""
    import random

    streams = [stream(0x200 + i) for i in range(8)]
    t = Timer(pool=fake_pool, harvest_every=8, nvtx=False)
    kept = [0] * len(streams)

    def work(i):
        s, rng = streams[i], random.Random(i)
        for _ in range(150):
            choice = rng.randrange(3)
            if choice == 0:
                with t.laps(s) as lap:
                    for name in ("a", "b", "c"):
                        lap(name)
                kept[i] += 3
            elif choice == 1:
                outer = t.begin("outer", s)
                inner = t.begin("inner", s)
                nxt, other = t._meet([inner, outer], ["next", "other"], s)
                if rng.random() < 0.5:
                    t.discard(other)
                    kept[i] -= 1
                else:
                    t.end(other)
                t.end(nxt)
                kept[i] += 4
            else:
                with t.region("plain", s):
                    pass
                kept[i] += 1

    with gpu.running():
        workers = [threading.Thread(target=work, args=(i,)) for i in range(len(streams))]
        for w in workers:
            w.start()
        join_all(workers, timeout=60)
    r = t.results(timeout=10)
    assert len(r) == sum(kept) and gpu.twice == [] and gpu.early_reads == 0
    assert fake_pool.stats().live == 1 and not t._shared
