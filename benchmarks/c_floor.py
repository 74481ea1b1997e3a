"""How far cudaevents' timing is above the C floor: timing events recorded and read from C.

    PYTHONPATH=src python3 benchmarks/c_floor.py [--quick] [--out c_floor.json]

The floor is ``c_floor.c`` (next to this script), a small CPython extension built here with the
system C compiler: a ring of pre-made timing events that it records and reads through driver
entry points found with ``cuGetProcAddress`` (via cuda.bindings). Needs a C compiler and the
Python headers (``python3-config``); sections 2 and 3 need PyTorch, section 3 transformers.

1. **Empty regions**, host cost per region: batches of 250 regions, the GPU's catching up not
   charged (the stream is synchronized between recording and reading, outside the clock). The
   C loop (records and reads in C), the same called from Python (one call per record), raw
   cuda-bindings on pre-made events, ``Timer`` regions with their harvest, ``Timer.laps`` (per
   phase), and ``torch.cuda.Event`` pairs made per region. Each against the C loop.
2. **Regions of ten small launches** (``x.add_(1)`` on 16 floats), host time per region
   added to the untimed loop, everything charged (the loop, a final synchronize, the reads).
3. **GPT-2 small, host-bound forward** (batch 1, 64 tokens, bf16, no_grad): host time per module
   call added by empty PyTorch hooks, by hooks that record a ring event from C in the pre- and
   the post-hook (the floor of any event-based layer timer; nothing read back), and by LayerTimer.

Methods take turns round by round, each round starting from a different one; figures are
medians over rounds. Nothing here is a test: run it on a GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import cudaevents as ce
from cudaevents._core import compiled, driver
from common import torch_event_pairs, write_report

HERE = os.path.dirname(os.path.abspath(__file__))
RING = 8192  # events: 4,096 pairs, far more than any batch keeps in flight


def build():
    """Compile c_floor.c into a temporary folder and import it."""
    out = tempfile.mkdtemp(prefix="c_floor_")
    target = os.path.join(out, "c_floor" + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = os.environ.get("CC", "cc")
    include = sysconfig.get_paths()["include"]
    subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{include}", os.path.join(HERE, "c_floor.c"), "-o", target],
                   check=True)
    spec = importlib.util.spec_from_file_location("c_floor", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_events(d, n: int) -> list:
    """``n`` native timing events (cuda.bindings objects; int() gives the handle)."""
    events = []
    for _ in range(n):
        err, ev = d.cuEventCreate(0)  # CU_EVENT_DEFAULT: timing enabled
        if err != d.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"cuEventCreate failed: {err}")
        events.append(ev)
    return events


def on_pure_python(fn):
    """``fn`` with the compiled hot path switched off while it runs (the pure-Python row),
    or ``None`` where the compiled path is not in use (then every cudaevents row is pure)."""
    if not compiled.active():
        return None

    def run(*args):
        compiled.use(False)
        try:
            return fn(*args)
        finally:
            compiled.use(None)

    return run


def with_pure_python(methods: dict) -> dict:
    """``methods`` plus, for every one named "cudaevents ...", its pure-Python twin."""
    out = dict(methods)
    for name, fn in methods.items():
        twin = on_pure_python(fn) if name.startswith("cudaevents") else None
        if twin is not None:
            out[name + " [pure Python]"] = twin
    return out


def rounds(methods: dict, n_rounds: int) -> dict:
    """Interleaved rounds (round 0 warms up and is not counted): method -> its values."""
    got = {name: [] for name in methods}
    names = list(methods)
    for r in range(n_rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            value = methods[name]()
            if r:
                got[name].append(value)
    return got


def empty_regions(cf, d, stream, quick: bool) -> dict:
    batch, n_rounds = (50, 3) if quick else (250, 15)
    s = stream.handle
    sync = stream.synchronize
    mark = cf.mark
    rec, ela = d.cuEventRecord, d.cuEventElapsedTime
    pairs = [(a, b) for a, b in zip(*[iter(new_events(d, 2 * batch))] * 2)]
    timer = ce.Timer(nvtx=False)

    def clock(record, read):
        t0 = time.perf_counter_ns()
        record()
        t1 = time.perf_counter_ns()
        sync(timeout=30)
        t2 = time.perf_counter_ns()
        read()
        t3 = time.perf_counter_ns()
        return (t1 - t0 + t3 - t2) / batch / 1e3

    def python_marks():
        for _ in range(batch):
            mark()
            mark()

    def raw_records():
        for a, b in pairs:
            rec(a, s)
            rec(b, s)

    def raw_reads():
        for a, b in pairs:
            ela(a, b)

    def timer_regions():
        for _ in range(batch):
            with timer.region("r", stream):
                pass

    def timer_laps():
        with timer.laps(stream) as lap:
            for _ in range(batch):
                lap("p")

    methods = with_pure_python({
        "C loop: records and reads in C (the floor)": lambda: clock(lambda: cf.regions(batch), lambda: cf.read(batch)),
        "C from Python: one call per record, read in C": lambda: clock(python_marks, lambda: cf.read(batch)),
        "raw cuda-bindings, pre-made events": lambda: clock(raw_records, raw_reads),
        "cudaevents Timer region, harvested": lambda: clock(timer_regions, timer.harvest),
        "cudaevents Timer.laps, per phase": lambda: clock(timer_laps, timer.harvest),
    })
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        tstream = torch.cuda.ExternalStream(s)

        def torch_pairs():
            made = []
            for _ in range(batch):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(tstream)
                b.record(tstream)
                made.append((a, b))
            return made

        def torch_method():
            made = []
            return clock(lambda: made.extend(torch_pairs()), lambda: [a.elapsed_time(b) for a, b in made])

        methods["torch.cuda.Event pair made per region"] = torch_method
    cf.set_ring([int(e) for e in new_events(d, RING)], int(s))
    got = rounds(methods, n_rounds)
    timer.results(timeout=30)
    floor = statistics.median(got["C loop: records and reads in C (the floor)"])
    print(f"\n== empty regions: host us per region (batches of {batch}; x the C loop)")
    rows = {}
    for name, values in got.items():
        us = statistics.median(values)
        rows[name] = {"us": us, "x_floor": us / floor}
        print(f"  {name:50s} {us:7.2f} us  {us / floor:6.2f}x")
    return rows


def small_launches(cf, torch, quick: bool) -> dict:
    n, n_rounds = (50, 3) if quick else (500, 9)
    x = torch.zeros(16, device="cuda")
    stream = torch.cuda.current_stream()
    cf.set_ring([int(e) for e in new_events(driver.bindings(), RING)], stream.cuda_stream)
    timer = ce.Timer(nvtx=False)
    mark = cf.mark

    def work():
        for _ in range(10):
            x.add_(1)

    def clock(loop, read=None):
        torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        out = loop()
        torch.cuda.synchronize()
        if read is not None:
            read(out)
        return (time.perf_counter_ns() - t0) / n / 1e3

    def untimed():
        for _ in range(n):
            work()

    def c_marks():
        for _ in range(n):
            mark()
            work()
            mark()

    def timer_regions():
        for _ in range(n):
            with timer.region("r"):
                work()

    def timer_laps():
        with timer.laps() as lap:
            for _ in range(n):
                lap("r")
                work()

    def torch_pairs():
        return torch_event_pairs(torch, n, work)

    got = rounds(with_pure_python({
        "untimed": lambda: clock(untimed),
        "C marks from Python (recorded, read in C)": lambda: clock(c_marks, lambda _: cf.read(min(n, RING // 2))),
        "cudaevents Timer region": lambda: clock(timer_regions, lambda _: timer.harvest()),
        "cudaevents Timer.laps": lambda: clock(timer_laps, lambda _: timer.harvest()),
        "torch.cuda.Event pairs": lambda: clock(torch_pairs, lambda made: [a.elapsed_time(b) for a, b in made]),
    }), n_rounds)
    timer.results(timeout=30)
    base = got.pop("untimed")
    print(f"\n== regions of ten small launches: untimed {statistics.median(base):.2f} us per region; "
          "host us added per region (x the C marks)")
    added = {name: statistics.median(a - b for a, b in zip(v, base)) for name, v in got.items()}
    floor = added["C marks from Python (recorded, read in C)"]
    for name, us in added.items():
        print(f"  {name:50s} {us:+7.2f} us  {us / floor:6.2f}x")
    return {"untimed_us": statistics.median(base), "added_us": added}


def gpt2_forward(cf, torch, quick: bool) -> dict | None:
    try:
        import transformers
    except ImportError:
        print("\n== GPT-2 forward: transformers not installed, skipped")
        return None
    torch.manual_seed(0)
    cfg = transformers.GPT2Config()
    model = transformers.GPT2LMHeadModel(cfg).cuda().to(torch.bfloat16).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 64), device="cuda")
    iters, n_rounds = (3, 2) if quick else (40, 7)
    cf.set_ring([int(e) for e in new_events(driver.bindings(), RING)], torch.cuda.current_stream().cuda_stream)
    mark = cf.mark
    calls = [0]

    def hooks(pre, post):
        handles = []
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        return handles

    def clock(attach=None):
        handles = attach() if attach else []
        try:
            with torch.no_grad():
                model(x)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(iters):
                    model(x)
                torch.cuda.synchronize()
                return (time.perf_counter() - t0) / iters * 1e6
        finally:
            for h in handles:
                h.remove()

    def layer_timer():
        with ce.LayerTimer(model) as layers:
            t = clock()
        layers.results(timeout=60)
        return t

    with torch.no_grad():  # module calls per forward
        handles = hooks(lambda m, a: calls.__setitem__(0, calls[0] + 1), lambda m, a, o: None)
        model(x)
        for h in handles:
            h.remove()
    got = rounds(with_pure_python({
        "untimed": clock,
        "empty PyTorch hooks": lambda: clock(lambda: hooks(lambda m, a: None, lambda m, a, o: None)),
        "hooks recording a ring event from C (the floor)": lambda: clock(lambda: hooks(lambda m, a: mark(),
                                                                                        lambda m, a, o: mark())),
        "cudaevents LayerTimer": layer_timer,
    }), n_rounds)
    base = got.pop("untimed")
    print(f"\n== GPT-2 small forward, 1 x 64: untimed {statistics.median(base) / 1e3:.2f} ms, {calls[0]} module calls; "
          "host us added per module call")
    added = {name: statistics.median((a - b) / calls[0] for a, b in zip(v, base)) for name, v in got.items()}
    floor = added["hooks recording a ring event from C (the floor)"]
    for name, us in added.items():
        print(f"  {name:50s} {us:+7.2f} us  {us / floor:6.2f}x the floor")
    return {"module_calls": calls[0], "added_us": added}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds: a smoke test")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    reason = driver.unavailable_reason()
    if reason is not None:
        print(f"c_floor: no usable CUDA driver: {reason}", file=sys.stderr)
        return 1
    cf = build()
    d = driver.bindings()
    entries = compiled.entry_addresses(d)
    cf.bind(*(entries[name] for name in ("cuEventRecord", "cuEventElapsedTime", "cuEventQuery")))
    report = {"device": ce.Device(0).name}
    print(f"{report['device']}; cuda-bindings {driver.versions().get('cuda-bindings', '?')}; "
          f"hot path: {compiled.describe()}")
    with driver.pushed(0), ce.GpuStream(0) as stream:
        report["empty_regions"] = empty_regions(cf, d, stream, args.quick)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        report["small_launches"] = small_launches(cf, torch, args.quick)
        report["gpt2_forward"] = gpt2_forward(cf, torch, args.quick)
    else:
        print("\n== sections 2 and 3: PyTorch with CUDA not installed, skipped")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
