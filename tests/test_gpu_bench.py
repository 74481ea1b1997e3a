"""benchmark() on a real GPU: a known memset workload, the warm pool, the single host wait,
L2 flushing and PyTorch graph mode."""

from __future__ import annotations

import threading
import time

import pytest

from cudaevents import BenchmarkResult, as_stream, benchmark
from cudaevents._core import driver

pytestmark = pytest.mark.gpu

MiB = 1 << 20
TB_PER_S = 2e12  # rough memset bandwidth of a current data-center GPU (H100: ~2.5-3 TB/s)


@pytest.fixture
def buffer(buffers):
    return buffers(1024 * MiB)


def memset_of(ptr, nbytes, stream):
    words = nbytes // 4
    handle = stream._handle

    def fn():
        driver.memset_d32_async(ptr, 7, words, handle)

    return fn


def test_memset_time_matches_its_bandwidth_and_grows_with_size(stream, buffer, pool):
    r = benchmark(memset_of(buffer, 256 * MiB, stream), warmup=5, repeat=30, stream=stream, pool=pool, timeout=60)
    assert isinstance(r, BenchmarkResult)
    assert len(r.gpu_ms) == len(r.cpu_ms) == 30 and r.gpu.count == r.cpu.count == 30
    assert min(r.gpu_ms) > 0 and min(r.cpu_ms) > 0
    expected_ms = 256 * MiB / TB_PER_S * 1e3  # about 0.13 ms
    assert expected_ms / 3 < r.gpu.median_ms < expected_ms * 3, str(r)
    assert r.span_ms >= r.gpu.total_ms * 0.99  # the span holds every timed call
    big = benchmark(memset_of(buffer, 1024 * MiB, stream), warmup=2, repeat=10, stream=stream, pool=pool,
                    timeout=60)
    assert big.gpu.median_ms > 2 * r.gpu.median_ms, f"{big} vs {r}"
    assert "median" in str(r) and "\n" not in str(r)


def test_a_warm_pool_creates_no_native_events(stream, buffer, pool):
    fn = memset_of(buffer, MiB, stream)
    first = benchmark(fn, warmup=3, repeat=40, stream=stream, pool=pool, timeout=60)
    st = pool.stats()
    assert st.creates == 2 * 40 + 2  # acquired once, before the timed part
    assert first.native_events_created == 0
    assert st.live == 0  # every event went back
    second = benchmark(fn, warmup=3, repeat=40, stream=stream, pool=pool, timeout=60)
    after = pool.stats()
    assert second.native_events_created == 0
    assert after.creates == st.creates  # nothing created at all in the second call
    assert after.reuses >= st.reuses + 2 * 40 + 2
    assert after.live == 0
    smaller = benchmark(fn, warmup=0, repeat=10, stream=stream, pool=pool, timeout=60)
    assert smaller.native_events_created == 0 and pool.stats().creates == st.creates


def test_every_call_is_enqueued_before_the_gpu_finishes_one(stream, latch, buffer, pool):
    """No host wait per repetition: with the stream held behind a latch (released by another
    thread after a pause), all calls must still happen before the release, and benchmark()
    must then wait exactly until it."""
    released = threading.Event()
    memset = memset_of(buffer, 4 * MiB, stream)
    seen_released = []

    def fn():
        seen_released.append(released.is_set())
        memset()

    def release_later():
        time.sleep(1.0)
        released.set()  # first the flag, then the GPU may go on
        latch.release()

    latch.block(stream)
    releaser = threading.Thread(target=release_later, daemon=True)
    t0 = time.monotonic()
    releaser.start()
    try:
        r = benchmark(fn, warmup=2, repeat=50, stream=stream, pool=pool, timeout=30)
    finally:
        releaser.join(timeout=10)
        latch.release()
    elapsed = time.monotonic() - t0
    assert len(seen_released) == 52
    assert not any(seen_released), "a call waited for the GPU: the host synchronized inside the loop"
    assert elapsed >= 0.9  # it waited for the GPU, once, at the end
    assert len(r.gpu_ms) == 50 and min(r.gpu_ms) > 0
    assert r.cpu.total_ms < 900  # enqueueing took far less than the time the GPU was held
    assert r.gpu.median_ms < 100  # the latch is before the timed pairs, not inside them


def test_the_default_stream(buffer, pool):
    s0 = as_stream(None, 0)

    def fn():
        with driver.pushed(0):
            driver.memset_d32_async(buffer, 3, 64 * MiB // 4, s0._handle)

    # stream=None is torch's current stream (the legacy default stream) where PyTorch is
    # imported, else the legacy default stream of the current device: the same stream here.
    r = benchmark(fn, warmup=2, repeat=20, pool=pool, timeout=60)
    expected_ms = 64 * MiB / TB_PER_S * 1e3
    assert expected_ms / 3 < r.gpu.median_ms < expected_ms * 3, str(r)


def test_flush_l2_runs_outside_the_timed_pair(stream, buffer, pool):
    l2 = driver.device_attribute(0, "L2_CACHE_SIZE")
    assert l2 > 0
    tiny = memset_of(buffer, 4096, stream)
    flushed = benchmark(tiny, warmup=2, repeat=30, stream=stream, flush_l2=True, pool=pool, timeout=60)
    plain = benchmark(tiny, warmup=2, repeat=30, stream=stream, pool=pool, timeout=60)
    one_flush_at_least_ms = 2 * l2 / 5e12 * 1e3  # 2 x L2 bytes even at 5 TB/s (H200 peak: 4.8)
    assert flushed.gpu.median_ms < one_flush_at_least_ms, f"{flushed}: the flush leaked into the timed pair"
    assert flushed.span_ms >= 30 * one_flush_at_least_ms  # 30 flushes ran inside the span
    assert flushed.native_events_created == 0 and min(flushed.gpu_ms) > 0 and min(plain.gpu_ms) > 0
    # a workload that fits in L2 is not faster with a cold cache
    mid = memset_of(buffer, 8 * MiB, stream)
    cold = benchmark(mid, repeat=30, stream=stream, flush_l2=True, pool=pool, timeout=60)
    warm = benchmark(mid, repeat=30, stream=stream, pool=pool, timeout=60)
    assert cold.gpu.median_ms > 0.5 * warm.gpu.median_ms


def test_flush_l2_completes_while_another_stream_of_the_device_is_held(stream, latch, gpu_streams, buffers, pool):
    """benchmark(flush_l2=True) used to cuMemFree its flush buffer at the end of every call, and
    cuMemFree waits for the whole device: with another stream held on a counter wait that the
    host releases only later, it never returned. The buffer is now the device's, kept: the call
    finishes while the latch still holds the other stream."""
    (bench_stream,) = gpu_streams(1)
    tiny = memset_of(buffers(4096), 4096, bench_stream)
    benchmark(tiny, warmup=1, repeat=5, stream=bench_stream, flush_l2=True, pool=pool, timeout=60)  # buffer made
    outcome = []

    def run():
        try:
            outcome.append(benchmark(tiny, warmup=2, repeat=20, stream=bench_stream, flush_l2=True, pool=pool,
                                     timeout=30))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    latch.block(stream)  # `stream` now waits for the host, which releases it only after the benchmark
    runner = threading.Thread(target=run, daemon=True)
    try:
        runner.start()
        runner.join(timeout=30)
        finished_while_held = not runner.is_alive()
    finally:
        latch.release()
        runner.join(timeout=30)
    assert finished_while_held, "benchmark(flush_l2=True) waited for a stream it does not use (cuMemFree?)"
    (r,) = outcome
    assert isinstance(r, BenchmarkResult), r
    assert len(r.gpu_ms) == 20 and min(r.gpu_ms) > 0 and pool.stats().live == 0


def test_an_error_in_fn_propagates_and_returns_the_events(stream, pool):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 5:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        benchmark(fn, warmup=2, repeat=10, stream=stream, flush_l2=True, pool=pool, timeout=30)
    assert pool.stats().live == 0


# -- PyTorch ----------------------------------------------------------------------------------
def test_graph_mode_replays_a_small_matmul(pool):
    torch = pytest.importorskip("torch")
    a = torch.randn(512, 512, device="cuda:0")
    b = torch.randn(512, 512, device="cuda:0")
    out = torch.empty(512, 512, device="cuda:0")

    def matmul():
        torch.matmul(a, b, out=out)

    eager = benchmark(matmul, warmup=5, repeat=50, pool=pool, timeout=60)
    graphed = benchmark(matmul, warmup=5, repeat=50, graph=True, pool=pool, timeout=60)
    for r in (eager, graphed):
        assert len(r.gpu_ms) == 50 and r.gpu.min_ms > 0 and r.gpu.median_ms < 5, str(r)
        assert r.native_events_created == 0
    torch.cuda.synchronize()
    torch.testing.assert_close(out, a @ b, rtol=1e-3, atol=1e-3)
    assert pool.stats().live == 0


def test_graph_mode_times_replays_on_the_given_torch_stream(pool):
    torch = pytest.importorskip("torch")
    counter = torch.zeros(1, device="cuda:0")
    ts = torch.cuda.Stream(device=0)
    r = benchmark(lambda: counter.add_(1), warmup=4, repeat=20, stream=ts, graph=True, pool=pool, timeout=60)
    ts.synchronize()
    # 3 eager calls before capture, none during it, then warmup + repeat replays
    assert counter.item() == 3 + 4 + 20
    assert len(r.gpu_ms) == 20 and r.gpu.min_ms > 0
    assert torch.cuda.current_stream(0) == torch.cuda.default_stream(0)  # restored


def test_eager_torch_ops_run_on_the_benchmark_stream(stream, pool):
    torch = pytest.importorskip("torch")
    x = torch.zeros(1 << 20, device="cuda:0")
    torch.cuda.synchronize()  # x is filled on the default stream; ours does not wait for it
    seen = []

    def fn():
        seen.append(torch.cuda.current_stream(0).cuda_stream)
        x.add_(1)

    benchmark(fn, warmup=1, repeat=5, stream=stream, pool=pool, timeout=60)
    assert set(seen) == {stream.handle}
    stream.synchronize(timeout=30)
    assert x[0].item() == 6


def test_graph_mode_rejects_a_callable_that_cannot_be_captured(pool):
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="capturable callable such as PyTorch ops"):
        benchmark(lambda: None, repeat=5, graph=True, pool=pool, timeout=30)
    assert pool.stats().live == 0
