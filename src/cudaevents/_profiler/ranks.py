"""Timing across the ranks of a torch.distributed job: per-rank summaries gathered through the
job's own process group, a cross-rank report with straggler scores, one trace for all ranks.

Only :func:`_exchange` touches torch; the report works on plain per-rank payloads (dicts of
lists, what :func:`rank_payload` makes), so it is tested without torch.

Scores, per region name (in the spirit of nvidia-resiliency-ext's straggler detection):

- relative: the fastest rank's median over this rank's median, in (0, 1]; 1 for the fastest.
  A rank's overall relative score weighs its regions by how often it ran them: the fastest
  ranks' medians times this rank's counts, over this rank's medians times its counts.
- individual: this rank's best window's median over its current window's (a
  :class:`RankReporter` window is the regions harvested between two reports), in (0, 1]: 1
  while the rank is as fast as it ever was.

A rank is flagged when its overall relative score, or its individual score of any region, is
below the report's threshold.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
import statistics
import time

from .results import Results, read_json, stats_of, write_json
from .timer import Timer

__all__ = ["RankReport", "RankReporter", "all_gather_results", "gather_results"]

FORMAT = "cudaevents.rank"
DEFAULT_THRESHOLD = 0.8


# -- what one rank sends ------------------------------------------------------------------------
def _summaries(samples) -> dict[str, list]:
    """Per region name: [count, total, median, p99, min, max] in ms."""
    by_name: dict[str, list[float]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s.duration_ms)
    out = {}
    for name, values in by_name.items():
        st = stats_of(values)
        out[name] = [st.count, st.total_ms, st.median_ms, st.p99_ms, st.min_ms, st.max_ms]
    return out


def _header(rank: int) -> dict:
    return {"format": FORMAT, "version": 1, "rank": int(rank), "host": socket.gethostname(), "pid": os.getpid()}


def rank_payload(source, rank: int, *, samples: bool = False, timeout: float | None = None) -> dict:
    """What one rank contributes to a :class:`RankReport`: summaries per region name (count,
    total, median, p99, min, max), the host and pid, and with ``samples=True`` every region
    with its start on the wall clock (a trace of all ranks needs them aligned).

    ``source`` is a :class:`Timer` (its regions are waited for, ``timeout`` seconds at most),
    a :class:`LayerTimer`, or a :class:`Results` (summaries only: samples need the timer,
    whose clocks are aligned here)."""
    if isinstance(source, Results):
        results, timer = source, None
    else:
        timer = _timer_of(source, "rank_payload()")
        results = timer.results(timeout)
    payload = _header(rank)
    payload["regions"] = _summaries(results.samples)
    if samples:
        if timer is None:
            raise ValueError("samples for a trace of all ranks need the Timer (its clocks are aligned when "
                             "gathering); pass the Timer or LayerTimer instead of its Results")
        origins = timer._wall_origins()
        payload["clock_error_us"] = max((err for _, err in origins.values()), default=0.0)
        payload["samples"] = [
            [s.name, s.device, s.stream, origins[s.device][0] + s.start_ms * 1e3, s.duration_ms * 1e3]
            for s in results.samples if not math.isnan(s.start_ms)
        ]
        payload["streams"] = {f"{d}:{s}": results._stream_label(d, s)
                              for d, s in dict.fromkeys((s.device, s.stream) for s in results.samples)}
    return payload


def _check_payload(p) -> dict:
    if not isinstance(p, dict) or p.get("format") != FORMAT or p.get("version") != 1:
        raise ValueError("not a cudaevents rank payload (format 'cudaevents.rank', version 1); "
                         "make it with rank_payload() or gather_results()")
    return p


# -- the report ---------------------------------------------------------------------------------
class RankReport:
    """Timings of every rank side by side: per region the min, median and max of the ranks'
    medians with the ranks of the min and the max, the spread, and straggler scores (see the
    module docstring); made by :func:`gather_results` on the destination rank.

    Args:
        payloads: one :func:`rank_payload` per rank.
        threshold: ranks with a score below it are flagged (default 0.8).
    """

    def __init__(self, payloads, threshold: float = DEFAULT_THRESHOLD):
        _check_threshold(threshold)
        self.payloads = sorted((_check_payload(p) for p in payloads), key=lambda p: p["rank"])
        if not self.payloads:
            raise ValueError("a RankReport needs the payload of at least one rank")
        ranks = [p["rank"] for p in self.payloads]
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"two payloads name the same rank: {ranks}")
        self.threshold = threshold

    @property
    def ranks(self) -> list[int]:
        """The ranks in the report, ascending."""
        return [p["rank"] for p in self.payloads]

    def regions(self) -> list[dict]:
        """One row per region name (in the order ranks first report them): ``name``,
        ``ranks`` (those that ran it), ``missing`` (those that did not), ``min_ms``,
        ``min_rank``, ``median_ms``, ``max_ms``, ``max_rank`` (of the ranks' medians),
        ``spread`` (max over min), ``relative`` and ``individual`` (per rank; None where
        unknown)."""
        names = list(dict.fromkeys(n for p in self.payloads for n in p["regions"]))
        rows = []
        for name in names:
            medians = {p["rank"]: p["regions"][name][2] for p in self.payloads if name in p["regions"]}
            lo_rank = min(medians, key=lambda r: (medians[r], r))
            hi_rank = max(medians, key=lambda r: (medians[r], -r))
            best = medians[lo_rank]
            rows.append({
                "name": name,
                "ranks": sorted(medians),
                "missing": [r for r in self.ranks if r not in medians],
                "min_ms": best, "min_rank": lo_rank,
                "median_ms": statistics.median(medians.values()),
                "max_ms": medians[hi_rank], "max_rank": hi_rank,
                "spread": medians[hi_rank] / best if best > 0 else math.inf,
                "relative": {r: (best / m if m > 0 else 1.0) for r, m in medians.items()},
                "individual": {p["rank"]: _individual(p, name) for p in self.payloads if name in p["regions"]},
            })
        return rows

    def scores(self) -> list[dict]:
        """One row per rank: ``rank``, ``host``, ``relative`` (overall), ``individual`` (its
        lowest over regions, None without windows), ``flagged`` and ``why``."""
        rows = self.regions()
        best = {row["name"]: row["min_ms"] for row in rows}
        out = []
        for p in self.payloads:
            ideal = actual = 0.0
            for name, (count, _total, median, *_rest) in p["regions"].items():
                ideal += best[name] * count
                actual += median * count
            relative = ideal / actual if actual > 0 else 1.0
            individual = [v for row in rows if p["rank"] in row["individual"]
                          for v in [row["individual"][p["rank"]]] if v is not None]
            lowest = min(individual) if individual else None
            why = []
            if relative < self.threshold:
                why.append(f"relative {relative:.2f} < {self.threshold:g}")
            if lowest is not None and lowest < self.threshold:
                why.append(f"individual {lowest:.2f} < {self.threshold:g}")
            out.append({"rank": p["rank"], "host": p.get("host"), "relative": relative, "individual": lowest,
                        "flagged": bool(why), "why": "; ".join(why)})
        return out

    def stragglers(self) -> list[int]:
        """The flagged ranks."""
        return [row["rank"] for row in self.scores() if row["flagged"]]

    # -- output ---------------------------------------------------------------------------
    def table(self) -> str:
        """The report as plain text: a table of regions, then one of ranks."""
        rows = self.regions()
        width = max([len("region")] + [len(r["name"]) for r in rows])
        head = f"{'region':<{width}} {'ranks':>6} {'min ms':>10} {'(rank)':>6} {'median':>10} {'max ms':>10} " \
               f"{'(rank)':>6} {'spread':>7}"
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r['name']:<{width}} {len(r['ranks']):>6} {r['min_ms']:>10.4f} {r['min_rank']:>6} "
                         f"{r['median_ms']:>10.4f} {r['max_ms']:>10.4f} {r['max_rank']:>6} {r['spread']:>6.2f}x")
        lines += ["", f"{'rank':>4} {'relative':>9} {'individual':>11}  flagged (threshold {self.threshold:g})"]
        for s in self.scores():
            ind = "-" if s["individual"] is None else f"{s['individual']:.3f}"
            lines.append(f"{s['rank']:>4} {s['relative']:>9.3f} {ind:>11}  {s['why'] or 'no'}")
        return "\n".join(lines)

    def print(self, file=None) -> None:
        """Print the report: rich tables where ``rich`` is installed, else plain text."""
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            print(self.table(), file=file)
            return
        regions = Table(title=f"GPU time per region across {len(self.payloads)} ranks (ms, of each rank's median)")
        for col, justify in (("region", "left"), ("ranks", "right"), ("min", "right"), ("rank", "right"),
                             ("median", "right"), ("max", "right"), ("rank", "right"), ("spread", "right")):
            regions.add_column(col, justify=justify, overflow="fold")
        for r in self.regions():
            regions.add_row(r["name"], str(len(r["ranks"])), f"{r['min_ms']:.4f}", str(r["min_rank"]),
                            f"{r['median_ms']:.4f}", f"{r['max_ms']:.4f}", str(r["max_rank"]), f"{r['spread']:.2f}x")
        ranks = Table(title=f"straggler scores (flagged below {self.threshold:g})")
        for col in ("rank", "host", "relative", "individual", "flagged"):
            ranks.add_column(col, justify="left" if col in ("host", "flagged") else "right")
        for s in self.scores():
            ranks.add_row(str(s["rank"]), str(s["host"]), f"{s['relative']:.3f}",
                          "-" if s["individual"] is None else f"{s['individual']:.3f}",
                          f"[bold red]{s['why']}[/]" if s["flagged"] else "no")
        console = Console(file=file)
        console.print(regions)
        console.print(ranks)

    def to_dict(self) -> dict:
        """A JSON-ready dict: the payloads, the threshold, and the computed rows."""
        return {"format": "cudaevents.rank_report", "version": 1, "threshold": self.threshold,
                "payloads": self.payloads, "regions": self.regions(), "scores": self.scores()}

    def to_json(self, path=None) -> str:
        """The report as JSON text, also written to ``path`` when given."""
        return write_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, text_or_path: str) -> "RankReport":
        """Load what :meth:`to_json` wrote (JSON text or a path to it)."""
        data = read_json(text_or_path, "cudaevents.rank_report", "a cudaevents rank report")
        return cls(data["payloads"], data["threshold"])

    def to_chrome_trace(self, path=None) -> dict:
        """One Chrome/Perfetto trace of every rank: a process per rank (``rank R (host pid)``),
        a track per device stream, regions on the wall clock of their host (aligned as
        :func:`gather_results` describes; ``clock_error_us`` per rank in the process labels).
        Needs payloads gathered with ``samples=True``."""
        missing = [p["rank"] for p in self.payloads if "samples" not in p]
        if missing:
            raise ValueError(f"ranks {missing} sent no samples; gather with samples=True for a trace")
        t0 = min((s[3] for p in self.payloads for s in p["samples"]), default=0.0)
        events = []
        for p in self.payloads:
            pid = p["rank"]
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": f"rank {pid} ({p.get('host')} {p.get('pid')}), clock "
                                            f"±{p.get('clock_error_us', 0.0):.1f} us"}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                           "args": {"sort_index": pid}})
            tracks: dict[str, int] = {}
            for name, device, stream, start_us, dur_us in p["samples"]:
                key = f"{device}:{stream}"
                if key not in tracks:
                    tracks[key] = len(tracks) + 1
                    label = p.get("streams", {}).get(key, key)
                    where = "CPU" if device < 0 else f"GPU {device}"
                    events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tracks[key],
                                   "args": {"name": f"{where} {label}"}})
                events.append({"ph": "X", "name": name, "cat": "cudaevents", "pid": pid, "tid": tracks[key],
                               "ts": start_us - t0, "dur": dur_us})
        trace = {"traceEvents": events, "displayTimeUnit": "ms"}
        if path is not None:
            write_json(trace, path, indent=None)
        return trace


def _timer_of(source, what: str) -> Timer:
    timer = getattr(source, "timer", source)  # a LayerTimer's Timer
    if not isinstance(timer, Timer):
        raise TypeError(f"{what} needs a Timer, a LayerTimer or (for summaries) a Results, got "
                        f"{type(source).__name__}")
    return timer


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")


def _individual(payload: dict, name: str):
    pair = payload.get("windows", {}).get(name)
    if not pair:
        return None
    best, current = pair
    return best / current if current > 0 else 1.0


# -- the transport: torch.distributed, the job's own ------------------------------------------------
def _exchange(payload: dict, group, dst: int | None) -> list | None:
    """Gather ``payload`` from every rank of ``group`` (the default group when None) with
    torch.distributed's object collectives: to ``dst`` (others get None), or to every rank
    when ``dst`` is None."""
    try:
        import torch.distributed as dist
    except ImportError:
        raise RuntimeError("gathering across ranks needs torch.distributed: pip install torch") from None
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("gathering across ranks needs an initialized process group; call "
                           "torch.distributed.init_process_group() first (any backend: gloo, nccl)")
    size = dist.get_world_size(group)
    if dst is None:
        out = [None] * size
        dist.all_gather_object(out, payload, group=group)
        return out
    out = [None] * size if dist.get_rank(group) == dst else None
    dist.gather_object(payload, out, dst=dst, group=group)
    return out


def _rank_of(group) -> int:
    """This process's rank in ``group`` (0 without torch.distributed or a process group)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 0
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def gather_results(source, group=None, dst: int = 0, *, samples: bool = False, timeout: float | None = None,
                   threshold: float = DEFAULT_THRESHOLD) -> RankReport | None:
    """Gather every rank's timings on rank ``dst`` of ``group``: a collective, so every rank
    calls it. Returns the :class:`RankReport` on ``dst`` and None on the others.

    Each rank sends summaries per region name (:func:`rank_payload`), a few hundred bytes
    per name, not every sample, unless ``samples=True`` (for :meth:`RankReport.to_chrome_trace`).
    ``source`` is a :class:`Timer` or :class:`LayerTimer` (its regions in flight are waited
    for, ``timeout`` seconds at most; no device synchronize) or a :class:`Results`
    (summaries only).

    Clocks, with ``samples=True``: each rank measures, per device, when its timer's reference
    event ran on its host's wall clock: it records a timing event on an idle stream of its own
    and polls it, reading the wall clock before the record and once the event has completed;
    the event ran in that window, whose half width is the rank's error bound (a few
    microseconds), and the elapsed time from the reference event to it places every region.
    Ranks on one host share that clock; across hosts add the hosts' clock agreement (NTP:
    typically well under a millisecond).

    The transport is torch.distributed's ``gather_object`` (any backend; with NCCL, set
    ``torch.cuda.set_device`` first, as torch requires)."""
    _check_threshold(threshold)  # on every rank, before the collective
    payloads = _exchange(rank_payload(source, _rank_of(group), samples=samples, timeout=timeout), group, dst)
    return None if payloads is None else RankReport(payloads, threshold)


def all_gather_results(source, group=None, *, samples: bool = False, timeout: float | None = None,
                       threshold: float = DEFAULT_THRESHOLD) -> RankReport:
    """:func:`gather_results` to every rank: each gets the whole :class:`RankReport`."""
    _check_threshold(threshold)
    payloads = _exchange(rank_payload(source, _rank_of(group), samples=samples, timeout=timeout), group, None)
    return RankReport(payloads, threshold)


# -- periodic reports -----------------------------------------------------------------------------
class RankReporter:
    """Cross-rank reports every ``every`` steps of a long run, with no device synchronize in
    the loop: call :meth:`step` at each step boundary (on every rank: the report is a
    collective). Every ``every``-th call harvests the timer without waiting (regions still
    running go to a later window), summarizes the regions harvested since the last report (the
    window), gathers the windows on ``dst`` and returns the :class:`RankReport` there (printed
    when ``print_report``); other calls, and other ranks, get None. Individual scores compare a
    rank's current window with its best so far.

    Args:
        timer: the :class:`Timer` (or :class:`LayerTimer`) whose regions are reported.
        every: steps per report (>= 1).
        group: the torch.distributed process group (None: the default group).
        dst: the rank that gets the report.
        threshold: flag ranks below this score.
        print_report: print each report on ``dst``.
        file: where to print (default stdout).
    """

    def __init__(self, timer, every: int = 100, group=None, dst: int = 0, *,
                 threshold: float = DEFAULT_THRESHOLD, print_report: bool = True, file=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        _check_threshold(threshold)
        self.timer = _timer_of(timer, "RankReporter")
        self.every, self.group, self.dst = every, group, dst
        self.threshold, self.print_report, self.file = threshold, print_report, file
        self.steps = 0
        self._seen = 0  # samples of the timer's list (_reported) already reported
        self._reported = None
        self._best: dict[str, float] = {}
        self.last_gather_s: float | None = None  # how long the last report's gather took
        self.last_payload_bytes: int | None = None  # this rank's pickled payload of that report

    def step(self) -> RankReport | None:
        """Mark a step boundary (it calls :meth:`Timer.step` too: call one of the two per
        step); every ``every``-th call reports (see the class docstring)."""
        self.steps += 1
        self.timer.step()
        if self.steps % self.every:
            return None
        timer = self.timer
        timer.harvest()
        with timer._lock:
            if timer._samples is not self._reported:  # a new list: Timer.reset() since
                self._reported, self._seen = timer._samples, 0
            window = timer._samples[self._seen:]
            self._seen += len(window)
        current = _summaries(window)
        windows = {}
        for name, row in current.items():
            median = row[2]
            best = self._best.get(name)
            if best is None or median < best:
                best = self._best[name] = median
            windows[name] = (best, median)
        payload = _header(_rank_of(self.group))
        payload.update(regions=current, windows=windows, step=self.steps)
        self.last_payload_bytes = len(pickle.dumps(payload))
        t0 = time.perf_counter()
        payloads = _exchange(payload, self.group, self.dst)
        self.last_gather_s = time.perf_counter() - t0
        if payloads is None:
            return None
        report = RankReport(payloads, self.threshold)
        if self.print_report:
            print(f"cudaevents: step {self.steps}, regions of the last {self.every} steps", file=self.file)
            report.print(file=self.file)
        return report
