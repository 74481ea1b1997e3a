"""Readable summaries of :class:`Results`: rows sorted, filtered and cut to the top N, a tree of
nested regions with inclusive and exclusive ("self") time, and tables whose name column is
never cut at its end (names are shortened from the left, keeping the last path parts).

Nesting comes from the region names: ``a.b.c`` is inside the nearest of ``a.b``, ``a`` that is
also a region (a LayerTimer or ``cudaevents profile`` names modules by their path), and
``x.backward`` inside its module's parent's ``.backward``; a ``parents`` map given to
:class:`Results` (LayerTimer gives one: its root is named after the model's class) overrides
that. A region's self time is its total minus its direct children's totals (never below 0)."""

from __future__ import annotations

import fnmatch
import shutil
import typing

from .results import Stats, stats_of

__all__ = ["Row", "globs", "render_plain", "render_rich", "rows", "shorten"]

_BACKWARD = ".backward"
SORTS = ("total", "self", "count", "mean", "median", "max", "name", "first")
# (header, width, getter) of the numeric columns, in the order they are dropped last to first
_COLUMNS = [
    ("count", 7, lambda r: f"{r.stats.count}"),
    ("total ms", 10, lambda r: f"{r.stats.total_ms:.3f}"),
    ("self ms", 10, lambda r: "" if r.self_ms is None else f"{r.self_ms:.3f}"),
    ("%", 6, lambda r: f"{r.share * 100:.1f}"),
    ("mean ms", 9, lambda r: f"{r.stats.mean_ms:.4f}"),
    ("median", 9, lambda r: f"{r.stats.median_ms:.4f}"),
    ("p99", 9, lambda r: f"{r.stats.p99_ms:.4f}"),
    ("max", 9, lambda r: f"{r.stats.max_ms:.4f}"),
]
_MIN_NAME = 24  # narrower than this, the last numeric columns go instead


class Row(typing.NamedTuple):
    """One region name of a summary.

    Attributes:
        name: the region's name.
        depth: 0 for a region inside no other, else its parent's depth + 1.
        stats: its :class:`Stats`.
        self_ms: its total minus its direct children's totals (None when it has no children
            and no parent: nothing is nested there).
        share: its total over the total of every depth-0 region.
        parent: the name of the region it is nested in, or None.
    """

    name: str
    depth: int
    stats: Stats
    self_ms: float | None
    share: float
    parent: str | None


def _parent_finder(names: set, parents: dict):
    def parent(name: str):
        if name in parents:
            p = parents[name]
            while p is not None and p not in names:
                p = parents.get(p)
            return p
        base, suffix = (name[: -len(_BACKWARD)], _BACKWARD) if name.endswith(_BACKWARD) else (name, "")
        while "." in base:
            base = base.rsplit(".", 1)[0]
            if base + suffix in names:
                return base + suffix
        return None

    return parent


def rows(samples, parents: dict | None = None, *, sort: str = "total", top: int | None = None,
         match=None, depth: int | None = None, tree: bool = False) -> tuple[list[Row], int, float]:
    """The summary rows of ``samples``; returns (rows, rows left out by ``top``, their total ms).

    ``sort`` is one of ``total`` (largest first, the default), ``self``, ``count``, ``mean``,
    ``median``, ``max`` (largest first), ``name`` or ``first`` (the order regions first
    finished). ``match`` keeps names matching a glob (``"transformer.h.*"``) or any of a list
    of globs; ``depth`` keeps regions at most that deep; ``top`` keeps the first N rows after
    sorting (the N largest, in tree order, with ``tree=True``). ``tree`` lists every region
    under its parent, children sorted by ``sort``."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be an int >= 1 or None, got {top!r}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth must be an int >= 0 or None, got {depth!r}")
    patterns = globs(match)
    by_name: dict[str, list[float]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s.duration_ms)
    stats = {name: stats_of(values) for name, values in by_name.items()}
    parent_of = _parent_finder(set(stats), parents or {})
    parent = {name: parent_of(name) for name in stats}
    children: dict[str | None, list[str]] = {}
    for name in stats:
        children.setdefault(parent[name], []).append(name)
    depth_of: dict[str, int] = {}

    def depth_at(name: str) -> int:
        d = depth_of.get(name)
        if d is None:
            seen, p, d = {name}, parent[name], 0
            while p is not None and p not in seen:  # a cycle in a given parents map ends here
                seen.add(p)
                d += 1
                p = parent[p]
            depth_of[name] = d
        return d

    roots_total = sum(stats[n].total_ms for n in children.get(None, ())) or 1.0
    made = {}
    for name, st in stats.items():
        kids = children.get(name, ())
        nested = kids or parent[name] is not None
        own = max(0.0, st.total_ms - sum(stats[k].total_ms for k in kids)) if nested else None
        made[name] = Row(name, depth_at(name), st, own, st.total_ms / roots_total, parent[name])
    first = {name: i for i, name in enumerate(stats)}
    key = _sort_key(sort, first)
    kept = [r for r in made.values() if (depth is None or r.depth <= depth)
            and (not patterns or any(fnmatch.fnmatchcase(r.name, p) for p in patterns))]
    kept.sort(key=key)
    left = kept[top:] if top is not None else []
    kept = kept[:top] if top is not None else kept
    if tree:
        chosen = {r.name for r in kept}
        ordered: list[Row] = []

        def visit(name: str) -> None:
            if name in chosen:
                ordered.append(made[name])
            for child in sorted(children.get(name, ()), key=lambda n: key(made[n])):
                visit(child)

        for root in sorted(children.get(None, ()), key=lambda n: key(made[n])):
            visit(root)
        ordered += [r for r in kept if r not in ordered]  # under a parent cycle: still shown
        kept = ordered
    return kept, len(left), sum(r.stats.total_ms for r in left)


def globs(match) -> list[str]:
    """``match`` (None, a glob, or a list or tuple of globs) as a list of globs."""
    if match is None:
        return []
    if isinstance(match, str):
        return [match]
    if isinstance(match, (list, tuple)) and all(isinstance(m, str) for m in match):
        return list(match)
    raise TypeError(f"match must be a name glob such as 'transformer.h.*' or a list of globs, got {match!r}")


def _sort_key(sort: str, first: dict):
    if sort == "name":
        return lambda r: r.name
    if sort == "first":
        return lambda r: first[r.name]
    if sort == "self":
        return lambda r: (-(r.self_ms if r.self_ms is not None else r.stats.total_ms), first[r.name])
    field = {"total": "total_ms", "count": "count", "mean": "mean_ms", "median": "median_ms", "max": "max_ms"}[sort]
    return lambda r: (-getattr(r.stats, field), first[r.name])


def _label(r: Row, tree: bool) -> tuple[str, str]:
    """(indent, name) of a row: in a tree, the name without its parent's path where it
    begins with it (``mlp`` under ``transformer.h.0``)."""
    if not tree:
        return "", r.name
    name, p = r.name, r.parent
    if p is not None:
        suffix = _BACKWARD if name.endswith(_BACKWARD) and p.endswith(_BACKWARD) else ""
        base, pbase = name[: len(name) - len(suffix)], p[: len(p) - len(suffix)]
        if base.startswith(pbase + "."):
            name = base[len(pbase) + 1:] + suffix
    return "  " * r.depth, name


def shorten(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters: cut from the left (``…h.0.attn``), at a
    path boundary where one is near, so the last parts, which say what it is, stay."""
    if len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    tail = name[-(width - 1):]
    dot = tail.find(".")
    if 0 <= dot < len(tail) // 2:
        tail = tail[dot:]
    return "…" + tail


def _columns(name_width: int, width: int, nested: bool, pad: int = 1, border: int = 0):
    """The numeric columns that leave the name column ``min(name_width, 24)`` characters of
    ``width``, each column taking ``pad`` more and the table ``border`` (the last columns go
    first; count, total and self or share always stay)."""
    cols = [c for c in _COLUMNS if nested or c[0] != "self ms"]
    need = min(name_width, _MIN_NAME)
    while len(cols) > 3 and width - border - sum(w + pad for _, w, _ in cols) < need:
        cols.pop()
    return cols


def render_plain(table_rows: list[Row], left: int, left_ms: float, *, tree: bool = False,
                 width: int | None = None) -> str:
    """The rows as a plain-text table of at most ``width`` columns (default: the terminal's,
    else 100)."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    labels = [_label(r, tree) for r in table_rows]
    longest = max([4] + [len(i) + len(n) for i, n in labels])
    nested = any(r.self_ms is not None for r in table_rows)
    cols = _columns(longest, width, nested)
    name_w = min(longest, max(8, width - sum(w + 1 for _, w, _ in cols)))
    head = f"{'name':<{name_w}}" + "".join(f" {h:>{w}}" for h, w, _ in cols)
    lines = [head, "-" * len(head)]
    for r, (indent, name) in zip(table_rows, labels):
        text = indent + shorten(name, max(1, name_w - len(indent)))
        lines.append(f"{text:<{name_w}}" + "".join(f" {get(r):>{w}}" for _, w, get in cols))
    if left:
        lines.append(f"… {left} more region name(s) not shown, {left_ms:.3f} ms in all")
    return "\n".join(lines)


def render_rich(table_rows: list[Row], left: int, left_ms: float, *, tree: bool = False, file=None,
                title: str = "GPU time per region") -> bool:
    """Print the rows as a rich table (long names shortened from the left to fit the
    console, as in :func:`render_plain`); False when rich is not installed."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    console = Console(file=file)
    nested = any(r.self_ms is not None for r in table_rows)
    labels = ["".join(_label(r, tree)) for r in table_rows]
    longest = max([4] + [len(x) for x in labels])
    cols = _columns(longest, console.width, nested, pad=3, border=4)  # a cell's padding and border
    room = console.width - sum(w + 3 for _, w, _ in cols) - 4
    if longest > room:  # shortened from the left like the plain table; fold only what still overflows
        labels = ["".join((indent, shorten(name, max(12, room - len(indent)))))
                  for indent, name in (_label(r, tree) for r in table_rows)]
    table = Table(title=title)
    table.add_column("name", overflow="fold", ratio=1, min_width=min(_MIN_NAME, longest))
    for header, _, _ in cols:
        table.add_column(header, justify="right", no_wrap=True)
    for r, label in zip(table_rows, labels):
        table.add_row(label, *(get(r) for _, _, get in cols))
    console.print(table)
    if left:
        console.print(f"… {left} more region name(s) not shown, {left_ms:.3f} ms in all")
    return True
