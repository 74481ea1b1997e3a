"""Timing results: samples, statistics per name, and their exports (table, JSON, Chrome/Perfetto
trace, plots)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import typing

__all__ = ["Sample", "Stats", "Results", "stats_of"]


class Sample(typing.NamedTuple):
    """One timed region (a named tuple: cheap to make by the hundred thousand).

    Attributes:
        name: the region's name.
        device: the GPU ordinal, or -1 for a region on a CpuStream.
        stream: the stream's handle (GPU) or a number naming the CpuStream.
        start_ms: when the region began, in ms from the timer's reference point on that
            device (a CUDA event, or the host clock for CPU streams); NaN when the timer was
            made with ``timeline=False``. The reference event is recorded on the stream of
            the device's first region; a region on another stream that the GPU ran before it
            starts below 0.
        duration_ms: the region's length in ms.
        step: the timer's step index when the region ended (:meth:`Timer.step`; 0 before
            the first step).
    """

    name: str
    device: int
    stream: int
    start_ms: float
    duration_ms: float
    step: int = 0


@dataclasses.dataclass(frozen=True)
class Stats:
    """Statistics of durations in milliseconds."""

    count: int
    total_ms: float
    mean_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    p99_ms: float


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (the same rule as numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stats_of(values) -> Stats:
    """:class:`Stats` of a non-empty sequence of durations in ms."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to summarize")
    total = math.fsum(ordered)
    return Stats(
        count=len(ordered),
        total_ms=total,
        mean_ms=total / len(ordered),
        median_ms=statistics.median(ordered),
        min_ms=ordered[0],
        max_ms=ordered[-1],
        p99_ms=_percentile(ordered, 0.99),
    )




def write_json(data, path=None, indent: int | None = 1) -> str:
    """``data`` as JSON text, also written to ``path`` when given."""
    text = json.dumps(data, indent=indent)
    if path is not None:
        with open(path, "w") as f:
            f.write(text)
    return text


def read_json(text_or_path: str, fmt: str, what: str) -> dict:
    """The dict in JSON text or a file at a path, checked to be of format ``fmt``, version 1
    (``ValueError`` naming ``what`` otherwise)."""
    text = text_or_path
    if not text.lstrip().startswith("{"):
        with open(text_or_path) as f:
            text = f.read()
    data = json.loads(text)
    if data.get("format") != fmt or data.get("version") != 1:
        raise ValueError(f"not {what} (format {fmt!r}, version 1)")
    return data


class Results:
    """What a :class:`Timer` measured: :attr:`samples`, and views of them."""

    def __init__(self, samples, stream_names: dict | None = None, parents: dict | None = None,
                 classes: dict | None = None):
        self.samples: list[Sample] = list(samples)
        self._stream_names = dict(stream_names or {})
        # region name -> the name of the region it is nested in (None: none), where the names
        # alone do not say it (see tables.py); a LayerTimer gives its modules'
        self.parents: dict[str, str | None] = dict(parents or {})
        # region name -> the class of the torch module it times (LayerTimer, cudaevents profile)
        self.classes: dict[str, str] = dict(classes or {})

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"<Results {len(self.samples)} samples, {len(self.names())} names>"

    def names(self) -> list[str]:
        """Region names in the order they first finished."""
        return list(dict.fromkeys(s.name for s in self.samples))

    def by_step(self) -> dict[int, "Results"]:
        """The samples grouped by :attr:`Sample.step`, in step order."""
        groups: dict[int, list[Sample]] = {}
        for s in self.samples:
            groups.setdefault(s.step, []).append(s)
        return {step: Results(groups[step], self._stream_names, self.parents, self.classes) for step in sorted(groups)}

    def durations(self, name: str) -> list[float]:
        """Every duration (ms) of regions called ``name``."""
        return [s.duration_ms for s in self.samples if s.name == name]

    def summary(self) -> dict[str, Stats]:
        """:class:`Stats` per region name."""
        by_name: dict[str, list[float]] = {}
        for s in self.samples:
            by_name.setdefault(s.name, []).append(s.duration_ms)
        return {name: stats_of(values) for name, values in by_name.items()}

    def rows(self, *, sort: str = "total", top: int | None = None, match=None, depth: int | None = None,
             tree: bool = False) -> list:
        """The summary as rows (``tables.Row``: name, depth, stats, self_ms, share), sorted by
        total time unless ``sort`` says otherwise; ``top``, ``match`` (a glob or a list of
        globs), ``depth`` and ``tree`` as in :meth:`table`."""
        from .tables import rows

        return rows(self.samples, self.parents, sort=sort, top=top, match=match, depth=depth, tree=tree)[0]

    def table(self, *, sort: str = "total", top: int | None = None, match=None, depth: int | None = None,
              tree: bool = False, width: int | None = None) -> str:
        """The summary as a plain-text table: count, total, self time (where regions nest),
        share of the total, mean, median, p99 and max in ms, fitted to ``width`` columns (the
        terminal's by default; the last columns go first, and long names are shortened from
        the left, keeping their last parts).

        Args:
            sort: ``total`` (largest first, the default), ``self``, ``count``, ``mean``,
                ``median``, ``max``, ``name`` or ``first`` (the order regions first finished).
            top: only the first N rows (a last line says what was left out).
            match: only names matching this glob (``"transformer.h.*"``) or any of these globs.
            depth: only regions nested at most this deep (0: the outermost).
            tree: every region indented under the region it is nested in.
        """
        from .tables import render_plain, rows

        table_rows, left, left_ms = rows(self.samples, self.parents, sort=sort, top=top, match=match,
                                         depth=depth, tree=tree)
        return render_plain(table_rows, left, left_ms, tree=tree, width=width)

    def print_summary(self, file=None, *, sort: str = "total", top: int | None = None, match=None,
                      depth: int | None = None, tree: bool = False) -> None:
        """Print the summary (see :meth:`table` for the options): a rich table where ``rich``
        is installed (long names wrap), else plain text."""
        from .tables import render_plain, render_rich, rows

        table_rows, left, left_ms = rows(self.samples, self.parents, sort=sort, top=top, match=match,
                                         depth=depth, tree=tree)
        if not render_rich(table_rows, left, left_ms, tree=tree, file=file, title="GPU time per region (ms)"):
            print(render_plain(table_rows, left, left_ms, tree=tree), file=file)

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-ready dict: format version, samples, summary, stream names, and per region
        the region it is nested in (``parents``), its nesting depth (``depths``, 0 for the
        outermost, as the tree view counts it) and its module's class (``classes``)."""
        return {
            "format": "cudaevents.results",
            "version": 1,
            "samples": [s._asdict() for s in self.samples],
            "summary": {name: dataclasses.asdict(st) for name, st in self.summary().items()},
            "streams": {f"{d}:{s}": label for (d, s), label in self._stream_names.items()},
            "parents": self.parents,
            "depths": {row.name: row.depth for row in self.rows(sort="first")},
            "classes": self.classes,
        }

    def to_json(self, path=None) -> str:
        """The results as JSON text, also written to ``path`` when given."""
        return write_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, text_or_path: str) -> "Results":
        """Load what :meth:`to_json` wrote (JSON text or a path to it)."""
        data = read_json(text_or_path, "cudaevents.results", "a cudaevents results file")
        names = {}
        for key, label in data.get("streams", {}).items():
            d, s = key.split(":")
            names[(int(d), int(s))] = label
        return cls((Sample(**s) for s in data["samples"]), names, data.get("parents"), data.get("classes"))

    # -- traces and plots --------------------------------------------------------------
    def _stream_label(self, device: int, stream: int) -> str:
        label = self._stream_names.get((device, stream))
        if label:
            return label
        return f"CPU stream {stream}" if device < 0 else f"stream 0x{stream:x}"

    def _need_start_times(self, what: str) -> None:
        if any(math.isnan(s.start_ms) for s in self.samples):
            raise ValueError(f"{what} needs start times, and these regions were timed without them; "
                             "time them with Timer(timeline=True) (the default)")

    def to_chrome_trace(self, path=None) -> dict:
        """A Chrome/Perfetto trace (JSON object format): one process per device (and one for
        CPU streams), one track per stream, one complete event per region. Written to
        ``path`` when given; open it in https://ui.perfetto.dev or chrome://tracing."""
        self._need_start_times("a trace")
        events = []
        tracks: dict[tuple[int, int], int] = {}
        for s in self.samples:
            key = (s.device, s.stream)
            if key not in tracks:
                tracks[key] = len(tracks) + 1
                pid = s.device + 1  # pid 0 = CPU streams, 1.. = GPUs
                events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                               "args": {"name": "CPU streams" if s.device < 0 else f"GPU {s.device}"}})
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tracks[key],
                               "args": {"name": self._stream_label(*key)}})
            events.append({"ph": "X", "name": s.name, "cat": "cudaevents", "pid": s.device + 1,
                           "tid": tracks[key], "ts": s.start_ms * 1e3, "dur": s.duration_ms * 1e3,
                           "args": {"step": s.step, **({"module": self.classes[s.name]} if s.name in self.classes else {})}})
        trace = {"traceEvents": events, "displayTimeUnit": "ms"}
        if path is not None:
            write_json(trace, path, indent=None)
        return trace

    def plot(self, path, kind: str = "bars", *, top: int | None = None, names=None, match=None) -> None:
        """Save a PNG that shows where the time went (needs matplotlib):

        - ``"bars"`` (the default): the ``top`` regions (15) by total time, each split into its
          own time and its nested regions', with its total and share;
        - ``"timeline"``: a lane per stream, nested regions stacked below their parent, a
          colour per region name;
        - ``"hist"``: one small histogram per region, for ``names`` or the ``top`` (6) by
          total time, with the median and p99 marked.

        ``match`` (a glob or a list of globs) chooses the regions for ``bars`` and
        ``timeline`` too, and ``names`` lists them exactly.
        """
        from .plots import plot

        plot(self, path, kind, top=top, names=names, match=match)
