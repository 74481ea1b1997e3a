"""benchmark(): per-call GPU and host times of a callable, with recycled events and one sync."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
import warnings

from .._core import driver
from .._core.cuda_event import CudaEvent
from .._core.lifetime import after_fork_in_child
from .._core.pool import EventPool, default_pool
from .._core.streams import GpuStream, as_stream
from .._core.wait import check_timeout
from .results import Stats, stats_of

__all__ = ["BenchmarkResult", "benchmark"]

_GRAPH_NEEDS = (
    "graph mode needs a capturable callable such as PyTorch ops that enqueue their work on "
    "torch's current stream"
)
_EAGER_BEFORE_CAPTURE = 3  # eager calls on a side stream before capture, as PyTorch recommends
_MIN_FLUSH_BYTES = 8 << 20
_FALLBACK_FLUSH_BYTES = 256 << 20  # when the driver reports no L2 size


def _format_ms(ms: float) -> str:
    if not math.isfinite(ms):
        return f"{ms} ms"
    if abs(ms) >= 1000:
        return f"{ms / 1000:.3f} s"
    if abs(ms) >= 1:
        return f"{ms:.3f} ms"
    return f"{ms * 1000:.2f} us"


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """What :func:`benchmark` measured.

    Attributes:
        gpu_ms: GPU time of each timed call (ms), from a start/end event pair recorded
            around the call on the benchmark's stream.
        cpu_ms: host time of each timed call (ms): ``perf_counter`` around the call, i.e.
            the launch overhead of asynchronous work.
        gpu: :class:`Stats` of ``gpu_ms``.
        cpu: :class:`Stats` of ``cpu_ms``.
        native_events_created: native CUDA events the pool created during the timed part
            (0 unless something else draws on the same pool meanwhile).
        span_ms: GPU time from the first timed call's start to the last one's end, gaps and
            L2 flushes included (``None`` when not measured). Much more than ``gpu.total_ms``
            (without flushing) means the GPU waited for the host: the calls are launch-bound.
    """

    gpu_ms: list[float]
    cpu_ms: list[float]
    gpu: Stats
    cpu: Stats
    native_events_created: int = 0
    span_ms: float | None = None

    @classmethod
    def from_samples(cls, gpu_ms, cpu_ms, native_events_created: int = 0,
                     span_ms: float | None = None) -> "BenchmarkResult":
        """A result from plain sequences of per-call times (ms); both must be non-empty."""
        gpu_ms, cpu_ms = [float(v) for v in gpu_ms], [float(v) for v in cpu_ms]
        if not gpu_ms or not cpu_ms:
            raise ValueError("a BenchmarkResult needs at least one GPU time and one CPU time")
        return cls(gpu_ms, cpu_ms, stats_of(gpu_ms), stats_of(cpu_ms), int(native_events_created), span_ms)

    def __str__(self) -> str:
        g, c = self.gpu, self.cpu
        return (
            f"gpu {_format_ms(g.median_ms)} median (min {_format_ms(g.min_ms)}, "
            f"p99 {_format_ms(g.p99_ms)}, n={g.count}) | cpu {_format_ms(c.median_ms)} median per call | "
            f"{self.native_events_created} native events created"
        )


# -- argument checks (before anything touches CUDA) ---------------------------------------
def _check_int(name: str, value, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}; pass e.g. {name}={hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; pass e.g. {name}={hint}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _torch_for_graphs():
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"benchmark(graph=True) captures fn with torch.cuda.graph, which needs PyTorch "
            f"(pip install torch); {_GRAPH_NEEDS}. Without PyTorch, pass graph=False"
        ) from None
    return torch


def _loaded_torch():
    """PyTorch with CUDA when the program has imported it, else None.

    Not importing it ourselves is equivalent to "importable" here: a program that never
    imported torch cannot have changed torch's current stream or enqueued torch work.
    """
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


# -- the pieces -------------------------------------------------------------------------------
def _resolve_stream(stream, torch) -> GpuStream:
    if stream is None and torch is not None:
        return as_stream(torch.cuda.current_stream())
    return as_stream(stream)


def _torch_stream_for(torch, s: GpuStream):
    """A torch stream object for ``s`` (to make it torch's current stream), or None."""
    owner = s._owner
    if isinstance(owner, torch.cuda.Stream):
        return owner
    handle = int(s._handle)
    device = torch.device("cuda", s._device)
    if handle in (0, 1):  # the legacy default stream, which is torch's default stream
        return torch.cuda.default_stream(device)
    if handle == 2:  # the per-thread default stream: torch has no object for it
        return None
    return torch.cuda.ExternalStream(handle, device=device)


# One L2 flush buffer per device, allocated at the first benchmark(flush_l2=True) there and
# kept for the process: cuMemFree waits for the whole device, so freeing it could wait for
# work on any stream (one held on a counter wait the host releases later deadlocks), and
# cuMemAlloc per call is no steady state either. Never freed, not even at exit.
_flush_buffers: dict[int, tuple[int, int]] = {}  # device -> (pointer, bytes)
_outgrown: list[int] = []  # smaller buffers a bigger need replaced: kept, never freed
_flush_lock = threading.Lock()


@after_fork_in_child
def _after_fork_in_child() -> None:
    # the buffers are the parent's device memory: a child that may use CUDA allocates its own
    global _flush_lock
    _flush_lock = threading.Lock()
    _flush_buffers.clear()
    _outgrown.clear()


def _flush_buffer(device: int, nbytes: int) -> int:
    """The device's flush buffer, of ``nbytes`` at least: allocated once, grown (a new one;
    the old one is kept, not freed) if a later call needs more."""
    with _flush_lock:
        held = _flush_buffers.get(device)
        if held is not None and held[1] >= nbytes:
            return held[0]
        ptr = driver.mem_alloc(device, nbytes)
        if held is not None:
            _outgrown.append(held[0])
        _flush_buffers[device] = (ptr, nbytes)
        return ptr


class _Flusher:
    """Overwrites a buffer of twice the device's L2 size with cuMemsetD32Async on a stream
    (the device's flush buffer, which outlives the benchmark: nothing to free)."""

    def __init__(self, s: GpuStream):
        try:
            l2 = driver.device_attribute(s._device, "L2_CACHE_SIZE")
        except Exception:
            l2 = 0
        nbytes = max(2 * l2, _MIN_FLUSH_BYTES) if l2 > 0 else _FALLBACK_FLUSH_BYTES
        self.nbytes = (nbytes + 3) // 4 * 4
        self._words = self.nbytes // 4
        self._stream = s
        self._ptr = _flush_buffer(s._device, self.nbytes)
        self._value = 0

    def __call__(self) -> None:
        s = self._stream
        self._value = (self._value + 1) & 0xFFFFFFFF
        s._call(driver.memset_d32_async, self._ptr, self._value, self._words, s._live())


def _capture(torch, fn):
    """``fn`` captured into a CUDA graph on torch's current stream; returns the graph."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream(device=current.device)
    try:
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(_EAGER_BEFORE_CAPTURE):
                fn()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.cuda.graph(graph):
                fn()
    except Exception as exc:
        raise RuntimeError(f"benchmark(graph=True) could not capture fn into a CUDA graph: {exc!r}; "
                           f"{_GRAPH_NEEDS}") from exc
    for w in caught:
        if "empty" in str(w.message).lower():
            raise RuntimeError(
                "benchmark(graph=True) captured an empty CUDA graph: fn enqueued no work on the "
                f"capturing stream (e.g. it used another stream or a library that cannot be "
                f"captured); {_GRAPH_NEEDS}"
            )
    for w in caught:  # anything else torch said during capture is the caller's business
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return graph


def benchmark(fn, *, warmup: int = 10, repeat: int = 100, stream=None, flush_l2: bool = False,
              graph: bool = False, pool: EventPool | None = None,
              timeout: float | None = None) -> BenchmarkResult:
    """Time ``fn()`` on the GPU, call by call, the way ``triton.testing.do_bench`` and
    ``cupyx.profiler.benchmark`` do, without their per-call costs.

    ``fn`` is called ``warmup`` times, then ``repeat`` times between a start and an end
    timing event recorded on ``stream``. The events come from the pool once per call of
    ``benchmark`` (``2 * repeat + 2`` of them; a warm pool creates no native event) and the
    host never waits inside the loop: it enqueues everything, synchronizes once on the last
    event, and only then reads the elapsed times. The host time of each call (its launch
    overhead) is measured with ``perf_counter`` around the call.

    ``fn`` must enqueue its work on ``stream``. When PyTorch is imported, ``stream`` is made
    torch's current stream while ``fn`` runs, so PyTorch ops go where they are timed.
    Enqueuing is not free of waits: the driver blocks a thread that runs about a thousand
    launches and timing records ahead of the GPU (the 1,021st on an H200; each timed call
    adds two timing records to what ``fn`` launches), so for very short work the host time
    shows that back-pressure.

    Args:
        fn: a callable taking no arguments.
        warmup: calls before timing (not timed, and not waited for).
        repeat: timed calls.
        stream: anything :func:`as_stream` accepts; ``None`` is PyTorch's current stream when
            PyTorch (with CUDA) is imported, else the legacy default stream of the current device.
        flush_l2: before each timed call, overwrite a buffer of twice the L2 size
            (``cuMemsetD32Async`` on ``stream``, outside the timed pair), so every call
            starts with a cold L2. The buffer is the device's: allocated at the first such
            call and kept for the process (never freed: ``cuMemFree`` would wait for the
            whole device).
        graph: capture ``fn`` into a CUDA graph with ``torch.cuda.graph`` (after a few eager
            calls on a side stream) and time its replays. Needs PyTorch and a capturable ``fn``.
        pool: the :class:`EventPool` for the events (default: the process-wide pool).
        timeout: seconds to wait for the GPU at the end (``None``: no limit).

    Raises:
        TypeError, ValueError: invalid arguments (before anything touches CUDA).
        ImportError: ``graph=True`` without PyTorch.
        RuntimeError: ``graph=True`` and ``fn`` could not be captured.
        TimeoutError: the work did not finish within ``timeout``.
    """
    if not callable(fn):
        raise TypeError(
            f"benchmark() needs a callable that enqueues the work to time, got {type(fn).__name__}; "
            "pass e.g. lambda: x @ y"
        )
    warmup = _check_int("warmup", warmup, 0, "10 (0 skips the warm-up)")
    repeat = _check_int("repeat", repeat, 1, "100")
    flush_l2 = _check_bool("flush_l2", flush_l2)
    graph = _check_bool("graph", graph)
    if pool is not None and not isinstance(pool, EventPool):
        raise TypeError(f"pool must be an EventPool or None (the default pool), got {type(pool).__name__}")
    timeout = check_timeout(timeout)
    if graph:
        torch = _torch_for_graphs()
        if not torch.cuda.is_available():
            raise RuntimeError("benchmark(graph=True) needs PyTorch with CUDA, and this PyTorch sees no CUDA device")
    else:
        torch = _loaded_torch()
    pool = default_pool() if pool is None else pool
    s = _resolve_stream(stream, torch)
    torch_stream = _torch_stream_for(torch, s) if torch is not None else None
    if graph and torch_stream is None:
        raise ValueError(
            "benchmark(graph=True) replays on torch's current stream and cannot make this stream "
            "(the per-thread default stream) current; pass a torch.cuda.Stream, a GpuStream or None"
        )
    if torch_stream is None:
        return _run(fn, warmup, repeat, s, flush_l2, None, pool, timeout)
    with torch.cuda.stream(torch_stream):
        return _run(fn, warmup, repeat, s, flush_l2, torch if graph else None, pool, timeout)


def _run(fn, warmup, repeat, s, flush_l2, graph_torch, pool, timeout) -> BenchmarkResult:
    device = s._device
    events = [CudaEvent(device, timing=True, pool=pool) for _ in range(2 * repeat + 2)]
    try:
        flusher = _Flusher(s) if flush_l2 else None
        captured = None
        if graph_torch is not None:
            captured = _capture(graph_torch, fn)
            call = captured.replay
        else:
            call = fn
        for _ in range(warmup):
            if flusher is not None:
                flusher()
            call()

        span_start, span_end = events[-2], events[-1]
        starts, ends = events[0:repeat], events[repeat:2 * repeat]
        cpu_ns = [0] * repeat
        clock = time.perf_counter_ns
        creates_before = pool.stats(device).creates
        span_start.record(s)
        for i in range(repeat):
            if flusher is not None:
                flusher()
            starts[i].record(s)
            t0 = clock()
            call()
            t1 = clock()
            ends[i].record(s)
            cpu_ns[i] = t1 - t0
        span_end.record(s)
        span_end.synchronize(timeout)  # the one host wait
        gpu_ms = [start.elapsed_time(end) for start, end in zip(starts, ends)]
        span_ms = span_start.elapsed_time(span_end)
        created = max(0, pool.stats(device).creates - creates_before)
        captured = None
    finally:
        for ev in events:
            ev.close()  # a release while a record is pending is fine (see EventPool)
    return BenchmarkResult.from_samples(gpu_ms, [ns / 1e6 for ns in cpu_ns], created, span_ms)
