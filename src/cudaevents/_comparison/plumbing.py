"""What every measurement of the comparison suite shares: the one measurement loop
(:func:`interleave`), the one way rows are made (:meth:`Method.row`, from :func:`us_stats`),
the one clean-up helper (:class:`Cleanup`), and the section and error shapes of the result.

Statistics follow the library's rule, :func:`cudaevents._profiler.results.stats_of` (the
median, and percentiles interpolated linearly between the sorted samples, numpy's default).
Errors are checked by the driver's named wrappers (:mod:`cudaevents._core.driver`), which
raise :class:`cudaevents.CudaError` naming the call; here they are only described.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from .. import EventPool, GpuStream
from .._profiler.results import stats_of

__all__ = [
    "SYNC_S",
    "Cleanup",
    "Context",
    "Method",
    "add_ratio",
    "describe_error",
    "interleave",
    "median",
    "section",
    "stat_rows",
    "us_stats",
]

perf_ns = time.perf_counter_ns
SYNC_S = 60.0  # the longest any wait of the host measurements may take before it counts as a failure


def describe_error(exc: BaseException) -> str:
    """One line naming an exception, for the suite's ``errors`` and ``skipped`` entries."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Method:
    """One way of doing a section's operation: ``run(n)`` does it ``n`` times (and may return
    its own per-phase totals, or its own samples); ``settle()`` (untimed) waits for the work
    a batch enqueued. A method only named (``run=None``) still makes rows."""

    __slots__ = ("extra", "key", "label", "ours", "peer", "run", "settle")

    def __init__(self, key: str, label: str, run=None, settle=None, *, ours: bool = False, peer: str | None = None,
                 extra: dict | None = None):
        self.key, self.label, self.run = key, label, run
        self.settle = settle or (lambda: None)
        self.ours, self.peer, self.extra = ours, peer, extra or {}

    def row(self, **fields) -> dict:
        """A result row: the suite's one row builder. ``key``, ``label``, ``ours``, ``peer``,
        this method's ``extra`` fields, then ``fields``."""
        return {"key": self.key, "label": self.label, "ours": self.ours, "peer": self.peer, **self.extra, **fields}


def _run(method: Method, n: int):
    return method.run(n)


def interleave(methods: list[Method], rounds, warmup: int, errors: dict, step=None) -> dict[str, list]:
    """The suite's one measurement loop: every method warms up, then the methods take turns.

    Every method first runs ``run(warmup)`` and ``settle()`` once, untimed. Then, for each
    ``n`` in ``rounds``, every method takes one ``step(method, n)`` (default:
    ``method.run(n)``), starting from a different method each round, so that drifts of the
    machine hit all alike. A method that raises is dropped, its error kept in ``errors`` under
    its key, and the others go on.

    Returns:
        Per method still standing, what its steps returned, in order.
    """
    take = step or _run
    live = []
    for m in methods:
        try:
            m.run(warmup)
            m.settle()
        except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
            errors[m.key] = describe_error(exc)
            continue
        live.append(m)
    out: dict[str, list] = {m.key: [] for m in live}
    for r, n in enumerate(rounds):
        if not out:
            break
        k = r % len(live)
        for m in live[k:] + live[:k]:
            got = out.get(m.key)
            if got is None:
                continue  # dropped in an earlier round
            try:
                got.append(take(m, n))
            except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
                errors[m.key] = describe_error(exc)
                del out[m.key]
    return out


def median(values) -> float:
    """The median of ``values`` (any unit), by the library's rule (:func:`stats_of`)."""
    return stats_of(values).median_ms  # stats_of is unit-agnostic: its *_ms fields hold the unit given


def us_stats(ns) -> dict:
    """Statistics of samples in nanoseconds, in microseconds, by the library's rule
    (:func:`stats_of`): ``n``, ``median_us``, ``p90_us``, ``p99_us``, ``min_us``, ``max_us``,
    ``mean_us``."""
    us = sorted(v / 1e3 for v in ns)
    s = stats_of(us)  # unit-agnostic: its *_ms fields hold the unit given, us here
    # stats_of has no p90; this is its rule for p99 (linear interpolation, numpy's default)
    p90 = statistics.quantiles(us, n=10, method="inclusive")[-1] if len(us) > 1 else us[0]
    return {"n": s.count, "median_us": s.median_ms, "p90_us": p90, "p99_us": s.p99_ms, "min_us": s.min_ms,
            "max_us": s.max_ms, "mean_us": s.mean_ms}


def stat_rows(methods: list[Method], samples: dict, fields) -> list[dict]:
    """One row per method that has samples (ns) in ``samples``: its :meth:`Method.row` with
    ``fields`` of their :func:`us_stats`, in the methods' order."""
    rows = []
    for m in methods:
        ns = samples.get(m.key)
        if ns:
            stats = us_stats(ns)
            rows.append(m.row(**{field: stats[field] for field in fields}))
    return rows


def add_ratio(rows: list[dict], name: str, reference, field: str = "median_us", group: str | None = None) -> list:
    """Set ``row[name]`` to ``row[field]`` over the reference row's, in every row.

    ``reference`` is the reference row's key, or a predicate on rows; with ``group``, each row
    is compared with the reference of its own group (rows with the same ``row[group]``). The
    ratio is ``None`` where there is no reference with a positive ``field``. Returns ``rows``.
    """
    pick = reference if callable(reference) else (lambda r: r["key"] == reference)
    for r in rows:
        ref = next((o for o in rows if pick(o) and (group is None or o[group] == r[group])
                    and isinstance(o.get(field), (int, float)) and o[field] > 0), None)
        value = r.get(field)
        r[name] = value / ref[field] if ref is not None and value is not None else None
    return rows


class Cleanup:
    """The suite's one clean-up helper: undo actions, run in reverse order when the block
    ends; a failing one is recorded in ``errors["cleanup"]`` and the others still run. An
    action whose later steps must not run when an earlier one fails (freeing memory a stuck
    stream may still use) does them in one function."""

    def __init__(self, errors: dict):
        self._items: list = []
        self._errors = errors

    def add(self, fn, *args, **kwargs) -> None:
        """Call ``fn(*args, **kwargs)`` when the block ends (after everything added later)."""
        self._items.append((fn, args, kwargs))

    def pool(self) -> EventPool:
        """A fresh EventPool (so its counts are the measurement's own), cleared when the block ends."""
        pool = EventPool()
        self.add(pool.clear)
        return pool

    def stream(self, device: int) -> GpuStream:
        """A new GpuStream, synchronized and closed when the block ends."""
        s = GpuStream(device)
        self.add(s.close)
        self.add(s.synchronize, timeout=SYNC_S)
        return s

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        while self._items:
            fn, args, kwargs = self._items.pop()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported; the rest is still undone
                self._errors.setdefault("cleanup", describe_error(e))


@dataclasses.dataclass
class Context:
    """What every measurement gets.

    Attributes:
        config: a :class:`cudaevents._comparison.suite.SuiteConfig` (how much to measure).
        device: the device ordinal.
        modules: peer name -> imported module, only for the peers usable here.
        peers: peer name -> ``{"status": ..., "version": ...}``, for every peer.
    """

    config: object
    device: int
    modules: dict
    peers: dict


def section(title: str, what: str, columns: list, rows: list, *, notes=(), skipped=None, errors=None,
            **extra) -> dict:
    """A section of the suite's result: ``columns`` are ``[field, header]`` pairs of the
    ``rows``' dicts; ``what`` says how it was measured; ``skipped`` and ``errors`` map a row
    or step to why it is missing."""
    return {"title": title, "what": what, "columns": columns, "rows": rows, "notes": list(notes),
            "skipped": dict(skipped or {}), "errors": dict(errors or {}), **extra}
