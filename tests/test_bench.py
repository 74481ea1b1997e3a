"""benchmark() without a GPU: argument checks that come before any CUDA call, and
BenchmarkResult built from plain lists."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from helpers.subproc import NO_GPU, run_script

import cudaevents
from cudaevents import BenchmarkResult, EventPool, Stats, benchmark
from cudaevents._core import driver
from cudaevents._profiler import benchmark as _bench


@pytest.fixture
def no_cuda(monkeypatch):
    """Fail loudly if anything reaches the driver or resolves a stream."""

    def touched(*args, **kwargs):
        raise AssertionError("benchmark() touched CUDA before validating its arguments")

    monkeypatch.setattr(driver, "bindings", touched)
    monkeypatch.setattr(_bench, "as_stream", touched)
    monkeypatch.setattr(_bench, "default_pool", touched)


def noop():
    pass


@pytest.mark.parametrize("fn", [None, 3, "x @ y", [noop]])
def test_fn_must_be_callable(no_cuda, fn):
    with pytest.raises(TypeError, match=r"needs a callable.*lambda"):
        benchmark(fn)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"warmup": -1}, ValueError, r"warmup must be >= 0, got -1; pass e\.g\. warmup=10"),
        ({"warmup": 2.5}, TypeError, r"warmup must be an int, got float"),
        ({"warmup": True}, TypeError, r"warmup must be an int, got bool"),
        ({"warmup": "10"}, TypeError, r"warmup must be an int, got str"),
        ({"repeat": 0}, ValueError, r"repeat must be >= 1, got 0; pass e\.g\. repeat=100"),
        ({"repeat": -5}, ValueError, r"repeat must be >= 1"),
        ({"repeat": 10.0}, TypeError, r"repeat must be an int, got float"),
        ({"repeat": None}, TypeError, r"repeat must be an int, got NoneType"),
        ({"flush_l2": 1}, TypeError, r"flush_l2 must be True or False"),
        ({"graph": "yes"}, TypeError, r"graph must be True or False"),
        ({"pool": object()}, TypeError, r"pool must be an EventPool or None"),
        ({"timeout": -1}, ValueError, r"timeout must be >= 0"),
        ({"timeout": "1"}, TypeError, r"timeout must be None or a number"),
    ],
)
def test_invalid_arguments_are_rejected_before_cuda(no_cuda, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        benchmark(noop, **kwargs)


def test_zero_warmup_and_an_explicit_pool_pass_validation(monkeypatch):
    seen = []

    def stop(obj, *args, **kwargs):
        seen.append(obj)
        raise RuntimeError("stop here")

    monkeypatch.setattr(_bench, "as_stream", stop)
    monkeypatch.setattr(_bench, "_loaded_torch", lambda: None)
    with pytest.raises(RuntimeError, match="stop here"):
        benchmark(noop, warmup=0, repeat=1, pool=EventPool(), stream="the stream", timeout=0)
    assert seen == ["the stream"]


def test_graph_mode_without_torch_says_what_it_needs(no_cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch.*capturable callable such as PyTorch ops.*graph=False"):
        benchmark(noop, graph=True)


def test_without_a_device_a_valid_call_raises_cuda_unavailable():
    r = run_script("benchmark_without_device.py", timeout=120, env=NO_GPU)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "unavailable"


def test_exported():
    assert cudaevents.benchmark is benchmark and cudaevents.BenchmarkResult is BenchmarkResult
    assert "benchmark" in cudaevents.__all__ and "BenchmarkResult" in cudaevents.__all__


# -- BenchmarkResult --------------------------------------------------------------------------
def test_result_from_plain_lists():
    r = BenchmarkResult.from_samples([3.0, 1.0, 2.0, 4.0], [0.01, 0.03, 0.02, 0.02], native_events_created=0,
                                     span_ms=12.5)
    assert r.gpu_ms == [3.0, 1.0, 2.0, 4.0]  # call order kept
    assert r.cpu_ms == [0.01, 0.03, 0.02, 0.02]
    assert isinstance(r.gpu, Stats) and isinstance(r.cpu, Stats)
    assert r.gpu.count == 4 and r.gpu.median_ms == 2.5 and r.gpu.min_ms == 1.0 and r.gpu.max_ms == 4.0
    assert r.gpu.total_ms == 10.0 and r.gpu.mean_ms == 2.5
    assert r.cpu.median_ms == pytest.approx(0.02) and r.cpu.count == 4
    assert r.native_events_created == 0 and r.span_ms == 12.5


def test_result_is_frozen():
    r = BenchmarkResult.from_samples([1.0], [0.5])
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.gpu_ms = [2.0]
    assert r.span_ms is None and r.native_events_created == 0


def test_result_needs_samples():
    with pytest.raises(ValueError, match="at least one"):
        BenchmarkResult.from_samples([], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        BenchmarkResult.from_samples([1.0], [])


def test_str_is_one_line_with_units():
    r = BenchmarkResult.from_samples([0.5, 0.25, 0.75], [0.004, 0.006, 0.005], native_events_created=0)
    text = str(r)
    assert "\n" not in text
    assert text.startswith("gpu 500.00 us median (min 250.00 us, p99 ")
    assert "n=3" in text
    assert "cpu 5.00 us median per call" in text
    assert text.endswith("0 native events created")

    slow = BenchmarkResult.from_samples([1500.0, 2500.0], [2.0, 2.0], native_events_created=7)
    text = str(slow)
    assert "gpu 2.000 s median" in text and "min 1.500 s" in text
    assert "cpu 2.000 ms median per call" in text and "7 native events created" in text


def test_format_ms_units():
    f = _bench._format_ms
    assert f(0.0) == "0.00 us"
    assert f(0.0123) == "12.30 us"
    assert f(1.0) == "1.000 ms"
    assert f(999.9994) == "999.999 ms"
    assert f(1000.0) == "1.000 s"
    assert f(float("nan")) == "nan ms"


# -- the loop, with stand-ins for the stream, the events and the flush -------------------------
class _Sim:
    """A fake GPU: fn advances its clock; events read it when recorded; every host-side
    wait and each enqueued operation is logged in order."""

    def __init__(self, pool):
        self.pool = pool
        self.clock = 0.0
        self.log: list[str] = []
        self.made = 0
        sim = self

        class Stream:
            _device, _special, _handle, _owner = 0, False, 1234, None

            def synchronize(self, timeout=None):
                sim.log.append("stream.synchronize")

        class Event:
            def __init__(self, device, *, timing, pool):
                assert timing and pool is sim.pool
                sim.made += 1
                self._pool, self._h, self.t = pool, pool.acquire(device, 0), None

            def record(self, stream):
                assert isinstance(stream, Stream)
                self.t = sim.clock
                sim.log.append("record")
                return self

            def synchronize(self, timeout=None):
                sim.log.append("event.synchronize")

            def elapsed_time(self, end):
                return end.t - self.t

            def close(self):
                if self._h is not None:
                    self._pool.release(0, 0, self._h)
                    self._h = None

        class Flusher:
            def __init__(self, s):
                assert isinstance(s, Stream)

            def __call__(self):
                sim.clock += 100.0  # a flush takes long, outside the pairs
                sim.log.append("flush")

        self.Stream, self.Event, self.Flusher = Stream, Event, Flusher

    def install(self, monkeypatch):
        monkeypatch.setattr(_bench, "as_stream", lambda obj, *a, **k: self.Stream())
        monkeypatch.setattr(_bench, "CudaEvent", self.Event)
        monkeypatch.setattr(_bench, "_Flusher", self.Flusher)
        monkeypatch.setattr(_bench, "_loaded_torch", lambda: None)

    def work(self, ms):
        def fn():
            self.clock += ms
            self.log.append("call")

        return fn


def test_loop_records_pairs_and_waits_once_at_the_end(monkeypatch, fake_pool, fake):
    sim = _Sim(fake_pool)
    sim.install(monkeypatch)
    r = benchmark(sim.work(1.5), warmup=3, repeat=5, pool=fake_pool)
    assert sim.made == 2 * 5 + 2 and len(fake.created) == 12  # acquired once, up front
    assert sim.log == ["call"] * 3 + ["record"] + ["record", "call", "record"] * 5 + ["record", "event.synchronize"]
    assert r.gpu_ms == [1.5] * 5 and r.span_ms == 7.5
    assert len(r.cpu_ms) == 5 and all(v >= 0 for v in r.cpu_ms)
    assert r.native_events_created == 0
    st = fake_pool.stats()
    assert st.live == 0 and st.cached == 12  # all back in the pool
    again = benchmark(sim.work(1.5), warmup=0, repeat=5, pool=fake_pool)
    assert len(fake.created) == 12 and again.native_events_created == 0  # a warm pool creates nothing


def test_flushes_come_before_each_pair(monkeypatch, fake_pool):
    sim = _Sim(fake_pool)
    sim.install(monkeypatch)
    r = benchmark(sim.work(2.0), warmup=1, repeat=3, flush_l2=True, pool=fake_pool)
    assert sim.log == (["flush", "call", "record"] + ["flush", "record", "call", "record"] * 3
                       + ["record", "event.synchronize"])
    assert r.gpu_ms == [2.0] * 3  # the flushes are outside the timed pairs
    assert r.span_ms == 3 * 102.0


def test_events_created_by_fn_in_the_timed_part_are_counted(monkeypatch, fake_pool):
    sim = _Sim(fake_pool)
    sim.install(monkeypatch)
    work = sim.work(1.0)

    def fn():
        work()
        fake_pool.release(0, 7, fake_pool.acquire(0, 7))  # another key: a pool miss the first time

    r = benchmark(fn, warmup=0, repeat=4, pool=fake_pool)
    assert r.native_events_created == 1


def test_an_error_in_fn_returns_the_events_and_waits_for_nothing(monkeypatch, fake_pool):
    sim = _Sim(fake_pool)
    sim.install(monkeypatch)
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 4:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        benchmark(fn, warmup=1, repeat=10, flush_l2=True, pool=fake_pool, timeout=5)
    assert fake_pool.stats().live == 0
    # the flush buffer is kept for the process: nothing to free, so no wait for the stream
    assert "stream.synchronize" not in sim.log and "event.synchronize" not in sim.log


# -- the flush buffer, with the simulated driver ------------------------------------------------
@pytest.fixture
def flush_driver(monkeypatch):
    """The simulated driver (its GPU keeps up), with benchmark()'s flush buffers forgotten
    before and restored after the test."""
    from helpers.fake_driver import FakeDriver, bound

    monkeypatch.setattr(_bench, "_flush_buffers", {}, raising=False)
    monkeypatch.setattr(_bench, "_outgrown", [], raising=False)
    monkeypatch.setattr(_bench, "_loaded_torch", lambda: None)
    with bound(monkeypatch, FakeDriver(keeps_up=True, devices=2)) as fake:
        yield fake


def test_flush_l2_allocates_one_buffer_per_device_and_never_frees_it(flush_driver, fake_pool):
    """cuMemFree waits for the whole device: freeing the flush buffer after each call deadlocked
    against a stream held on a counter wait that the host releases later. Steady state: no
    cuMemAlloc, no cuMemFree."""
    from helpers.fakes import fake_stream

    fake = flush_driver
    s0, s0b, s1 = fake_stream(0x10, 0), fake_stream(0x11, 0), fake_stream(0x20, 1)
    for _ in range(2):
        r = benchmark(noop, warmup=1, repeat=4, stream=s0, flush_l2=True, pool=fake_pool, timeout=10)
        assert len(r.gpu_ms) == 4
    assert fake.calls["cuMemAlloc"] == 1 and fake.calls["cuMemFree"] == 0
    assert fake.calls["cuMemsetD32Async"] == 2 * (1 + 4)  # one flush before every call
    benchmark(noop, warmup=0, repeat=2, stream=s0b, flush_l2=True, pool=fake_pool, timeout=10)
    assert fake.calls["cuMemAlloc"] == 1  # another stream of the device shares the buffer
    benchmark(noop, warmup=0, repeat=2, stream=s1, flush_l2=True, pool=fake_pool, timeout=10)
    benchmark(noop, warmup=0, repeat=2, stream=s1, flush_l2=True, pool=fake_pool, timeout=10)
    assert fake.calls["cuMemAlloc"] == 2 and fake.calls["cuMemFree"] == 0  # one per device
    assert set(_bench._flush_buffers) == {0, 1}
    benchmark(noop, warmup=0, repeat=2, stream=s0, pool=fake_pool, timeout=10)  # no flush: no buffer
    assert fake.calls["cuMemAlloc"] == 2 and fake_pool.stats().live == 0


def test_an_error_in_fn_keeps_the_flush_buffer_and_frees_nothing(flush_driver, fake_pool):
    from helpers.fakes import fake_stream

    fake = flush_driver

    def fn():
        raise KeyError("boom")

    for _ in range(2):
        with pytest.raises(KeyError, match="boom"):
            benchmark(fn, warmup=1, repeat=4, stream=fake_stream(0x10), flush_l2=True, pool=fake_pool, timeout=5)
    assert fake.calls["cuMemAlloc"] == 1 and fake.calls["cuMemFree"] == 0
    assert fake.calls["cuStreamSynchronize"] == 0 and fake_pool.stats().live == 0


def test_a_flush_buffer_outgrown_is_replaced_and_kept(flush_driver):
    fake = flush_driver
    small = _bench._flush_buffer(0, 1 << 20)
    assert _bench._flush_buffer(0, 1 << 20) == small and _bench._flush_buffer(0, 4096) == small
    big = _bench._flush_buffer(0, 2 << 20)  # a bigger need: a new buffer; the old one is never freed
    assert big != small and _bench._flush_buffer(0, 1 << 20) == big
    assert _bench._outgrown == [small]
    assert fake.calls["cuMemAlloc"] == 2 and fake.calls["cuMemFree"] == 0


# -- graph capture and torch streams, against a minimal stand-in for torch ---------------------
class _FakeTorch:
    """Just the torch.cuda surface that _bench uses, logging what happens."""

    def __init__(self, capture_warning=None, capture_error=None):
        import contextlib
        import types
        import warnings

        log = self.log = []
        fake = self

        class Stream:
            def __init__(self, device=None, handle=99):
                self.device, self.cuda_stream = device, handle

            def wait_stream(self, other):
                log.append("wait_stream")

        class ExternalStream(Stream):
            def __init__(self, handle, device=None):
                super().__init__(device, handle)

        class CUDAGraph:
            def replay(self):
                log.append("replay")

        self.current = Stream("cuda:0", 0)

        @contextlib.contextmanager
        def stream(s):
            prev, fake.current = fake.current, s
            log.append(f"stream {s.cuda_stream}")
            try:
                yield
            finally:
                fake.current = prev

        @contextlib.contextmanager
        def graph(g):
            log.append("capture begin")
            fake.capturing = True
            try:
                yield
                if capture_error:
                    raise capture_error
                if capture_warning:
                    warnings.warn(capture_warning, UserWarning)
            finally:
                fake.capturing = False
                log.append("capture end")

        self.capturing = False
        self.cuda = types.SimpleNamespace(
            Stream=Stream, ExternalStream=ExternalStream, CUDAGraph=CUDAGraph, stream=stream, graph=graph,
            current_stream=lambda: fake.current, default_stream=lambda device: Stream(device, 0),
            is_available=lambda: True,
        )
        self.device = lambda kind, index: f"{kind}:{index}"

    def fn(self):
        self.log.append("capture fn" if self.capturing else f"eager on {self.current.cuda_stream}")


def test_capture_warms_up_on_a_side_stream_then_captures_once():
    torch = _FakeTorch()
    g = _bench._capture(torch, torch.fn)
    assert isinstance(g, torch.cuda.CUDAGraph)
    eager = [f"eager on {99}"] * _bench._EAGER_BEFORE_CAPTURE
    assert torch.log == ["wait_stream", "stream 99", *eager, "wait_stream", "capture begin", "capture fn",
                         "capture end"]


def test_an_empty_capture_is_an_error_that_names_the_fix():
    torch = _FakeTorch(capture_warning="The CUDA Graph is empty. This usually means ...")
    with pytest.raises(RuntimeError, match=r"empty CUDA graph.*capturable callable such as PyTorch ops"):
        _bench._capture(torch, torch.fn)


def test_a_failed_capture_is_an_error_that_names_the_fix():
    torch = _FakeTorch(capture_error=RuntimeError("operation not permitted when stream is capturing"))
    with pytest.raises(RuntimeError, match=r"could not capture.*not permitted.*capturable callable"):
        _bench._capture(torch, torch.fn)


def test_other_capture_warnings_reach_the_caller():
    torch = _FakeTorch(capture_warning="something else")
    with pytest.warns(UserWarning, match="something else"):
        _bench._capture(torch, torch.fn)


def test_torch_stream_for_each_kind_of_stream():
    torch = _FakeTorch()

    class S:
        def __init__(self, handle, owner=None):
            self._handle, self._device, self._owner = handle, 1, owner

    mine = torch.cuda.Stream("cuda:1", 1234)
    assert _bench._torch_stream_for(torch, S(1234, owner=mine)) is mine
    for legacy in (0, 1):
        got = _bench._torch_stream_for(torch, S(legacy))
        assert got.cuda_stream == 0 and got.device == "cuda:1"
    assert _bench._torch_stream_for(torch, S(2)) is None
    ext = _bench._torch_stream_for(torch, S(0xABC, owner=object()))
    assert isinstance(ext, torch.cuda.ExternalStream) and ext.cuda_stream == 0xABC and ext.device == "cuda:1"


def test_graph_mode_times_replays_on_the_stream_made_current(monkeypatch, fake_pool):
    sim = _Sim(fake_pool)
    sim.install(monkeypatch)
    torch = _FakeTorch()
    monkeypatch.setattr(_bench, "_torch_for_graphs", lambda: torch)
    benchmark(torch.fn, warmup=2, repeat=3, graph=True, pool=fake_pool)
    assert torch.log[0] == "stream 1234"  # the benchmark stream became torch's current stream
    assert torch.log.count("capture fn") == 1
    assert torch.log[-5:] == ["replay"] * 5  # warmup + repeat replays, no eager call among them


def test_graph_mode_needs_a_cuda_torch(no_cuda, monkeypatch):
    torch = _FakeTorch()
    torch.cuda.is_available = lambda: False
    monkeypatch.setattr(_bench, "_torch_for_graphs", lambda: torch)
    with pytest.raises(RuntimeError, match="needs PyTorch with CUDA"):
        benchmark(noop, graph=True)
