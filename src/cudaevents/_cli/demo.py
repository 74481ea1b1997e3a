"""``cudaevents demo``: time many regions of real GPU work with event pairs, without and
with recycling, and show what each costs in native event creations and host time."""

from __future__ import annotations

import ctypes
import statistics
import time

from .._core import driver
from .._core.cuda_event import CudaEvent
from .._core.devices import Device
from .._core.pool import EventPool
from .._core.streams import GpuStream
from .._sync.cpu_stream import CpuStream

__all__ = ["run_demo"]

_OPS = ("memset", "copy d2d")


def _pass(streams, buffers, readback: int, pool: EventPool, iterations: int, in_flight: int, checker: CpuStream):
    """One pass: ``iterations`` rounds of (memset, copy) on every stream, each op timed by a
    fresh pair of events; finished pairs are harvested lazily (non-blocking queries)."""
    nwords = buffers[0][2]
    nbytes = nwords * 4
    times: dict[str, list[float]] = {op: [] for op in _OPS}
    pending: list[tuple[str, CudaEvent, CudaEvent]] = []
    host_ns = 0
    regions = 0

    def finish(op: str, start: CudaEvent, end: CudaEvent) -> None:
        times[op].append(start.elapsed_time(end))
        start.close()
        end.close()

    def harvest(limit: int) -> None:
        # non-blocking sweep first; wait on the oldest pairs only while too many are in flight
        keep = []
        for item in pending:
            if item[2].query():
                finish(*item)
            else:
                keep.append(item)
        while len(keep) > limit:
            item = keep.pop(0)
            item[2].synchronize(timeout=60)
            finish(*item)
        pending[:] = keep

    results: list[bool] = []
    nchecks = 0
    for it in range(iterations):
        for k, s in enumerate(streams):
            src, dst, _ = buffers[k]
            pattern = (it * 131 + k * 7 + 1) & 0xFFFFFFFF
            t0 = time.perf_counter_ns()
            start = CudaEvent(timing=True, pool=pool).record(s)
            driver.memset_d32_async(src, pattern, nwords, s._handle)
            end = CudaEvent(timing=True, pool=pool).record(s)
            pending.append(("memset", start, end))
            start = CudaEvent(timing=True, pool=pool).record(s)
            driver.memcpy_dtod_async(dst, src, nbytes, s._handle)
            end = CudaEvent(timing=True, pool=pool).record(s)
            pending.append(("copy d2d", start, end))
            host_ns += time.perf_counter_ns() - t0
            regions += 2
            if it == iterations - 1 or it % 16 == 0:
                # a word of the copy lands in pinned memory in stream order; the CPU stream
                # checks it once the event says it is there: CPU work ordered after GPU work
                slot = readback + 4 * nchecks
                nchecks += 1
                driver.memcpy_dtoh_async(slot, dst, 4, s._handle)
                done = CudaEvent(pool=pool).record(s)
                checker.enqueue(_check_copy, done, slot, pattern, results)
        t0 = time.perf_counter_ns()
        harvest(in_flight)
        host_ns += time.perf_counter_ns() - t0
    harvest(0)
    checker.synchronize(timeout=60)
    return times, host_ns / regions, regions, results


def _check_copy(done: CudaEvent, slot: int, pattern: int, results: list) -> None:
    done.synchronize(timeout=60)
    done.close()
    results.append(ctypes.c_uint32.from_address(slot).value == pattern)


def _gpu_demo(out, iterations: int) -> None:
    device = Device(0)
    nstreams = 4
    nwords = 8 << 20  # 32 MiB per buffer
    out(f"Device 0: {device.name}, {nstreams} streams, 32 MiB memset + copy per region pair\n")
    streams = [GpuStream(device) for _ in range(nstreams)]
    buffers = [(driver.mem_alloc(0, nwords * 4), driver.mem_alloc(0, nwords * 4), nwords) for _ in streams]
    readback = driver.mem_host_alloc(4 * nstreams * (iterations // 16 + 2))
    checker = CpuStream(name="cudaevents-demo-checker")
    try:
        rows = []
        for label, cap in (("recycling off", 0), ("recycling on", None)):
            pool = EventPool(max_cached=cap)
            times, host_us, regions, results = _pass(streams, buffers, readback, pool, iterations, 64, checker)
            stats = pool.stats()
            pool.clear()
            rows.append((label, regions, stats, host_us / 1000, times, results))
        out(f"{'pass':<15}{'regions':>9}{'native creates':>16}{'destroys':>10}{'peak live':>11}{'host us/region':>16}")
        for label, regions, stats, host_us, _, _ in rows:
            out(f"{label:<15}{regions:>9}{stats.creates:>16}{stats.destroys:>10}{stats.high_water:>11}{host_us:>16.2f}")
        out("")
        out(f"{'GPU time per op':<15}{'median ms':>11}{'min ms':>9}{'GB/s':>9}   (recycling on)")
        _, _, _, _, times, results = rows[-1]
        for op in _OPS:
            med = statistics.median(times[op])
            moved = nwords * 4 * (2 if op == "copy d2d" else 1)
            out(f"{op:<15}{med:>11.4f}{min(times[op]):>9.4f}{moved / med / 1e6:>9.0f}")
        checks = [ok for row in rows for ok in row[5]]
        out("")
        out(f"CPU stream verified {sum(checks)}/{len(checks)} copies after their events completed")
        if not all(checks):
            raise RuntimeError("a copy verified by the CPU stream held the wrong data")
    finally:
        checker.close(timeout=60)
        for s in streams:
            s.synchronize(timeout=60)
            s.close()
        for src, dst, _ in buffers:
            driver.mem_free(src)
            driver.mem_free(dst)
        driver.mem_host_free(readback)


def _cpu_demo(out) -> None:
    out("CPU streams run tasks in order on their own threads; the first error is kept for synchronize():")
    log: list[str] = []
    with CpuStream(name="producer") as producer, CpuStream(name="consumer") as consumer:
        for i in range(3):
            producer.enqueue(log.append, f"produce {i}")
        producer.synchronize(timeout=10)
        for i in range(3):
            consumer.enqueue(log.append, f"consume {i}")

        def fail():
            raise ValueError("bad batch")

        consumer.enqueue(fail)
        try:
            consumer.synchronize(timeout=10)
        except ValueError as exc:
            log.append(f"synchronize() raised {exc!r}")
    for line in log:
        out(f"  {line}")


def run_demo(out=print, iterations: int = 200) -> int:
    """Run the demo, writing lines with ``out``; returns the process exit code."""
    reason = driver.unavailable_reason()
    if reason is not None:
        out(f"No GPU here: {reason}")
        out("Recycled CUDA events need a GPU; showing the CPU side instead.\n")
        _cpu_demo(out)
        return 0
    _gpu_demo(out, iterations)
    return 0
