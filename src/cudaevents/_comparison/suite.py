"""The comparison suite behind ``cudaevents bench`` and ``benchmarks/suite.py``: what
cudaevents costs next to raw cuda-bindings and every peer installed (PyTorch, CuPy,
cuda.core), measured side by side in one run, with pass/miss lines for the project's targets.

This module runs the measurements and renders their result; the measurements themselves
live in :mod:`cudaevents._comparison.host` (host time per operation: medians of interleaved
batches) and :mod:`cudaevents._comparison.latency` (single-event latencies: percentiles of
interleaved samples), on the shared loop, rows and clean-up of
:mod:`cudaevents._comparison.plumbing`; the raw cuda-bindings baselines, the only code here
that calls the bindings directly, are in :mod:`cudaevents._comparison.raw`.

The library does not import this subpackage: only the ``cudaevents bench`` command does, when
it runs (and ``benchmarks/``).

Peers are imported only when installed (``importlib.util.find_spec``) and only when a
section that compares against them runs; a peer that is missing or fails is reported and the
rest still runs.

The result of :func:`run_suite` is plain dicts and lists, JSON as is: ``header`` (device,
versions, configuration), ``peers``, ``sections`` (one per measurement: ``title``, ``what``,
``columns``, ``rows``, ``notes``, ``skipped``, ``errors``) and ``targets``
(:func:`evaluate_targets`). :func:`to_markdown`, :func:`to_json` and :func:`plot` render it.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import time
import types

from .. import CudaUnavailableError, Device, device_count
from .._core import driver
from . import host as _host
from . import plumbing
from .latency import round_trip, worker_wakeup
from .plumbing import Context, describe_error

__all__ = [
    "FULL",
    "QUICK",
    "SECTIONS",
    "SuiteConfig",
    "evaluate_targets",
    "latency_script",
    "plot",
    "run_suite",
    "section_markdown",
    "to_json",
    "to_markdown",
]

SECTIONS = ("create_record", "timing_pairs", "creations", "round_trip", "worker", "atomic_alloc", "threads", "keys")
"""Names of the suite's measurements, in the order they run (``--only`` takes these)."""

_TITLES = {
    "create_record": "new event + record (+ release), and record alone",
    "timing_pairs": "timing pairs",
    "creations": "native event creations",
    "round_trip": "CPU -> GPU -> CPU round trip",
    "worker": "worker wake-up",
    "atomic_alloc": "AtomicEvent creation and memory",
    "threads": "pool fast path with 1, 4, 16 threads",
    "keys": "pool fast path vs cached keys and devices",
}
_PEER_SECTIONS = ("create_record", "timing_pairs", "creations")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """How much the suite measures: :data:`FULL` (the default) or :data:`QUICK`.

    Attributes:
        batches: timed batches per method (the median over them is reported).
        ops: operations (or timed regions) per batch.
        alloc_ops: AtomicEvents (and raw pinned allocations) per batch.
        regions: timed regions for the native-creation count.
        in_flight: the most regions in flight during that count.
        round_trip_samples, round_trip_warmup, round_trip_block: round-trip sampling.
        round_trip_settle_us: busy-wait between enqueuing and the host's store.
        worker_samples, worker_warmup, worker_block: wake-up sampling.
        worker_settle_ms: how long a waiter sleeps before the GPU is released.
        threads: thread counts for the scaling measurement.
        pair_batches, pair_regions: timing-pair sampling. Batches stay short (a few hundred
            regions) so the GPU, which needs ~3 us per event record on an H100, never holds
            the host back: a stream accepts only so many pending operations.
    """

    batches: int
    ops: int
    alloc_ops: int
    regions: int
    in_flight: int
    round_trip_samples: int
    round_trip_warmup: int
    round_trip_block: int
    round_trip_settle_us: float
    worker_samples: int
    worker_warmup: int
    worker_block: int
    worker_settle_ms: float
    threads: tuple[int, ...]
    pair_batches: int = 40
    pair_regions: int = 250


FULL = SuiteConfig(batches=15, ops=2000, alloc_ops=500, regions=100_000, in_flight=64,
                   round_trip_samples=2000, round_trip_warmup=200, round_trip_block=50, round_trip_settle_us=50.0,
                   worker_samples=1000, worker_warmup=100, worker_block=100, worker_settle_ms=1.0,
                   threads=(1, 4, 16))
"""The full suite: 15 batches of 2,000 operations per method, 100,000 timed regions, 2,000
round trips and 1,000 wake-ups per method."""

QUICK = SuiteConfig(batches=3, ops=200, alloc_ops=50, regions=2000, in_flight=64,
                    round_trip_samples=50, round_trip_warmup=10, round_trip_block=10, round_trip_settle_us=50.0,
                    worker_samples=20, worker_warmup=5, worker_block=5, worker_settle_ms=1.0,
                    threads=(1, 4, 16), pair_batches=3, pair_regions=50)
"""A smoke test of every measurement in seconds; its numbers are rough."""


# -- peers ---------------------------------------------------------------------------------------
def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _import_torch(device: int):
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False (a CPU-only build?)")
    if torch.cuda.device_count() <= device:
        raise RuntimeError(f"torch sees {torch.cuda.device_count()} device(s), not device {device}")
    return torch, f"{torch.__version__} (CUDA {torch.version.cuda})"


def _import_cupy(device: int):
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if count <= device:
        raise RuntimeError(f"CuPy sees {count} device(s), not device {device}")
    return cupy, cupy.__version__


def _import_cuda_core(device: int):
    try:
        from cuda.core import Device as CoreDevice
        from cuda.core import EventOptions
    except ImportError:  # cuda.core before 1.0
        from cuda.core.experimental import Device as CoreDevice
        from cuda.core.experimental import EventOptions
    import cuda.core

    version = getattr(cuda.core, "__version__", None) or importlib.metadata.version("cuda-core")
    return types.SimpleNamespace(Device=CoreDevice, EventOptions=EventOptions), version


_PEERS = (("torch", "torch", _import_torch), ("cupy", "cupy", _import_cupy),
          ("cuda.core", "cuda.core", _import_cuda_core))


def _load_peers(device: int, say) -> tuple[dict, dict]:
    """Import the peers that are installed; returns ``(modules, info)``. Says which are
    skipped and why."""
    modules, info = {}, {}
    for name, module, load in _PEERS:
        if not _installed(module):
            info[name] = {"status": "not installed"}
            say(f"{name}: not installed, skipped")
            continue
        try:
            mod, version = load(device)
        except Exception as exc:  # noqa: BLE001 - a broken or CPU-only install: skip it, say why
            info[name] = {"status": f"unusable ({describe_error(exc)})"}
            say(f"{name}: unusable ({describe_error(exc)}), skipped")
            continue
        modules[name] = mod
        info[name] = {"status": "ok", "version": str(version)}
    return modules, info


# -- latencies ------------------------------------------------------------------------------------
def _round_trip(ctx: Context) -> dict:
    cfg = ctx.config
    return round_trip(cfg.round_trip_samples, cfg.round_trip_warmup, cfg.round_trip_block, cfg.round_trip_settle_us,
                      ctx.device)


def _worker(ctx: Context) -> dict:
    cfg = ctx.config
    return worker_wakeup(cfg.worker_samples, cfg.worker_warmup, cfg.worker_block, cfg.worker_settle_ms, ctx.device)


_RUNNERS = {
    "create_record": _host.create_record,
    "timing_pairs": _host.timing_pairs,
    "creations": _host.creations,
    "round_trip": _round_trip,
    "worker": _worker,
    "atomic_alloc": _host.atomic_alloc,
    "threads": _host.threads,
    "keys": _host.keys,
}


# -- running --------------------------------------------------------------------------------------
def _selected(only) -> list[str]:
    if only is None:
        return list(SECTIONS)
    if isinstance(only, str):
        only = [only]
    unknown = [name for name in only if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown measurement(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in only]


def _header(device: int, cfg: SuiteConfig, quick: bool, peers: dict) -> dict:
    from .. import __version__

    dev = Device(device)
    major, minor = dev.compute_capability
    versions = {"cudaevents": __version__, **driver.versions(), "python": platform.python_version()}
    for name, info in peers.items():
        if info.get("version"):
            versions[name] = info["version"]
    return {
        "suite": "cudaevents bench",
        "mode": "quick" if quick else "full",
        "device": {"index": device, "name": dev.name, "compute_capability": f"{major}.{minor}"},
        "devices": [Device(i).name for i in range(device_count())],
        "versions": versions,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": dataclasses.asdict(cfg),
    }


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by ``None`` and tuples by lists
    (so that the result is strict JSON and loads back equal)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run_suite(quick: bool = False, only=None, progress=None, device: int = 0) -> dict:
    """Run the comparison suite and return its result (plain dicts and lists, JSON as is).

    Args:
        quick: :data:`QUICK` instead of :data:`FULL` (every measurement in seconds, rough
            numbers: for tests and CI).
        only: names from :data:`SECTIONS` to run (default: all), in the suite's order.
        progress: called with one line of text per step (``"[3/8] native event creations ..."``,
            peers skipped, failures), e.g. to print to stderr.
        device: the device ordinal to measure on.

    Raises:
        CudaUnavailableError: no usable driver or GPU (the message says why).
        ValueError: an unknown name in ``only``.
    """
    names = _selected(only)
    reason = driver.unavailable_reason()
    if reason is not None:
        raise CudaUnavailableError(reason)
    say = progress or (lambda line: None)
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    with driver.pushed(Device(device).index):
        if any(name in _PEER_SECTIONS for name in names):
            modules, peers = _load_peers(device, say)
        else:
            modules, peers = {}, {}
        header = _header(device, cfg, quick, peers)
        ctx = Context(cfg, device, modules, peers)
        sections = {}
        for i, name in enumerate(names, 1):
            say(f"[{i}/{len(names)}] {_TITLES[name]} ...")
            t0 = time.perf_counter()
            try:
                section = _RUNNERS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - reported; the other sections still run
                section = plumbing.section(_TITLES[name], "", [], [], errors={"section": describe_error(exc)})
            section["seconds"] = round(time.perf_counter() - t0, 3)
            for key, why in section["errors"].items():
                say(f"      {key}: failed ({why})")
            sections[name] = section
    header["seconds"] = round(time.perf_counter() - t_start, 1)
    result = {"schema": 1, "header": header, "peers": peers, "sections": sections}
    result["targets"] = evaluate_targets(result)
    return _finite(result)


# -- targets ----------------------------------------------------------------------------------------
def _row(result: dict, section: str, key: str) -> dict | None:
    for row in result.get("sections", {}).get(section, {}).get("rows", []):
        if row.get("key") == key:
            return row
    return None


def _number(row: dict | None, field: str) -> float | None:
    value = None if row is None else row.get(field)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _missing(result: dict, section: str, key: str, peer: str | None) -> str:
    """Why a row a target needs is not there."""
    sec = result.get("sections", {}).get(section)
    if sec is None:
        return "not run"
    if peer is not None:
        status = result.get("peers", {}).get(peer, {}).get("status")
        if status and status != "ok":
            return f"{peer} {status}"
    why = sec.get("errors", {}).get(peer or key) or sec.get("errors", {}).get(key) or sec.get("errors", {}).get("section")
    return f"failed: {why}" if why else "not measured"


def _target(tid: str, text: str, op: str, limit: float, value: float | None, detail: str, why: str = "") -> dict:
    if value is None:
        status = "n/a"
    else:
        status = "pass" if (value <= limit if op == "<=" else value >= limit) else "miss"
    return {"id": tid, "text": text, "op": op, "limit": limit, "value": value, "status": status,
            "detail": detail if value is not None else why}


def _ratio_target(result: dict, tid: str, text: str, section: str, num: tuple, den: tuple, op: str,
                  limit: float) -> dict:
    """A target on the ratio of two rows' medians; ``num``/``den`` are ``(key, peer)``."""
    values = []
    for key, peer in (num, den):
        v = _number(_row(result, section, key), "median_us")
        if v is None or v <= 0:
            return _target(tid, text, op, limit, None, "", _missing(result, section, key, peer))
        values.append(v)
    a, b = values
    return _target(tid, text, op, limit, a / b, f"{a / b:.2f}x ({a:.3g} us / {b:.3g} us)")


def evaluate_targets(result: dict) -> list[dict]:
    """The project's targets as pass/miss lines, from ratios within one result.

    Each entry: ``id``, ``text``, ``op`` (``"<="`` or ``">="``), ``limit``, ``value`` (the
    measured ratio or count, ``None`` when not measured), ``status`` (``"pass"``, ``"miss"``
    or ``"n/a"``) and ``detail`` (the numbers behind it, or why it was not measured).
    """
    r = result
    ours_event, ours_timer = ("ours_event", None), ("ours", None)
    targets = [
        _ratio_target(r, "pool_vs_record", "pooled acquire + record + release <= 2x a raw cuEventRecord",
                      "create_record", ("ours_pool", None), ("raw_record", None), "<=", 2.0),
        _ratio_target(r, "new_event_vs_cuda_core", "new event + record >= 1.7x faster than cuda.core",
                      "create_record", ("cuda_core", "cuda.core"), ours_event, ">=", 1.7),
        _ratio_target(r, "new_event_vs_cupy", "new event + record >= 3x faster than CuPy",
                      "create_record", ("cupy", "cupy"), ours_event, ">=", 3.0),
        _ratio_target(r, "new_event_vs_torch", "new event + record >= 3.5x faster than torch",
                      "create_record", ("torch", "torch"), ours_event, ">=", 3.5),
        _ratio_target(r, "timer_vs_torch", "Timer pair >= 3.5x cheaper than torch.cuda.Event pairs with elapsed_time",
                      "timing_pairs", ("torch", "torch"), ours_timer, ">=", 3.5),
        _ratio_target(r, "timer_vs_raw", "Timer pair <= 1.5x raw pooled bindings",
                      "timing_pairs", ours_timer, ("raw_pooled", None), "<=", 1.5),
    ]
    ours = _row(r, "creations", "ours")
    steady, creates, peak = (_number(ours, field) for field in ("steady_creates", "creates", "peak_in_flight"))
    refs = _number(ours, "reference_events") or 0
    why = _missing(r, "creations", "ours", None)
    targets.append(_target("steady_creations", "zero native creations in steady state", "<=", 0, steady,
                           f"{_cell(steady)} native creations after warm-up", why))
    limit = None if peak is None else 2 * peak + refs
    targets.append(_target(
        "overall_creations", "native creations <= 2x the peak regions in flight (+ the Timer's reference event)",
        "<=", limit, None if limit is None else creates,
        f"{_cell(creates)} for {_cell(_number(ours, 'regions'))} regions; limit 2 x {_cell(peak)} in flight "
        f"+ {_cell(refs)} = {_cell(limit)}", why))
    targets.append(_ratio_target(r, "round_trip", "AtomicEvent round trip <= 1.6x the raw floor (median)",
                                 "round_trip", (_default_round_trip_key(r), None), ("floor", None), "<=", 1.6))
    targets.append(_ratio_target(r, "worker", "Worker latency <= 1.3x a raw thread in a blocking-sync "
                                 "cuEventSynchronize (median)", "worker", ("worker", None), ("floor", None), "<=", 1.3))
    return targets


def _default_round_trip_key(result: dict) -> str:
    """The round-trip row the target uses: the default backend, spinning as the floor does."""
    backend = result.get("sections", {}).get("round_trip", {}).get("info", {}).get("default_backend", "mem64")
    return f"atomic_{backend}_spin"


# -- rendering --------------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        a = abs(value)
        if a >= 100:
            return f"{value:,.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def section_markdown(section: dict, level: int = 2) -> str:
    """One section of a suite result as markdown: title, method, table, notes, what was
    skipped and what failed."""
    lines = [f"{'#' * level} {section.get('title', '')}", ""]
    if section.get("what"):
        lines += [section["what"], ""]
    columns, rows = section.get("columns") or [], section.get("rows") or []
    if columns and rows:
        numeric = [any(isinstance(row.get(field), (int, float)) for row in rows) for field, _ in columns]
        lines.append("| " + " | ".join(header for _, header in columns) + " |")
        lines.append("|" + "|".join(" ---: " if n else " --- " for n in numeric) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(field)) for field, _ in columns) + " |")
        lines.append("")
    elif not section.get("errors"):
        lines += ["(nothing measured)", ""]
    bullets = [f"- {note}" for note in section.get("notes", [])]
    bullets += [f"- skipped {key}: {why}" for key, why in section.get("skipped", {}).items()]
    bullets += [f"- FAILED {key}: {why}" for key, why in section.get("errors", {}).items()]
    if bullets:
        lines += [*bullets, ""]
    return "\n".join(lines)


def _targets_markdown(targets: list[dict]) -> str:
    counts = {s: sum(t["status"] == s for t in targets) for s in ("pass", "miss", "n/a")}
    lines = ["## Targets", "",
             f"{counts['pass']} pass, {counts['miss']} miss, {counts['n/a']} not measured (ratios within this run)", "",
             "| result | target | measured |", "| --- | --- | --- |"]
    for t in targets:
        lines.append(f"| {t['status'].upper()} | {_cell(t['text'])} | {_cell(t['detail'])} |")
    return "\n".join(lines) + "\n"


def to_markdown(result: dict) -> str:
    """The whole result as markdown: a header with the device and versions, the targets'
    pass/miss lines, then one table per section."""
    h = result.get("header", {})
    dev = h.get("device", {})
    versions = ", ".join(f"{k} {v}" for k, v in h.get("versions", {}).items())
    peers = "; ".join(f"{name} {info['version']}" if info.get("status") == "ok" else f"{name}: {info.get('status')}"
                      for name, info in result.get("peers", {}).items()) or "not used by the measurements run"
    cfg = h.get("config", {})
    lines = [
        f"# cudaevents bench: {dev.get('name', '?')}",
        "",
        (f"- device {dev.get('index', '?')}: {dev.get('name', '?')}, compute capability "
         f"{dev.get('compute_capability', '?')} ({len(h.get('devices', []))} device(s) present)"),
        f"- versions: {versions}",
        f"- peers: {peers}",
        (f"- host: {h.get('platform', '?')}, {h.get('cpus', '?')} CPUs; started {h.get('started_utc', '?')}, "
         f"took {h.get('seconds', '?')} s"),
        (f"- mode: {h.get('mode', '?')} (median of {cfg.get('batches', '?')} batches of {_cell(cfg.get('ops'))} "
         "operations per method, methods interleaved)"),
        "",
    ]
    targets = evaluate_targets(result)
    parts = ["\n".join(lines), _targets_markdown(targets)]
    parts += [section_markdown(section) for section in result.get("sections", {}).values()]
    return "\n".join(parts).rstrip() + "\n"


def to_json(result: dict) -> str:
    """The result as strict JSON text (``json.loads`` gives back an equal dict)."""
    return json.dumps(_finite(result), indent=1, allow_nan=False)


_PLOTTED = (("create_record", "host us per new event + record"), ("timing_pairs", "host us per timed region"),
            ("round_trip", "round trip, median us"), ("worker", "wake-up, median us"))


def plot(result: dict, path) -> bool:
    """Save the comparison as a PNG at ``path``: one bar chart per section compared against
    peers and floors (ours highlighted). Returns False, writing nothing, when matplotlib is
    not installed.

    Raises:
        ValueError: the result holds none of the plotted sections.
    """
    panels = []
    for name, xlabel in _PLOTTED:
        section = result.get("sections", {}).get(name, {})
        rows = [r for r in section.get("rows", []) if isinstance(r.get("median_us"), (int, float))]
        if rows:
            panels.append((section.get("title", name), xlabel, rows))
    if not panels:
        raise ValueError(f"nothing to plot: the result has none of {', '.join(n for n, _ in _PLOTTED)}")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    heights = [1.0 + 0.35 * len(rows) for _, _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    try:
        for ax, (title, xlabel, rows) in zip(axes[:, 0], panels):
            values = [r["median_us"] for r in rows]
            labels = [r["label"] if len(r["label"]) <= 70 else r["label"][:67] + "..." for r in rows]
            ax.barh(range(len(rows)), values, color=["tab:green" if r.get("ours") else "tab:gray" for r in rows])
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(labels, fontsize="small")
            ax.invert_yaxis()
            for i, v in enumerate(values):
                ax.text(v, i, f" {v:.2f}", va="center", fontsize="x-small")
            ax.set_xlabel(xlabel)
            ax.set_title(title, fontsize="medium")
            ax.margins(x=0.12)
        h = result.get("header", {})
        fig.suptitle(f"cudaevents bench ({h.get('mode', '?')}) on {h.get('device', {}).get('name', '?')}; "
                     "green: cudaevents", fontsize="medium")
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
    return True


def latency_script(argv, description: str, measure, *, samples: int, warmup: int, block: int,
                   settle: str, settle_default: float, settle_help: str) -> int:
    """The command line of the single-measurement scripts (benchmarks/sync_latency.py,
    worker_latency.py): parse the sampling options, say why when CUDA is unusable (exit 1),
    run ``measure(samples, warmup, block, settle, device, keep_samples=...)`` and print its
    section as markdown, also writing it as JSON with ``--out``."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--samples", type=int, default=samples, help=f"samples per method (default {samples})")
    ap.add_argument("--warmup", type=int, default=warmup, help=f"discarded samples per method first (default {warmup})")
    ap.add_argument("--block", type=int, default=block, help=f"samples per method before switching (default {block})")
    ap.add_argument(f"--{settle}", type=float, default=settle_default, help=settle_help)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--out", help="write the results (with every sample) as JSON to this path")
    args = ap.parse_args(argv)
    settle_value = getattr(args, settle.replace("-", "_"))
    if args.samples < 1 or args.warmup < 0 or args.block < 1 or settle_value < 0:
        ap.error(f"--samples and --block must be >= 1, --warmup and --{settle} >= 0")
    reason = driver.unavailable_reason()
    if reason is not None:
        print(f"this benchmark needs a CUDA GPU, but CUDA is unusable here: {reason}", file=sys.stderr)
        return 1
    section = measure(args.samples, args.warmup, args.block, settle_value, args.device,
                      keep_samples=args.out is not None)
    print(section_markdown(section), end="")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(section, f, indent=1)
        print(f"wrote {args.out}")
    return 0
