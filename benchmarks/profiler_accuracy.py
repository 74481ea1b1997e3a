"""How accurate and how cheap cudaevents' event-pair timing is, against CUPTI and the usual patterns.

Part 1, accuracy: single PyTorch kernels of about 5 us, 50 us, 500 us and 5 ms (a calibrated
``torch.cuda._sleep`` spin kernel, and an elementwise ``mul_`` of a chosen size) are timed
with ``cudaevents.Timer`` regions and, separately, with ``torch.profiler`` (CUPTI kernel
records). Printed per size: the median event-pair time, the median CUPTI kernel time and
their ratio. Event pairs are timed twice: "queued" (a long spin kernel ahead keeps the GPU
behind the host, so each pair brackets its kernel back to back) and "idle" (the host waits
after every region, so the GPU is idle when the start event is reached and the pair also
holds the launch latency). The queued regions are also timed with a torch.cuda.Event pair each,
which shows the fixed GPU-side cost that any event pair adds. Where one call runs several
kernels (a large ``mul_`` is split in two), CUPTI's kernel times are summed per call.

Part 2, overhead: host time per region for N tiny kernels (``x.add_(1)`` on a small tensor):
(a) no timing, (b) cudaevents Timer regions, (c) a pair of ``torch.cuda.Event(enable_timing=
True)`` created per region and read with ``elapsed_time`` after a synchronize (the usual
pattern), (d) raw cuda.bindings events created once and reused (the floor), and (e)
``cudaevents.benchmark``. Reported: host us per region while enqueueing and in total (with
the final synchronize and reading every time), ratios of (b) against (c) and (d), native
event creations and peak live events.

Part 2 runs first, since a CUPTI session can leave kernel launches slower afterwards. Each
part (and each method) is guarded, so one failure does not lose the rest. Run on a GPU
machine with PyTorch:

    PYTHONPATH=src python3 benchmarks/profiler_accuracy.py [--out results.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import cudaevents
from cudaevents import EventPool, Timer, as_stream
from common import torch_event_pairs, write_report

ERRORS: list[str] = []


def guarded(what: str, fn, *args, **kwargs):
    """Run ``fn``; on failure print the traceback, remember it and return None."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        text = traceback.format_exc()
        print(f"!! {what} failed:\n{text}", file=sys.stderr, flush=True)
        ERRORS.append(f"{what}: {text.strip().splitlines()[-1]}")
        return None


def median(values):
    return statistics.median(values) if values else float("nan")


# -- part 1: accuracy ---------------------------------------------------------------------------
def torch_event_ms(torch, fn, reps: int = 5) -> float:
    """Median time of ``fn`` with torch events (for calibration only)."""
    times = []
    for _ in range(reps):
        ((start, end),) = torch_event_pairs(torch, 1, fn)
        end.synchronize()
        times.append(start.elapsed_time(end))
    return median(times)


class SleepKernel:
    """``torch.cuda._sleep(cycles)``: one spin kernel, calibrated to a target duration."""

    family = "sleep"
    kernel = "spin_kernel"

    def __init__(self, torch):
        self.torch = torch
        cycles = 20_000_000
        torch.cuda._sleep(1000)  # load the kernel
        torch.cuda.synchronize()
        ms = torch_event_ms(torch, lambda: torch.cuda._sleep(cycles))
        self.cycles_per_us = cycles / (ms * 1e3)

    def make(self, target_us: float):
        cycles = max(1, int(target_us * self.cycles_per_us))
        sleep = self.torch.cuda._sleep
        return (lambda: sleep(cycles)), {"cycles": cycles}


class ElementwiseKernel:
    """``x.mul_(c)`` on a float32 tensor whose size is chosen for the target duration."""

    family = "elementwise"
    kernel = "elementwise_kernel"
    max_elements = 1 << 30  # 4 GiB

    def __init__(self, torch):
        self.torch = torch
        n = 1 << 26
        x = torch.ones(n, device="cuda")
        x.mul_(1.0)
        torch.cuda.synchronize()
        ms = torch_event_ms(torch, lambda: x.mul_(1.0))
        self.us_per_element = ms * 1e3 / n
        self._x = None

    def make(self, target_us: float):
        n = int(min(self.max_elements, max(1024, target_us / self.us_per_element)))
        self._x = None
        self.torch.cuda.empty_cache()
        x = self._x = self.torch.ones(n, device="cuda")
        return (lambda: x.mul_(1.0)), {"elements": n, "bytes_moved": 8 * n}


def is_cuda_device_type(value) -> bool:
    return str(value).split(".")[-1].upper() == "CUDA"


def cupti_kernel_times_us(prof, name: str):
    """Durations (us) of the kernels whose name contains ``name``, from the profiler's records.

    Returns (durations, source, names seen on the device).
    """
    seen = {}
    # 1) the raw Kineto records: ns resolution where this PyTorch has duration_ns()
    try:
        raw = prof.profiler.kineto_results.events()
        out = []
        for ev in raw:
            if not is_cuda_device_type(ev.device_type()):
                continue
            n = ev.name()
            seen[n] = seen.get(n, 0) + 1
            if name in n:
                out.append(ev.duration_ns() / 1e3 if hasattr(ev, "duration_ns") else float(ev.duration_us()))
        if out:
            return out, "kineto events", seen
    except Exception as exc:
        print(f"   (kineto records unavailable: {exc!r}; trying prof.events())")
    # 2) the FunctionEvents built from them
    out = []
    for e in prof.events():
        if not is_cuda_device_type(getattr(e, "device_type", "")):
            continue
        seen[e.name] = seen.get(e.name, 0) + 1
        if name in e.name:
            out.append(e.time_range.elapsed_us())
    return out, "prof.events()", seen


def key_averages_us(prof, name: str):
    """Mean device time (us) and count of the kernel from key_averages(), as a cross-check."""
    for avg in prof.key_averages():
        if name not in avg.key:
            continue
        for attr in ("device_time", "cuda_time"):
            value = getattr(avg, attr, None)
            if value:
                return float(value), int(avg.count)
    return None, None


def time_with_timer(torch, fn, reps: int, queued: bool, stream, pool, pre_sleep_cycles: int):
    timer = Timer(pool=pool, nvtx=False)
    gs = as_stream(stream)
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        if queued:
            torch.cuda._sleep(pre_sleep_cycles)  # the GPU stays behind while we enqueue
        for _ in range(reps):
            with timer.region("k", gs):
                fn()
            if not queued:
                stream.synchronize()
        results = timer.results(timeout=300)
    return [ms * 1e3 for ms in results.durations("k")]


def time_with_torch_events(torch, fn, reps: int, stream, pre_sleep_cycles: int):
    """The same queued regions timed with a pair of torch.cuda.Event each, for comparison: the
    GPU-side cost that any event pair adds to what it brackets."""
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        torch.cuda._sleep(pre_sleep_cycles)
        pairs = torch_event_pairs(torch, reps, fn)
        torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 for s, e in pairs]


def per_call(times: list[float], calls: int) -> tuple[list[float], int]:
    """Kernel times summed per call when every call ran the same number of kernels."""
    if calls and len(times) % calls == 0 and len(times) > calls:
        k = len(times) // calls
        return [sum(times[i:i + k]) for i in range(0, len(times), k)], k
    return times, 1


def time_with_cupti(torch, fn, reps: int, stream, kernel: str):
    from torch.profiler import ProfilerActivity, profile

    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
    times, source, seen = cupti_kernel_times_us(prof, kernel)
    mean_us, count = guarded("key_averages", key_averages_us, prof, kernel) or (None, None)
    return times, source, seen, mean_us, count


def accuracy(torch, sizes_us, reps: int) -> list[dict]:
    stream = torch.cuda.Stream()
    pool = EventPool()
    rows = []
    families = []
    for cls in (SleepKernel, ElementwiseKernel):
        made = guarded(f"calibrating {cls.family}", cls, torch)
        if made is not None:
            families.append(made)
    sleep_cal = next((f for f in families if f.family == "sleep"), None)
    for fam in families:
        for target in sizes_us:
            row = {"family": fam.family, "target_us": target}
            rows.append(row)
            built = guarded(f"{fam.family} {target} us: building", fam.make, target)
            if built is None:
                continue
            fn, params = built
            row.update(params)
            n = reps if target < 1000 else max(20, reps // 4)
            row["reps"] = n
            # long enough to cover enqueueing all regions (~50 us each, generously)
            pre_us = 20_000 + 50 * n
            pre_cycles = int(pre_us * (sleep_cal.cycles_per_us if sleep_cal else 1500))
            for mode in ("queued", "idle"):
                us = guarded(f"{fam.family} {target} us: Timer ({mode})", time_with_timer, torch, fn, n,
                             mode == "queued", stream, pool, pre_cycles)
                if us:
                    row[f"event_{mode}_median_us"] = median(us)
                    row[f"event_{mode}_min_us"] = min(us)
                    row[f"event_{mode}_count"] = len(us)
            us = guarded(f"{fam.family} {target} us: torch.cuda.Event pairs (queued)", time_with_torch_events,
                         torch, fn, n, stream, pre_cycles)
            if us:
                row["torch_events_queued_median_us"] = median(us)
            got = guarded(f"{fam.family} {target} us: torch.profiler", time_with_cupti, torch, fn, n, stream,
                          fam.kernel)
            if got is not None:
                times, source, seen, mean_us, count = got
                times, row["kernels_per_call"] = per_call(times, n)
                row["cupti_source"] = source
                row["cupti_count"] = len(times)
                row["cupti_median_us"] = median(times)
                row["cupti_min_us"] = min(times) if times else float("nan")
                row["key_averages_mean_us"] = mean_us
                row["key_averages_count"] = count
                if len(times) != n or row["kernels_per_call"] > 1:
                    row["device_kernels_seen"] = seen
                    print(f"   note: {len(times)} '{fam.kernel}' kernels recorded for {n} calls; on the device: {seen}")
            cupti = row.get("cupti_median_us")
            for mode in ("queued", "idle", "torch_queued"):
                key = "torch_events_queued_median_us" if mode == "torch_queued" else f"event_{mode}_median_us"
                ev = row.get(key)
                if ev is not None and cupti:
                    row[f"ratio_{mode}"] = ev / cupti
            print_accuracy_row(row)
    return rows


def fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def print_accuracy_row(row):
    print(f"  {row['family']:<12} target {row['target_us']:>7g} us | events queued "
          f"{fmt(row.get('event_queued_median_us')):>9} us, idle {fmt(row.get('event_idle_median_us')):>9} us | "
          f"CUPTI {fmt(row.get('cupti_median_us')):>9} us (n={row.get('cupti_count', '-')}) | ratio queued "
          f"{fmt(row.get('ratio_queued'), '.3f')}, idle {fmt(row.get('ratio_idle'), '.3f')} | torch.cuda.Event "
          f"pairs queued {fmt(row.get('torch_events_queued_median_us'))} us, ratio "
          f"{fmt(row.get('ratio_torch_queued'), '.3f')}", flush=True)


# -- part 2: overhead ---------------------------------------------------------------------------
def trial_none(torch, x, n, ctx):
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"enqueue_s": t1 - t0, "total_s": t2 - t0}


def trial_ours(torch, x, n, ctx, stream_key="gs"):
    pool, gs = ctx["pool"], ctx[stream_key]
    timer = Timer(pool=pool, nvtx=False)
    pool.reset_stats()
    creates0 = pool.stats().creates
    region = timer.region
    t0 = time.perf_counter()
    for _ in range(n):
        with region("add", gs):
            x.add_(1)
    t1 = time.perf_counter()
    res = timer.results(timeout=300)
    t2 = time.perf_counter()
    st = pool.stats()
    return {"enqueue_s": t1 - t0, "total_s": t2 - t0, "median_region_us": median(res.durations("add")) * 1e3,
            "regions": len(res), "native_events_created": st.creates - creates0, "peak_live_events": st.high_water}


def trial_ours_torch_stream(torch, x, n, ctx):
    """As trial_ours, but given torch's stream object itself, as users write it."""
    return trial_ours(torch, x, n, ctx, "torch_stream")


def trial_torch_events(torch, x, n, ctx):
    event = torch.cuda.Event
    pairs = []
    t0 = time.perf_counter()
    for _ in range(n):
        start, end = event(enable_timing=True), event(enable_timing=True)
        start.record()
        x.add_(1)
        end.record()
        pairs.append((start, end))
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in pairs]
    t2 = time.perf_counter()
    del pairs
    # torch.cuda.Event makes its cudaEvent at the first record and destroys it when freed
    return {"enqueue_s": t1 - t0, "total_s": t2 - t0, "median_region_us": median(times) * 1e3,
            "regions": len(times), "native_events_created": 2 * n, "peak_live_events": 2 * n}


def trial_raw(torch, x, n, ctx):
    d, events, hs = ctx["driver"], ctx["raw_events"], ctx["raw_stream"]
    record = d.cuEventRecord
    t0 = time.perf_counter()
    for i in range(n):
        record(events[2 * i], hs)
        x.add_(1)
        record(events[2 * i + 1], hs)
    t1 = time.perf_counter()
    (err,) = d.cuEventSynchronize(events[2 * n - 1])
    if err:
        raise RuntimeError(f"cuEventSynchronize: {err!r}")
    times = []
    for i in range(n):
        err, ms = d.cuEventElapsedTime(events[2 * i], events[2 * i + 1])
        if err:
            raise RuntimeError(f"cuEventElapsedTime: {err!r}")
        times.append(ms)
    t2 = time.perf_counter()
    return {"enqueue_s": t1 - t0, "total_s": t2 - t0, "median_region_us": median(times) * 1e3,
            "regions": n, "native_events_created": 0, "peak_live_events": 2 * n}


def trial_benchmark(torch, x, n, ctx):
    pool, gs = ctx["pool"], ctx["gs"]
    pool.reset_stats()
    t0 = time.perf_counter()
    r = cudaevents.benchmark(lambda: x.add_(1), warmup=0, repeat=n, stream=gs, pool=pool, timeout=300)
    t2 = time.perf_counter()
    st = pool.stats()
    # its enqueue time is not separable from the event pre-acquisition; the sum of the calls' own
    # host times is reported as a lower bound
    return {"enqueue_s": None, "total_s": t2 - t0, "calls_only_s": r.cpu.total_ms / 1e3,
            "median_region_us": r.gpu.median_ms * 1e3, "regions": r.gpu.count,
            "native_events_created": st.creates, "native_events_created_timed_part": r.native_events_created,
            "peak_live_events": st.high_water}


METHODS = {
    "a_none": trial_none,
    "b_cudaevents_timer": trial_ours,
    "b2_timer_on_torch_stream": trial_ours_torch_stream,
    "c_torch_event_pairs": trial_torch_events,
    "d_raw_reused_events": trial_raw,
    "e_cudaevents_benchmark": trial_benchmark,
}


def overhead(torch, n: int, trials: int) -> dict:
    from cuda.bindings import driver as d

    from cudaevents._core import driver

    stream = torch.cuda.Stream()
    x = torch.zeros(16, device="cuda")
    ctx = {"pool": EventPool(), "gs": as_stream(stream), "torch_stream": stream, "driver": d, "raw_stream": d.CUstream(stream.cuda_stream)}
    with driver.pushed(torch.cuda.current_device()):
        raw = []
        for _ in range(2 * n):
            err, ev = d.cuEventCreate(0)
            if err:
                raise RuntimeError(f"cuEventCreate: {err!r}")
            raw.append(ev)
    ctx["raw_events"] = raw
    per_method: dict[str, list[dict]] = {m: [] for m in METHODS}
    try:
        with torch.cuda.stream(stream):
            for name, fn in METHODS.items():  # warm-up: kernels loaded, pools grown
                guarded(f"overhead warm-up {name}", fn, torch, x, min(n, 2000), ctx)
            torch.cuda.synchronize()
            names = list(METHODS)
            for t in range(trials):
                order = names[t % len(names):] + names[:t % len(names)]  # rotate, so drift hits all alike
                for name in order:
                    got = guarded(f"overhead {name} trial {t}", METHODS[name], torch, x, n, ctx)
                    if got is not None:
                        per_method[name].append(got)
                    torch.cuda.synchronize()
    finally:
        torch.cuda.synchronize()
        for ev in raw:
            d.cuEventDestroy(ev)

    summary: dict[str, dict] = {}
    for name, runs in per_method.items():
        if not runs:
            continue
        row = {"trials": len(runs)}
        enq = [r["enqueue_s"] for r in runs if r.get("enqueue_s") is not None]
        row["enqueue_us_per_region"] = median(enq) / n * 1e6 if enq else None
        row["total_us_per_region"] = median([r["total_s"] for r in runs]) / n * 1e6
        for key in ("median_region_us", "native_events_created", "native_events_created_timed_part",
                    "peak_live_events", "regions"):
            if key in runs[-1]:
                row[key] = runs[-1][key]
        if "calls_only_s" in runs[-1]:
            row["calls_only_us_per_region"] = median([r["calls_only_s"] for r in runs]) / n * 1e6
        summary[name] = row

    ratios = {}
    base = summary.get("a_none")
    for mine in ("b_cudaevents_timer", "b2_timer_on_torch_stream"):
        ours = summary.get(mine)
        for other in ("c_torch_event_pairs", "d_raw_reused_events"):
            ref = summary.get(other)
            if not (ours and ref):
                continue
            for key in ("enqueue_us_per_region", "total_us_per_region"):
                if ours.get(key) and ref.get(key):
                    ratios[f"{mine}/{other}/{key}"] = ours[key] / ref[key]
                    if base and base.get(key) is not None:
                        extra_ours, extra_ref = ours[key] - base[key], ref[key] - base[key]
                        if extra_ref > 0:
                            ratios[f"{mine}/{other}/{key} (above no timing)"] = extra_ours / extra_ref
    return {"regions": n, "trials": trials, "methods": summary, "ratios": ratios}


def print_overhead(result: dict) -> None:
    n = result["regions"]
    print(f"\nOverhead: {n} regions of x.add_(1) on a 16-element tensor, median of {result['trials']} trials")
    print(f"  {'method':<26}{'enqueue us/region':>19}{'total us/region':>17}{'GPU us/region':>15}"
          f"{'native creates':>16}{'peak live':>11}")
    for name, row in result["methods"].items():
        print(f"  {name:<26}{fmt(row.get('enqueue_us_per_region')):>19}{fmt(row.get('total_us_per_region')):>17}"
              f"{fmt(row.get('median_region_us')):>15}{str(row.get('native_events_created', '-')):>16}"
              f"{str(row.get('peak_live_events', '-')):>11}")
    bench = result["methods"].get("e_cudaevents_benchmark")
    if bench:
        print(f"  (benchmark: the calls alone took {fmt(bench.get('calls_only_us_per_region'))} us/region; "
              f"native events created in its timed part: {bench.get('native_events_created_timed_part')})")
    for key, value in result["ratios"].items():
        print(f"  {key}: {value:.3f}")


# -- main -----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--sizes-us", default="5,50,500,5000", help="target kernel durations in us")
    ap.add_argument("--reps", type=int, default=200, help="timed kernels per size (a quarter of it at >= 1 ms)")
    ap.add_argument("--regions", type=int, default=20_000, help="regions per overhead trial")
    ap.add_argument("--trials", type=int, default=3, help="overhead trials per method")
    ap.add_argument("--skip", choices=("accuracy", "overhead"), action="append", default=[])
    args = ap.parse_args(argv)

    out: dict = {"cudaevents": cudaevents.__version__, "argv": sys.argv[1:]}
    try:
        import torch
    except ImportError:
        print("this benchmark needs PyTorch with CUDA (pip install torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    out["torch"] = torch.__version__
    out["device"] = torch.cuda.get_device_name()
    out["versions"] = guarded("versions", lambda: cudaevents._core.driver.versions())
    print(f"cudaevents {cudaevents.__version__}, torch {torch.__version__}, {out['device']}")

    # overhead first: a CUPTI session (part 1) can leave launches slower for the rest of the process
    if "overhead" not in args.skip:
        result = guarded("overhead", overhead, torch, args.regions, args.trials)
        if result is not None:
            out["overhead"] = result
            guarded("printing overhead", print_overhead, result)
    if "accuracy" not in args.skip:
        sizes = [float(s) for s in args.sizes_us.split(",") if s.strip()]
        print("\nAccuracy: median event-pair time (cudaevents.Timer) vs median CUPTI kernel time")
        out["accuracy"] = guarded("accuracy", accuracy, torch, sizes, args.reps)
    out["errors"] = ERRORS
    write_report(out, args.out)
    if ERRORS:
        print(f"\n{len(ERRORS)} part(s) failed: " + "; ".join(ERRORS), file=sys.stderr)
    return 1 if ERRORS else 0


if __name__ == "__main__":
    raise SystemExit(main())
