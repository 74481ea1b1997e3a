"""Pictures of :class:`Results` that answer "where did the time go" (PNG, matplotlib):

- ``bars``: the top regions by total time, largest on top, each bar split into the region's
  own (self) time and the time of the regions nested in it, labelled with its total and share;
- ``timeline``: one lane per stream (named ``GPU 0 stream 1``, in order of appearance, or by
  the name the timer gave it), nested regions stacked below their parent by depth, flame-graph
  style, each region coloured by its name and labelled where it is wide enough;
- ``hist``: distributions as small multiples, one panel per region name (the largest by total,
  or the names asked for), with the median and p99 marked.
"""

from __future__ import annotations

import math
import zlib

from .results import stats_of
from .tables import globs, rows, shorten

__all__ = ["KINDS", "plot"]

KINDS = ("bars", "timeline", "hist")
_LABEL = 36  # characters of a region name on an axis


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("Results.plot() needs matplotlib: pip install matplotlib") from None
    return plt


def _colour(name: str):
    """A colour of matplotlib's tab20 map, the same for a name in every picture."""
    import matplotlib

    return matplotlib.colormaps["tab20"](zlib.crc32(name.encode()) % 20)


def plot(results, path, kind: str = "bars", *, top: int | None = None, names=None, match=None) -> None:
    """Save the picture ``kind`` of ``results`` to ``path`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")
    if not results.samples:
        raise ValueError("no samples to plot")
    if kind == "timeline":
        results._need_start_times("a timeline")
    plt = _pyplot()
    draw = {"bars": _bars, "timeline": _timeline, "hist": _hist}[kind]
    fig = draw(plt, results, top=top, names=names, match=match)
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)


def _bars(plt, results, *, top, names, match):
    chosen, _, _ = rows(results.samples, results.parents, top=top or 15, match=names or match)
    n = len(chosen)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.38 * n))
    y = list(range(n))[::-1]
    totals = [r.stats.total_ms for r in chosen]
    own = [r.stats.total_ms if r.self_ms is None else r.self_ms for r in chosen]
    colours = [_colour(r.name) for r in chosen]
    ax.barh(y, totals, color=colours, alpha=0.35, edgecolor=colours, label="nested regions")
    ax.barh(y, own, color=colours, label="self")
    ax.set_yticks(y, [shorten(r.name, _LABEL) for r in chosen], fontsize=8)
    for yi, r in zip(y, chosen):
        ax.text(r.stats.total_ms, yi, f" {r.stats.total_ms:.3g} ms  {r.share * 100:.1f}%", va="center", fontsize=7)
    ax.set_xlabel("total GPU time (ms); dark: the region's own time, light: regions nested in it")
    ax.set_xlim(0, max(totals) * 1.25)
    ax.set_title(f"where the time went: the top {n} of {len(results.names())} regions by total time")
    return fig


def _fit(name: str, chars: int) -> str:
    """The last path parts of ``name`` that fit in ``chars``, a numeric part only with the one
    before it (``h.1.mlp`` or ``mlp``, never ``1.mlp``) and a LayerTimer's ``backward`` too,
    written ``bwd`` (``h.1.bwd``, or ``mlp`` alone where ``mlp.bwd`` does not fit), else
    ``name`` shortened from the left."""
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] == "backward":
        parts[-1] = "bwd"

    def tied(part: str) -> bool:  # says nothing without the part before it
        return part.isdigit() or part == "bwd"

    def step_back(i: int) -> int:  # where the label starts if it takes one more part
        i -= 1
        while i > 0 and tied(parts[i]):
            i -= 1
        return i

    i = len(parts) - 1
    while i > 0 and tied(parts[i]):
        i -= 1
    while i > 0 and len(".".join(parts[step_back(i):])) <= chars:
        i = step_back(i)
    label = ".".join(parts[i:])
    if len(label) <= chars:
        return label
    if parts[-1] == "bwd" and len(label) - 4 <= chars and i < len(parts) - 1:
        return label[:-4]  # the module alone: its parent's bar says it is the backward
    return shorten(".".join(parts), chars)


def _stream_names(results) -> dict:
    """(device, stream) -> a label: the timer's name for it, else ``GPU d stream k`` in order
    of first appearance."""
    labels, count = {}, {}
    for s in results.samples:
        key = (s.device, s.stream)
        if key in labels:
            continue
        given = results._stream_names.get(key)
        if given:
            labels[key] = given
        else:
            count[s.device] = count.get(s.device, 0) + 1
            labels[key] = f"{'CPU' if s.device < 0 else f'GPU {s.device}'} stream {count[s.device]}"
    return labels


def _depths(samples) -> list[int]:
    """Per sample of one stream, how many of the stream's other regions enclose it in time."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i].start_ms, -samples[i].duration_ms))
    depth = [0] * len(samples)
    open_ends: list[float] = []
    for i in order:
        s = samples[i]
        while open_ends and open_ends[-1] <= s.start_ms + 1e-9:
            open_ends.pop()
        depth[i] = len(open_ends)
        open_ends.append(s.start_ms + s.duration_ms)
    return depth


def _timeline(plt, results, *, top, names, match):
    import fnmatch

    patterns = globs(names or match)
    samples = [s for s in results.samples
               if not patterns or any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    if not samples:
        raise ValueError("no samples match the names to plot")
    labels = _stream_names(results)
    lanes: dict = {}
    for s in samples:
        lanes.setdefault((s.device, s.stream), []).append(s)
    rows_used, lane_top = 0, []
    layout = []
    for key, lane in lanes.items():
        depth = _depths(lane)
        height = max(depth) + 1
        lane_top.append((rows_used, height, labels[key]))
        layout += [(s, rows_used + d) for s, d in zip(lane, depth)]
        rows_used += height + 1  # a gap between lanes
    t0 = min(s.start_ms for s in samples)
    t1 = max(s.start_ms + s.duration_ms for s in samples)
    span = (t1 - t0) or 1.0
    fig, ax = plt.subplots(figsize=(12, 1.5 + 0.35 * rows_used))
    for s, row in layout:
        ax.broken_barh([(s.start_ms - t0, s.duration_ms)], (row, 0.9), facecolors=_colour(s.name),
                       edgecolors="white", linewidth=0.3)
        if s.duration_ms > span / 70:
            room = int(s.duration_ms / span * 180)
            ax.text(s.start_ms - t0 + s.duration_ms / 2, row + 0.45, _fit(s.name, max(3, room)), ha="center",
                    va="center", fontsize=6, clip_on=True)
    ax.set_yticks([first + height / 2 for first, height, _ in lane_top], [label for _, _, label in lane_top],
                  fontsize=8)
    ax.set_ylim(rows_used, -1)  # the first lane on top, nested regions below their parent
    ax.set_xlim(0, span)
    ax.set_xlabel(f"time (ms) from the first region shown; {len(samples)} regions")
    ax.set_title("timeline: a lane per stream, nested regions below their parent, a colour per region name")
    return fig


def _hist(plt, results, *, top, names, match):
    if names:
        chosen = [n for n in names if n in set(results.names())]
        if not chosen:
            raise ValueError(f"none of the names {list(names)} has samples")
    else:
        chosen = [r.name for r in rows(results.samples, results.parents, top=top or 6, match=match)[0]]
    n = len(chosen)
    cols = min(3, n)
    lines = math.ceil(n / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4 * cols, 2.6 * lines), squeeze=False)
    for ax, name in zip([a for row in axes for a in row], chosen):
        values = results.durations(name)
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color=_colour(name))
        st = stats_of(values)
        median, p99 = st.median_ms, st.p99_ms
        ax.axvline(median, color="black", linewidth=1, label=f"median {median:.3g} ms")
        ax.axvline(p99, color="black", linestyle="--", linewidth=1, label=f"p99 {p99:.3g} ms")
        ax.set_title(shorten(name, _LABEL), fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    for ax in [a for row in axes for a in row][n:]:
        ax.set_visible(False)
    fig.supxlabel("duration (ms)", fontsize=8)
    return fig
