"""What the benchmark scripts share: the peer baseline of a ``torch.cuda.Event`` pair per region,
and writing a report where ``--out`` asks for it."""

from __future__ import annotations

import json


def torch_event_pairs(torch, n: int, fn) -> list:
    """``n`` calls of ``fn``, each between the records of a fresh ``torch.cuda.Event`` timing pair
    on torch's current stream, as a PyTorch user times a region; returns the pairs, unsynchronized."""
    pairs = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    return pairs


def write_report(report: dict, path: str | None) -> None:
    """Write ``report`` as JSON to ``path`` (nothing when ``path`` is None or empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"\nwrote {path}")
