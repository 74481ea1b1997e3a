"""Per-module timing of a real model: what LayerTimer costs and whether its times are right.

    PYTHONPATH=src python3 benchmarks/layer_timing.py [--quick] [--out layer_timing.json]

The model is GPT-2 small from ``transformers``, built from its config (random weights, 124M
parameters, nothing downloaded), in bf16 on one GPU. Every figure is a ratio to a baseline
measured in the same run: the methods of a section take turns, round by round (each round
starting from a different method), a trial being a method's wall time per iteration
(``torch.cuda.synchronize()`` around its iterations); a row gives the median trial and the
median over rounds of the trial's ratio to the untimed trial of the same round. A row
"LayerTimer hooks, no events" runs LayerTimer's hooks with a Timer stand-in that records
nothing: what the hooks cost without the events.

Sections:

1. **Training step** (8 x 512 tokens: forward with the loss, backward, AdamW step): untimed;
   LayerTimer forward only; LayerTimer forward and backward of every module; the coarse view
   (``depth=3``: the model, its two children, the embeddings, the final norm and the twelve
   blocks) with backward. Then the peers, against an untimed baseline of their own: the same
   hook points as LayerTimer with a ``torch.cuda.Event(enable_timing=True)`` pair made per
   region, as one writes by hand; and hand-written ``torch.cuda.Event`` pairs in PyTorch's
   full backward hooks, the usual way to time a module's backward. PyTorch warnings during
   each method's trials are counted. Then the GPU time of a step (an event pair around it,
   with the GPU queued behind the host) untimed and timed: what the timing costs the GPU.
2. **Agreement**: per module, the median region time of LayerTimer (forward and backward)
   over the median of the hand-written ``torch.cuda.Event`` pairs at the same hook points;
   reported: the median of those ratios over modules and the median absolute deviation from
   1, over all modules and over modules of at least 20 us. Twice: from the training-step
   trials as they ran (where the GPU waits for the host, as in this model's forward, a
   region also holds the host time of its own timing, which differs between the methods),
   and "queued", with a ~50 ms spin kernel ahead of each step, so that the GPU runs behind
   the host and each pair brackets its module's kernels alone.
3. **Inference forward** (8 x 512, ``torch.no_grad()``): untimed; LayerTimer on every module;
   LayerTimer ``depth=3``; ``torch.cuda.Event`` pairs in module hooks, made per call.
4. **Host-bound forward** (1 x 64 tokens, no_grad): the host time each timing method adds
   per timed module call: (time per forward - untimed) / module calls per forward; methods:
   empty PyTorch module hooks, LayerTimer, ``torch.cuda.Event`` hooks.
5. **Inference forward against torch.profiler** (8 x 512): untimed, LayerTimer, and
   ``torch.profiler`` with CUDA activity only and with CPU and CUDA; last, since a CUPTI
   session can leave kernel launches slower for the rest of the process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
import transformers

import cudaevents as ce
from cudaevents._core import compiled
from common import write_report

DEVICE = "cuda"


# -- timing methods: each is a context manager factory taking the model ---------------------------
class Untimed:
    def __init__(self, model, **_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def collect(self):
        return {}


class Layers:
    """LayerTimer with the given options; collect() returns name -> durations (ms)."""

    def __init__(self, model, **options):
        self.layers = ce.LayerTimer(model, **options)

    def __enter__(self):
        self.layers.attach()
        return self

    def __exit__(self, *exc):
        self.layers.detach()

    def collect(self):
        r = self.layers.results(timeout=120)
        self.layers.reset()
        out: dict[str, list[float]] = {}
        for s in r.samples:
            out.setdefault(s.name, []).append(s.duration_ms)
        return out


class PureLayers(Layers):
    """Layers on the pure-Python path: the compiled hot path off from attach to detach (its
    hooks are made at attach), for a row next to the compiled one in the same run."""

    def __enter__(self):
        compiled.use(False)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            super().__exit__(*exc)
        finally:
            compiled.use(None)

    def collect(self):
        compiled.use(False)  # the harvest too
        try:
            return super().collect()
        finally:
            compiled.use(None)


def with_pure_python(methods: dict) -> dict:
    """``methods`` plus a pure-Python twin of every LayerTimer row, where the compiled path runs."""
    if not compiled.active():
        return methods
    out = dict(methods)
    for name, (factory, options) in methods.items():
        if factory is Layers:
            out[name + " [pure Python]"] = (PureLayers, options)
    return out


class NullTimer:
    """Stands for a Timer and records nothing: what LayerTimer's hooks cost without events."""

    def begin(self, name, stream):
        return name

    def end(self, token):
        pass

    def discard(self, token, pop_nvtx=True):
        pass


class NullLayers(Layers):
    def __init__(self, model, **options):
        self.layers = ce.LayerTimer(model, timer=NullTimer(), **options)

    def collect(self):
        return {}


class TorchEventTimer:
    """Stands for a Timer inside LayerTimer's hooks: a torch.cuda.Event pair made per region,
    recorded on torch's current stream, read with elapsed_time() after a synchronize."""

    def __init__(self):
        self.pairs: list = []

    def begin(self, name, stream):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        return name, start

    def end(self, token):
        stop = torch.cuda.Event(enable_timing=True)
        stop.record()
        self.pairs.append((token[0], token[1], stop))

    def discard(self, token, pop_nvtx=True):
        pass

    def collect(self):
        torch.cuda.synchronize()
        out: dict[str, list[float]] = {}
        for name, start, stop in self.pairs:
            out.setdefault(name, []).append(start.elapsed_time(stop))
        self.pairs = []
        return out


class SameHooksTorchEvents(Layers):
    """LayerTimer's hook points (forward and backward), torch.cuda.Event pairs in them."""

    def __init__(self, model, **options):
        self.timer = TorchEventTimer()
        self.layers = ce.LayerTimer(model, timer=self.timer, **options)

    def collect(self):
        return self.timer.collect()


class HandHooks:
    """torch.cuda.Event pairs in plain module hooks, the usual hand-written pattern: forward
    pre/post hooks, and with ``backward`` PyTorch's full backward pre/post hooks."""

    def __init__(self, model, backward=False, empty=False):
        self.model, self.backward, self.empty = model, backward, empty
        self.timer = TorchEventTimer()
        self.handles = []

    def __enter__(self):
        timer, empty = self.timer, self.empty
        for name, module in self.model.named_modules():
            name = name or type(module).__name__
            fwd, bwd = [], []
            if empty:
                self.handles.append(module.register_forward_pre_hook(lambda m, a: None))
                self.handles.append(module.register_forward_hook(lambda m, a, o: None))
                continue
            self.handles.append(module.register_forward_pre_hook(
                lambda m, a, name=name, fwd=fwd: fwd.append(timer.begin(name, None))))
            self.handles.append(module.register_forward_hook(
                lambda m, a, o, fwd=fwd: timer.end(fwd.pop()) if fwd else None))
            if self.backward:
                self.handles.append(module.register_full_backward_pre_hook(
                    lambda m, g, name=name + ".backward", bwd=bwd: bwd.append(timer.begin(name, None))))
                self.handles.append(module.register_full_backward_hook(
                    lambda m, gi, go, bwd=bwd: timer.end(bwd.pop()) if bwd else None))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def collect(self):
        return self.timer.collect()


class Profiler:
    def __init__(self, model, cpu=False):
        acts = [torch.profiler.ProfilerActivity.CUDA]
        if cpu:
            acts.append(torch.profiler.ProfilerActivity.CPU)
        self.prof = torch.profiler.profile(activities=acts)

    def __enter__(self):
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)

    def collect(self):
        return {}


# -- the loop ---------------------------------------------------------------------------------------
CURRENT = None  # the method whose trial runs now (for work that keeps figures per method)


def run_trials(methods: dict, model, work, iters: int, trials: int, samples: dict | None = None):
    """Interleaved trials: per method, ms per iteration in each trial (trial i of every method
    ran in the same round), the PyTorch warnings seen, and (in ``samples``) every region time
    per name."""
    global CURRENT
    times = {name: [] for name in methods}
    warned = {name: 0 for name in methods}
    names = list(methods)
    for trial in range(trials + 1):  # trial 0 warms every method up and is not counted
        order = names[trial % len(names):] + names[:trial % len(names)]
        for name in order:
            if name not in times:
                continue  # failed in the warm-up
            factory, options = methods[name]
            CURRENT = name
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                try:
                    method = factory(model, **options)
                    with method:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        for _ in range(iters):
                            work()
                        torch.cuda.synchronize()
                        t1 = time.perf_counter()
                    got = method.collect()
                except Exception as e:
                    print(f"!! {name} failed: {type(e).__name__}: {e}", flush=True)
                    del times[name]
                    continue
            if trial == 0:
                continue
            warned[name] += len(seen)
            times[name].append((t1 - t0) / iters * 1e3)
            if samples is not None and got:
                per = samples.setdefault(name, {})
                for k, v in got.items():
                    per.setdefault(k, []).extend(v)
    return {n: v for n, v in times.items() if v}, warned


def section(title: str, methods: dict, model, work, iters: int, trials: int, samples: dict | None = None,
            per_call_of: str | None = None) -> dict:
    """Run one section's trials and print its rows: per method the median ms per iteration and
    the median over trials of its ratio to the untimed run of the same round; with
    ``per_call_of``, also the host time added per timed module call (that method's regions
    per iteration), in us. Returns the rows."""
    got = {} if samples is None else samples
    times, warned = run_trials(methods, model, work, iters, trials, got)
    base = times["untimed"]
    calls = None
    if per_call_of is not None:
        calls = sum(len(v) for v in got[per_call_of].values()) / (iters * trials)
        title += f" ({calls:.0f} timed module calls per iteration; host time added per call)"
    print(f"\n== {title}")
    rows = {}
    for name, t in times.items():
        row = {"ms": statistics.median(t), "x_untimed": statistics.median(a / b for a, b in zip(t, base)),
               "warnings": warned[name]}
        line = f"  {name:44s} {row['ms']:8.2f} ms  {row['x_untimed']:6.3f}x"
        if calls and name != "untimed":
            row["added_us_per_call"] = statistics.median((a - b) / calls * 1e3 for a, b in zip(t, base))
            line += f"  {row['added_us_per_call']:+7.2f} us per call"
        if warned[name]:
            line += f"  PyTorch warnings: {warned[name]}"
        print(line, flush=True)
        rows[name] = row
    return rows


def agreement(ours: dict, theirs: dict, floor_ms: float = 0.0):
    ratios = []
    for name, v in ours.items():
        w = theirs.get(name)
        if not w:
            continue
        a, b = statistics.median(v), statistics.median(w)
        if b > 0 and b >= floor_ms:
            ratios.append(a / b)
    if not ratios:
        return None
    return {"modules": len(ratios), "median_ratio": statistics.median(ratios),
            "median_abs_dev": statistics.median(abs(r - 1) for r in ratios)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke test")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--training-only", action="store_true",
                    help="only the training-step sections (ours and the peers), the others skipped")
    args = ap.parse_args(argv)
    iters, trials = (2, 1) if args.quick else (10, 7)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config()
    model = transformers.GPT2LMHeadModel(cfg).to(DEVICE, torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    n_modules = sum(1 for _ in model.named_modules())
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; transformers {transformers.__version__}; "
          f"GPT-2 small: {n_params / 1e6:.0f}M parameters, {n_modules} modules, bf16", flush=True)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    # 1 + 2: training step
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    x = torch.randint(0, cfg.vocab_size, (8, 512), device=DEVICE)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(x, labels=x).loss.backward()
        opt.step()

    ours_methods = with_pure_python({
        "untimed": (Untimed, {}),
        "LayerTimer forward": (Layers, {}),
        "LayerTimer forward+backward": (Layers, {"backward": True}),
        "LayerTimer depth=3 forward+backward": (Layers, {"backward": True, "depth": 3}),
        "LayerTimer hooks, no events, fwd+bwd": (NullLayers, {"backward": True}),
    })
    # The peers make and free a torch.cuda.Event pair per region: their own section, so that
    # churn does not weigh on the rows above.
    peer_methods = {
        "untimed": (Untimed, {}),
        "same hooks, torch.cuda.Event pairs": (SameHooksTorchEvents, {"backward": True}),
        "torch.cuda.Event in full backward hooks": (HandHooks, {"backward": True}),
    }
    samples: dict = {}
    report["training_step"] = {
        "cudaevents": section("training step, 8 x 512, cudaevents", ours_methods, model, train_step, iters, trials,
                              samples),
        "peers": section("training step, 8 x 512, peers", peer_methods, model, train_step, iters, trials, samples),
    }
    per_step = {k: len(v) / (iters * trials) for k, v in samples.get("LayerTimer forward+backward", {}).items()}
    regions = sum(per_step.values())
    print(f"  LayerTimer forward+backward: {regions:.0f} regions per step "
          f"({sum(1 for k in per_step if k.endswith('.backward'))} modules with a backward region)")
    report["training_step"]["regions_per_step"] = regions
    if args.training_only:
        write_report(report, args.out)
        return 0

    # Queued: a spin kernel ahead of each step keeps the GPU behind the host, so each pair
    # brackets its module's kernels alone, whatever either method costs on the host; an event
    # pair around each step gives the GPU time of the step (what the timing costs the GPU).
    spin = 100_000_000  # clock cycles: ~50 ms at an H200's ~2 GHz
    gpu_steps: dict = {}

    def queued_step():
        torch.cuda._sleep(spin)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        train_step()
        e1.record()
        gpu_steps.setdefault(CURRENT, []).append((e0, e1))

    queued: dict = {}
    run_trials({"untimed": (Untimed, {}), "ours": (Layers, {"backward": True}),
                "torch": (SameHooksTorchEvents, {"backward": True})},
               model, queued_step, max(iters // 2, 1), max(trials - 2, 1), queued)
    torch.cuda.synchronize()
    gpu_ms = {k: statistics.median(a.elapsed_time(b) for a, b in v[max(iters // 2, 1):]) for k, v in gpu_steps.items()}
    print(f"\n== GPU time of a training step, the GPU queued behind the host: untimed {gpu_ms['untimed']:.2f} ms, "
          f"LayerTimer forward+backward {gpu_ms['ours']:.2f} ms ({gpu_ms['ours'] / gpu_ms['untimed']:.3f}x), "
          f"torch.cuda.Event pairs at the same hooks {gpu_ms['torch']:.2f} ms ({gpu_ms['torch'] / gpu_ms['untimed']:.3f}x)")
    report["gpu_ms_per_step_queued"] = gpu_ms
    print("\n== agreement with torch.cuda.Event pairs at the same hook points (LayerTimer / torch, per module)")
    report["agreement"] = {}
    pairs = (("as run", samples.get("LayerTimer forward+backward", {}), samples.get("same hooks, torch.cuda.Event pairs", {})),
             ("queued", queued.get("ours", {}), queued.get("torch", {})))
    for regime, ours, theirs in pairs:
        for label, keep in (("forward", lambda n: not n.endswith(".backward")),
                            ("backward", lambda n: n.endswith(".backward"))):
            o = {k: v for k, v in ours.items() if keep(k)}
            for floor in (0.0, 0.02):
                a = agreement(o, theirs, floor)
                key = f"{regime}, {label}, " + (f"modules >= {floor * 1e3:.0f} us" if floor else "all modules")
                report["agreement"][key] = a
                if a:
                    print(f"  {key:42s} {a['modules']:4d} modules: median ratio {a['median_ratio']:.4f}, "
                          f"median |ratio - 1| {a['median_abs_dev']:.4f}")

    model.eval()
    with torch.no_grad():
        report["forward_8x512"] = section("inference forward, 8 x 512", with_pure_python({
            "untimed": (Untimed, {}),
            "LayerTimer": (Layers, {}),
            "LayerTimer depth=3": (Layers, {"depth": 3}),
            "torch.cuda.Event hooks": (HandHooks, {}),
        }), model, lambda: model(x), iters, trials)
        small = torch.randint(0, cfg.vocab_size, (1, 64), device=DEVICE)
        report["host_bound_1x64"] = section("host-bound forward, 1 x 64", with_pure_python({
            "untimed": (Untimed, {}),
            "empty PyTorch hooks": (HandHooks, {"empty": True}),
            "LayerTimer hooks, no events": (NullLayers, {}),
            "LayerTimer": (Layers, {}),
            "torch.cuda.Event hooks": (HandHooks, {}),
        }), model, lambda: model(small), iters * 5, trials, per_call_of="LayerTimer")
        # last, since a CUPTI session can leave launches slower for the rest of the process
        report["forward_8x512_profiler"] = section("inference forward, 8 x 512, against torch.profiler", {
            "untimed": (Untimed, {}),
            "LayerTimer": (Layers, {}),
            "torch.profiler CUDA": (Profiler, {}),
            "torch.profiler CPU+CUDA": (Profiler, {"cpu": True}),
        }, model, lambda: model(x), iters, trials)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
