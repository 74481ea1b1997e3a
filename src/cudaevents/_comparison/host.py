"""Host costs for the comparison suite (:mod:`cudaevents._comparison.suite`): cudaevents next to
raw cuda-bindings and the peers installed (PyTorch, CuPy, cuda.core), one function per
measurement, each returning a section of the suite's result (plain dicts and lists).

Host time per operation comes from ``time.perf_counter_ns`` around batches of operations and
is reported as the median over batches (:func:`measure`, on the suite's one loop,
:func:`cudaevents._comparison.plumbing.interleave`): every method first runs one untimed
warm-up batch; then the methods of a section take turns batch by batch, starting from a
different one each round, so drifts of the machine hit all alike; the garbage collector is
off while a batch is timed (as in ``timeit``); the work a batch enqueued is waited for after
its clock stops, outside it.

cudaevents is measured through its public API (and, for ``pool.acquire + cuEventRecord``, the
driver's named wrapper the library records with); the raw cuda-bindings rows come from
:mod:`cudaevents._comparison.raw`. Every peer's rows are guarded: a peer whose setup or batch
fails is reported in the section's ``errors`` and the other rows still come.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading

from .. import AtomicEvent, CudaEvent, Timer, atomic_backend, device_count
from .._core import compiled, driver
from .._core.cuda_event import DISABLE_TIMING, TIMING_FLAGS, event_flags
from .._sync.counter_storage import slab_stats
from . import raw
from .plumbing import (
    SYNC_S,
    Cleanup,
    Context,
    Method,
    add_ratio,
    describe_error,
    interleave,
    median,
    perf_ns,
    section,
    stat_rows,
)

__all__ = [
    "Crew",
    "atomic_alloc",
    "create_record",
    "creations",
    "keys",
    "measure",
    "threads",
    "timing_pairs",
    "timing_rows",
]

# every flags value a pool key can have: 0, 1, 2, 3, 6, 7 (interprocess events cannot time)
_FLAG_COMBINATIONS = tuple(event_flags(timing=timing, blocking_sync=blocking, interprocess=ipc)
                           for ipc in (False, True) for timing in (True, False) for blocking in (False, True)
                           if not (ipc and timing))


# -- the two hot paths ------------------------------------------------------------------------------
def _path() -> str:
    return "compiled" if compiled.active() else "pure Python"


def _with_pure_python(methods: list[Method]) -> list[Method]:
    """``methods`` and, where the compiled hot path runs, each of them once more on the
    pure-Python path (its key suffixed ``_py``): the compiled path is switched off for each
    of that row's batches only, so both rows interleave in one run."""
    if not compiled.active():
        return methods

    def pure(run):
        def batch(n):
            compiled.use(False)
            try:
                return run(n)
            finally:
                compiled.use(None)

        return batch

    return [*methods, *(Method(m.key + "_py", m.label.replace("(compiled)", "(pure Python)"), pure(m.run),
                               m.settle, ours=True) for m in methods)]


# -- measuring --------------------------------------------------------------------------------------
def _timed_batch(m: Method, n: int) -> dict:
    """One timed batch of ``m``: its totals per phase, or its wall time as phase ``"op"``;
    the collector is off meanwhile, and ``settle()`` runs after the clock stops."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        t0 = perf_ns()
        got = m.run(n)
        elapsed = perf_ns() - t0
        m.settle()
    finally:
        if collecting:
            gc.enable()
    return got if got is not None else {"op": elapsed}


def measure(methods: list[Method], batches: int, ops: int, errors: dict) -> dict[str, dict[str, list[float]]]:
    """Per method and phase, the cost per operation (ns) of every timed batch.

    :func:`interleave` with one untimed warm-up batch and ``batches`` rounds of ``ops``
    operations, each a :func:`_timed_batch`. ``run`` may return totals per phase for the
    batch (ns, or bytes); otherwise the batch's wall time is phase ``"op"``. Totals are divided
    by ``ops``. A method that raises is dropped, its error kept in ``errors``.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for key, totals in interleave(methods, [ops] * batches, ops, errors, step=_timed_batch).items():
        phases = out[key] = {}
        for batch in totals:
            for phase, total in batch.items():
                phases.setdefault(phase, []).append(total / ops)
    return out


def timing_rows(methods: list[Method], samples: dict, reference, ratio: str = "x_ours",
                group: str | None = None) -> list[dict]:
    """One row per measured method: median, min and max us per op, and ``ratio``, its median
    over the reference row's (:func:`add_ratio`: a key, or a predicate with ``group``)."""
    per_op = {key: phases["op"] for key, phases in samples.items() if phases.get("op")}
    return add_ratio(stat_rows(methods, per_op, ("median_us", "min_us", "max_us")), ratio, reference, group=group)


_TIMING_COLUMNS = [["label", "method"], ["median_us", "median us/op"], ["min_us", "min"], ["max_us", "max"],
                   ["x_ours", "x ours"]]


def _add_peer(ctx: Context, peer: str, build, methods: list, errors: dict, cleanup: Cleanup) -> None:
    """Append the methods ``build(module, device, cleanup)`` makes for ``peer`` when it is
    usable here; a failure to build them is recorded in ``errors``."""
    module = ctx.modules.get(peer)
    if module is None:
        return  # not installed or unusable: the header and the progress said so once
    try:
        methods.extend(build(module, ctx.device, cleanup))
    except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
        errors[peer] = describe_error(exc)


def _core_timing_options(core):
    """cuda.core ``EventOptions`` with timing on (the field was renamed across versions)."""
    for field in ("timing_enabled", "enable_timing"):
        try:
            return core.EventOptions(**{field: True})
        except TypeError:
            continue
    raise TypeError("cuda.core EventOptions takes neither timing_enabled nor enable_timing")


def _core_stream(core, device: int, cleanup: Cleanup):
    dev = core.Device(device)
    dev.set_current()  # the device's primary context, the one cudaevents uses too
    s = dev.create_stream()
    cleanup.add(s.close)
    cleanup.add(s.sync)
    return s


def _torch_stream(torch, device: int, cleanup: Cleanup):
    s = torch.cuda.Stream(device=device)
    cleanup.add(s.synchronize)
    return s


def _cupy_stream(cupy, device: int, cleanup: Cleanup):
    with cupy.cuda.Device(device):
        s = cupy.cuda.Stream(non_blocking=True)
    cleanup.add(s.synchronize)
    return s


# -- new event + record (+ release), and record alone ------------------------------------------------
def _torch_new_event(torch, device, cleanup):
    s = _torch_stream(torch, device, cleanup)
    event = torch.cuda.Event

    def run(n):
        for _ in range(n):
            event().record(s)  # dropped right away: PyTorch destroys its native event

    return [Method("torch", "torch.cuda.Event() + record(s)", run, s.synchronize, peer="torch")]


def _cupy_new_event(cupy, device, cleanup):
    s = _cupy_stream(cupy, device, cleanup)
    event = cupy.cuda.Event

    def run(n):
        with cupy.cuda.Device(device):
            for _ in range(n):
                event(disable_timing=True).record(s)  # dropped right away: CuPy destroys it

    return [Method("cupy", "cupy.cuda.Event(disable_timing=True) + record(s)", run, s.synchronize, peer="cupy")]


def _core_new_event(core, device, cleanup):
    s = _core_stream(core, device, cleanup)

    def run(n):
        record = s.record
        for _ in range(n):
            record().close()

    return [Method("cuda_core", "cuda.core: Stream.record() + Event.close()", run, s.sync, peer="cuda.core")]


def create_record(ctx: Context) -> dict:
    """New event + record (+ release) for ours, raw cuda-bindings and each peer; and the
    floor, a raw ``cuEventRecord`` of one pre-created event."""
    dev, cfg = ctx.device, ctx.config
    errors: dict[str, str] = {}
    with Cleanup(errors) as cleanup:
        pool = cleanup.pool()
        stream = cleanup.stream(dev)
        sh = driver.as_stream_handle(stream.handle)
        floor_event = driver.event_create(dev, DISABLE_TIMING)
        cleanup.add(driver.event_destroy, floor_event)

        def ours_event(n):
            for _ in range(n):
                CudaEvent(pool=pool).record(stream).close()

        def ours_pool(n):
            acquire, release, record = pool.acquire, pool.release, driver.event_record
            for _ in range(n):
                h = acquire(dev, DISABLE_TIMING)
                record(h, sh)  # the wrapper CudaEvent.record ends in
                release(dev, DISABLE_TIMING, h)

        def settle():
            stream.synchronize(timeout=SYNC_S)

        methods = [*_with_pure_python([
            Method("ours_event", f"cudaevents: CudaEvent(pool=pool).record(s).close() ({_path()})", ours_event,
                   settle, ours=True),
            Method("ours_pool", f"cudaevents: pool.acquire + cuEventRecord + pool.release ({_path()})", ours_pool,
                   settle, ours=True)]),
            Method("raw_create", "raw cuda-bindings: cuEventCreate + cuEventRecord + cuEventDestroy",
                   raw.create_record_destroy(dev, DISABLE_TIMING, sh), settle),
        ]
        _add_peer(ctx, "torch", _torch_new_event, methods, errors, cleanup)
        _add_peer(ctx, "cupy", _cupy_new_event, methods, errors, cleanup)
        _add_peer(ctx, "cuda.core", _core_new_event, methods, errors, cleanup)
        methods.append(Method("raw_record", "floor: raw cuEventRecord of one pre-created event",
                              raw.record_one(floor_event, sh), settle))
        samples = measure(methods, cfg.batches, cfg.ops, errors)
    return section(
        "New event + record (+ release), and record alone",
        f"host time per operation: median of {cfg.batches} batches of {cfg.ops:,} per method, methods interleaved; "
        "all events without timing; x ours = median / the CudaEvent row's median",
        _TIMING_COLUMNS, timing_rows(methods, samples, "ours_event"),
        notes=[("PyTorch and CuPy events are dropped right after recording (their destructors destroy the native "
                "event); cuda.core events are closed"),
               ("every batch records on one stream per library; the stream is synchronized after each batch, "
                "outside the clock")],
        errors=errors)


# -- timing pairs ---------------------------------------------------------------------------------
def _host_phases(n: int, enqueue, wait, read) -> dict:
    """Time a timing-pair method's host work only: ``enqueue(n)`` (returns its pairs) and
    ``read(pairs)`` (reads every time, frees or returns the events; returns how many it read)
    run with the clock, ``wait()`` between them without it: empty regions leave the GPU ~3 us
    of work per event record, which must not be charged to the host. Returns phase "op"."""
    t0 = perf_ns()
    pairs = enqueue(n)
    t1 = perf_ns()
    wait()
    t2 = perf_ns()
    got = read(pairs)
    t3 = perf_ns()
    if got != n:
        raise RuntimeError(f"lost timing pairs: {got} of {n} read back")
    return {"op": (t1 - t0) + (t3 - t2)}


def _read_and_free(pairs: list, elapsed) -> int:
    times = [elapsed(a, b) for a, b in pairs]
    pairs.clear()  # the last references: the peers' destructors destroy the native events
    return len(times)


def _torch_pairs(torch, device, cleanup):
    s = _torch_stream(torch, device, cleanup)
    event = torch.cuda.Event

    def enqueue(n):
        pairs = []
        for _ in range(n):
            start, end = event(enable_timing=True), event(enable_timing=True)
            start.record(s)
            end.record(s)
            pairs.append((start, end))
        return pairs

    def run(n):
        return _host_phases(n, enqueue, s.synchronize, lambda pairs: _read_and_free(pairs, lambda a, b: a.elapsed_time(b)))

    return [Method("torch", "torch.cuda.Event(enable_timing=True) pairs, elapsed_time, events freed", run,
                   s.synchronize, peer="torch")]


def _cupy_pairs(cupy, device, cleanup):
    s = _cupy_stream(cupy, device, cleanup)
    event, elapsed = cupy.cuda.Event, cupy.cuda.get_elapsed_time

    def enqueue(n):
        pairs = []
        for _ in range(n):
            start, end = event(), event()  # CuPy events time by default
            start.record(s)
            end.record(s)
            pairs.append((start, end))
        return pairs

    def run(n):
        with cupy.cuda.Device(device):
            return _host_phases(n, enqueue, s.synchronize, lambda pairs: _read_and_free(pairs, elapsed))

    return [Method("cupy", "cupy.cuda.Event pairs, get_elapsed_time, events freed", run, s.synchronize,
                   peer="cupy")]


def _core_pairs(core, device, cleanup):
    s = _core_stream(core, device, cleanup)
    options = _core_timing_options(core)

    def enqueue(n):
        record = s.record
        return [(record(options=options), record(options=options)) for _ in range(n)]

    def read(pairs):
        times = [b - a for a, b in pairs]  # milliseconds
        for a, b in pairs:
            a.close()
            b.close()
        return len(times)

    def run(n):
        return _host_phases(n, enqueue, s.sync, read)

    return [Method("cuda_core", "cuda.core: Stream.record(timing) pairs, end - start, close", run, s.sync,
                   peer="cuda.core")]


def timing_pairs(ctx: Context) -> dict:
    """Timing pairs amortized over many regions: ``Timer`` regions against raw pooled
    bindings and each peer's usual pattern (two events per region, elapsed time at the end)."""
    dev, cfg = ctx.device, ctx.config
    n_regions = cfg.pair_regions
    errors: dict[str, str] = {}
    with Cleanup(errors) as cleanup:
        pool = cleanup.pool()
        stream = cleanup.stream(dev)
        sh = driver.as_stream_handle(stream.handle)
        free: list = []  # the raw row's own pool: timing handles in a list
        cleanup.add(lambda: [driver.event_destroy(h) for h in free])
        free.extend(driver.event_create(dev, TIMING_FLAGS) for _ in range(2 * n_regions))

        def ours_timer(n, timeline=True):
            def enqueue(n):
                timer = Timer(pool=pool, nvtx=False, timeline=timeline)
                region = timer.region
                for _ in range(n):
                    with region("x", stream):
                        pass
                return timer

            return _host_phases(n, enqueue, stream.synchronize, lambda timer: len(timer.results(timeout=SYNC_S)))

        raw_enqueue, raw_read = raw.pooled_pairs(free, sh)

        def raw_pairs(n):
            return _host_phases(n, raw_enqueue, stream.synchronize, raw_read)

        def settle():
            stream.synchronize(timeout=SYNC_S)

        methods = [*_with_pure_python([
            Method("ours", f"cudaevents Timer: with timer.region('x', s), then results() ({_path()})", ours_timer,
                   settle, ours=True),
            Method("ours_no_timeline", f"cudaevents Timer(timeline=False): durations only, no start times ({_path()})",
                   lambda n: ours_timer(n, timeline=False), settle, ours=True)]),
            Method("raw_pooled", "raw cuda-bindings, pooled: 2 handles from a list, cuEventRecord x2, "
                   "cuEventElapsedTime, handles back", raw_pairs, settle),
        ]
        _add_peer(ctx, "torch", _torch_pairs, methods, errors, cleanup)
        _add_peer(ctx, "cupy", _cupy_pairs, methods, errors, cleanup)
        _add_peer(ctx, "cuda.core", _core_pairs, methods, errors, cleanup)
        samples = measure(methods, cfg.pair_batches, n_regions, errors)
    return section(
        "Timing pairs (two records, completion, elapsed time)",
        f"host time per timed region over batches of {n_regions:,} regions (recording both ends, reading every "
        "elapsed time, releasing the events); the wait for the GPU between enqueuing and reading is not "
        f"counted; median of {cfg.pair_batches} batches, methods interleaved; x ours = median / the Timer row's "
        "median",
        [["label", "method"], ["median_us", "median us/region"], ["min_us", "min"], ["max_us", "max"],
         ["x_ours", "x ours"]],
        timing_rows(methods, samples, "ours"),
        notes=["empty regions: this is the host cost of timing itself",
               "the Timer harvests finished pairs while regions are enqueued; what is left is harvested by "
               "results() after the wait"],
        errors=errors)


# -- native event creations -------------------------------------------------------------------------
def creations(ctx: Context) -> dict:
    """Native event creations for many timed regions with a bounded number in flight: a
    ``Timer`` on a fresh pool against torch/triton-style event pairs."""
    dev, cfg = ctx.device, ctx.config
    regions, cap = cfg.regions, cfg.in_flight
    warm = min(regions // 2, 4 * cap)  # regions before the steady state
    errors: dict[str, str] = {}
    rows = []
    with Cleanup(errors) as cleanup:
        pool = cleanup.pool()
        stream = cleanup.stream(dev)
        timer = Timer(pool=pool, nvtx=False)
        peak, creates_warm = 0, 0
        t0 = perf_ns()
        for i in range(regions):
            if i == warm:
                creates_warm = pool.stats().creates
            with timer.region("r", stream):
                peak = max(peak, timer.pending + 1)  # ended but unharvested, and this one
            if timer.pending >= cap:
                timer.synchronize(timeout=SYNC_S)  # never more than `cap` regions in flight
        got = len(timer.results(timeout=SYNC_S))
        host_us = (perf_ns() - t0) / regions / 1e3
        if got != regions:
            raise RuntimeError(f"Timer collected {got} of {regions} regions")
        st = pool.stats()
        rows.append(Method("ours", "cudaevents Timer on a fresh EventPool", ours=True).row(
            regions=regions, creates=st.creates, steady_creates=st.creates - creates_warm, peak_in_flight=peak,
            peak_live=st.high_water, reference_events=1, host_us=host_us, counted="EventPool.stats().creates"))
        rows.append(_torch_creations(ctx, regions, cap, warm, errors, cleanup))
    return section(
        "Native event creations",
        f"{regions:,} timed regions on one stream, at most {cap} in flight (the host waits when {cap} are pending); "
        f"steady state: after the first {warm:,} regions",
        [["label", "method"], ["regions", "regions"], ["creates", "native creations"],
         ["steady_creates", "after warm-up"], ["peak_in_flight", "peak regions in flight"],
         ["peak_live", "peak live events"], ["host_us", "host us/region"], ["counted", "how counted"]],
        rows,
        notes=[("the Timer keeps one reference event per device (region start times are measured from it); "
                "it is counted in its creations and in the target's limit"),
               "host us/region includes the waits that bound the regions in flight"],
        errors=errors)


def _torch_creations(ctx: Context, regions: int, cap: int, warm: int, errors: dict, cleanup: Cleanup) -> dict:
    """The same regions timed torch/triton style (a new torch.cuda.Event pair per region),
    counting the events recorded; analytic (2 per region) where torch is not usable."""
    method = Method("torch", "torch.cuda.Event pairs (torch/triton style)", peer="torch")
    torch = ctx.modules.get("torch")
    if torch is not None:
        try:
            s = _torch_stream(torch, ctx.device, cleanup)
            event = torch.cuda.Event
            created, created_warm, peak, pending = 0, 0, 0, []
            t0 = perf_ns()
            for i in range(regions):
                if i == warm:
                    created_warm = created
                start, end = event(enable_timing=True), event(enable_timing=True)
                start.record(s)
                created += 1
                peak = max(peak, len(pending) + 1)
                end.record(s)
                created += 1
                pending.append((start, end))
                if len(pending) >= cap:
                    pending[-1][1].synchronize()
                    for a, b in pending:
                        a.elapsed_time(b)
                    pending.clear()
            if pending:
                pending[-1][1].synchronize()
                for a, b in pending:
                    a.elapsed_time(b)
            host_us = (perf_ns() - t0) / regions / 1e3
            return method.row(regions=regions, creates=created, steady_creates=created - created_warm,
                              peak_in_flight=peak, peak_live=2 * peak, host_us=host_us,
                              counted="counted: torch.cuda.Event objects recorded (each makes its own native event)")
        except Exception as exc:  # noqa: BLE001 - reported; fall back to the analytic count
            errors["torch"] = describe_error(exc)
    why = ctx.peers.get("torch", {}).get("status", "not used")
    return method.row(regions=regions, creates=2 * regions, steady_creates=2 * (regions - warm), peak_in_flight=cap,
                      peak_live=2 * cap, host_us=None, counted=f"analytic: 2 per region (torch {why})")


# -- AtomicEvent creation and memory ---------------------------------------------------------------
def _rss() -> int | None:
    """The process's resident memory in bytes (Linux), or ``None``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _phases(t0: int, t1: int, t2: int, t3: int, rss0, rss1) -> dict:
    out = {"create": t1 - t0, "free": t3 - t2}
    if rss0 is not None and rss1 is not None:
        out["rss"] = rss1 - rss0
    return out


def atomic_alloc(ctx: Context) -> dict:
    """AtomicEvent creation and close time and memory per event, against one raw pinned,
    device-mapped allocation per event."""
    dev, cfg = ctx.device, ctx.config
    n = cfg.alloc_ops
    backend = atomic_backend(dev)
    errors: dict[str, str] = {}
    allocate, release = raw.mapped_allocations()

    def ours(n):
        rss0 = _rss()
        t0 = perf_ns()
        events = [AtomicEvent(dev) for _ in range(n)]
        t1 = perf_ns()
        rss1 = _rss()
        t2 = perf_ns()
        for ev in events:
            ev.close()
        return _phases(t0, t1, t2, perf_ns(), rss0, rss1)

    def raw_allocations(n):
        with driver.pushed(dev):
            rss0 = _rss()
            t0 = perf_ns()
            hosts = allocate(n)
            t1 = perf_ns()
            rss1 = _rss()
            t2 = perf_ns()
            release(hosts)
            return _phases(t0, t1, t2, perf_ns(), rss0, rss1)

    how = ": a recycled slot of a shared pinned slab" if backend.startswith("mem") else ""
    methods = [
        Method("ours", f"AtomicEvent({dev}), {backend} backend{how}", ours, ours=True),
        Method("raw", "raw cuda-bindings: cuMemHostAlloc(8, portable|devicemap) + cuMemHostGetDevicePointer "
               "per event", raw_allocations),
    ]
    samples = measure(methods, cfg.batches, n, errors)
    pinned = {"ours": None, "raw": None}
    slab = None
    try:  # untimed: how much pinned memory each way takes per event
        events = [AtomicEvent(dev) for _ in range(n)]
        slab = slab_stats()
        pinned["ours"] = slab["bytes"] / slab["in_use"] if backend.startswith("mem") and slab["in_use"] else 0.0
        for ev in events:
            ev.close()
        with driver.pushed(dev):
            hosts = allocate(n)
            addresses = sorted(int(h) for h in hosts)
            release(hosts)
        gaps = [b - a for a, b in itertools.pairwise(addresses)]
        pinned["raw"] = round(median(gaps)) if gaps else None
    except Exception as exc:  # noqa: BLE001 - reported; the timings stand
        errors["memory"] = describe_error(exc)
    rows = []
    for m in methods:
        phases = samples.get(m.key)
        if not phases:
            continue
        rss = phases.get("rss")
        rows.append(m.row(create_us=median(phases["create"]) / 1e3, free_us=median(phases["free"]) / 1e3,
                          pinned_bytes=pinned[m.key], rss_bytes=round(median(rss)) if rss else None))
    notes = [(f"pinned bytes/event: for AtomicEvent, the slab's pinned bytes over the slots in use with {n:,} "
              "events alive; for raw allocations, the median distance between the addresses of consecutive "
              "allocations (the driver's granularity)"),
             ("RSS growth: the process's resident memory with the events alive minus before creating them "
              "(Python objects included)")]
    if slab and backend.startswith("mem"):
        notes.append(f"the slab then: {slab['bytes']:,} pinned bytes in {slab['slots']:,} slots, "
                     f"{slab['in_use']:,} in use (it grows by 4 KiB chunks of 512 slots)")
    return section(
        "AtomicEvent creation and memory per event",
        f"after warm-up: median of {cfg.batches} batches of {n:,} events created, kept alive together, then closed "
        "or freed; methods interleaved",
        [["label", "method"], ["create_us", "create us/event"], ["free_us", "close/free us/event"],
         ["pinned_bytes", "pinned bytes/event"], ["rss_bytes", "RSS growth bytes/event"]],
        rows, notes=notes, errors=errors, backend=backend, slab=slab)


# -- scaling ----------------------------------------------------------------------------------------
class Crew:
    """``k`` threads that each run ``work(index, n)`` whenever :meth:`run` is called.

    A run is timed from the moment the first thread starts its work until the last one
    finishes (each thread reads the clock around its own work), so waking the threads up
    and collecting them is not counted.
    """

    def __init__(self, k: int, work, name: str):
        self.k, self.work, self.n = k, work, 0
        self.start = threading.Barrier(k + 1)
        self.done = threading.Barrier(k + 1)
        self.stop = False
        self.spans: list[tuple[int, int]] = [(0, 0)] * k
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), name=f"{name}-{i}", daemon=True)
                        for i in range(k)]
        for t in self.threads:
            t.start()

    def _loop(self, i: int) -> None:
        while True:
            try:
                self.start.wait()
            except threading.BrokenBarrierError:  # close()
                return
            if self.stop:
                return
            t0 = perf_ns()
            try:
                self.work(i, self.n)
            except Exception as exc:  # noqa: BLE001 - handed to the caller of run()
                self.errors.append(exc)
            self.spans[i] = (t0, perf_ns())
            try:
                self.done.wait()
            except threading.BrokenBarrierError:
                return

    def run(self, n: int) -> dict:
        """Every thread does ``n`` operations; returns the wall time per ``n`` operations of
        all threads together (``{"op": ns}``)."""
        self.n = n
        self.start.wait(timeout=SYNC_S)
        self.done.wait(timeout=SYNC_S)
        if self.errors:
            raise self.errors[0]
        elapsed = max(end for _, end in self.spans) - min(begin for begin, _ in self.spans)
        return {"op": elapsed / self.k}

    def close(self) -> None:
        """Stop the threads (idempotent)."""
        self.stop = True
        self.start.abort()
        self.done.abort()
        for t in self.threads:
            t.join(SYNC_S)


def threads(ctx: Context) -> dict:
    """The pool's fast path (acquire + release, and CudaEvent record) from 1, 4, 16 threads."""
    dev, cfg = ctx.device, ctx.config
    errors: dict[str, str] = {}
    with Cleanup(errors) as cleanup:
        pool = cleanup.pool()
        streams = [cleanup.stream(dev) for _ in range(max(cfg.threads))]

        def pool_work(i, n):
            acquire, release = pool.acquire, pool.release
            for _ in range(n):
                release(dev, DISABLE_TIMING, acquire(dev, DISABLE_TIMING))

        def event_work(i, n):
            s = streams[i]
            for _ in range(n):
                CudaEvent(pool=pool).record(s).close()

        methods = []
        for family, label, work in (("pool", "EventPool acquire + release", pool_work),
                                    ("event", "CudaEvent(pool=pool).record(s).close()", event_work)):
            for k in cfg.threads:
                crew = Crew(k, work, f"cudaevents-bench-{family}{k}")
                cleanup.add(crew.close)

                def settle(k=k):
                    for s in streams[:k]:
                        s.synchronize(timeout=SYNC_S)

                methods.append(Method(f"{family}_{k}", label, crew.run, settle, ours=True,
                                      extra={"family": family, "threads": k}))
        samples = measure(methods, cfg.batches, cfg.ops, errors)
    rows = timing_rows(methods, samples, lambda r: r["threads"] == 1, ratio="x_one_thread", group="family")
    return section(
        "Pool fast path with 1, 4, 16 threads",
        f"every thread does {cfg.ops:,} operations on one shared pool (events on a stream of its own); cost per "
        f"operation = wall time from the first thread's start to the last one's end / all operations; median of "
        f"{cfg.batches} batches",
        [["label", "method"], ["threads", "threads"], ["median_us", "median us/op"], ["min_us", "min"],
         ["max_us", "max"], ["x_one_thread", "x 1 thread"]],
        rows, notes=["threads share the GIL: flat per-op cost means the pool adds no contention of its own"],
        errors=errors)


def keys(ctx: Context) -> dict:
    """The pool's fast path against the number of cached keys (flag combinations) and devices."""
    dev, cfg = ctx.device, ctx.config
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    ndev = device_count()
    with Cleanup(errors) as cleanup:
        pool = cleanup.pool()
        usable = []
        for key in [(i, f) for i in range(ndev) for f in _FLAG_COMBINATIONS]:
            try:  # one cached handle per key
                pool.release(*key, pool.acquire(*key))
                usable.append(key)
            except Exception as exc:  # noqa: BLE001 - e.g. no interprocess events here
                skipped[f"device {key[0]} flags {key[1]}"] = describe_error(exc)
        configs = [("1 key", [(dev, DISABLE_TIMING)])]
        local = [k for k in usable if k[0] == dev]
        configs.append((f"{len(local)} keys: every flag combination on device {dev}", local))
        if ndev > 1:
            configs.append((f"{len(usable)} keys: every flag combination on {ndev} devices", usable))

        def cycling(keys):
            def run(n):
                acquire, release, m = pool.acquire, pool.release, len(keys)
                for i in range(n):
                    device, flags = keys[i % m]
                    release(device, flags, acquire(device, flags))

            return run

        methods = [Method(f"keys_{len(keys)}_{j}", label, cycling(keys), ours=True,
                          extra={"keys": len(keys), "devices": len({k[0] for k in keys})})
                   for j, (label, keys) in enumerate(configs)]
        samples = measure(methods, cfg.batches, cfg.ops, errors)
    rows = timing_rows(methods, samples, methods[0].key, ratio="x_one_key")
    notes = [f"{ndev} device(s) present"]
    if ndev == 1:
        notes.append("one device here: the several-devices row needs more")
    return section(
        "Pool fast path vs cached keys and devices",
        f"acquire + release cycling over the keys (device, flags), each with a cached handle; median of "
        f"{cfg.batches} batches of {cfg.ops:,}",
        [["label", "configuration"], ["keys", "keys"], ["devices", "devices"], ["median_us", "median us/op"],
         ["min_us", "min"], ["max_us", "max"], ["x_one_key", "x 1 key"]],
        rows, notes=notes, skipped=skipped, errors=errors)
