"""Environment variables: every ``CUDAEVENTS_*`` variable is read and parsed here."""

from __future__ import annotations

import os

__all__ = ["pool_max_cached", "atomic_backend", "pure_python"]


def _int_or_none(name: str, *, minimum: int) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; unset it or give an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} is below {minimum}; unset it or give an integer >= {minimum}")
    return value


def pool_max_cached() -> int | None:
    """``CUDAEVENTS_POOL_MAX_CACHED``: cap on cached handles per key of the default pool.

    Unset means no cap; ``0`` switches recycling off (every release destroys the handle).
    """
    return _int_or_none("CUDAEVENTS_POOL_MAX_CACHED", minimum=0)


def atomic_backend(choices: tuple[str, ...]) -> str | None:
    """``CUDAEVENTS_ATOMIC_BACKEND``: force the counter-event backend, one of ``choices`` (the
    counter storage's names); unset or ``auto`` lets cudaevents choose per device."""
    raw = os.environ.get("CUDAEVENTS_ATOMIC_BACKEND")
    if raw is None or raw.strip() in ("", "auto"):
        return None
    value = raw.strip()
    if value not in choices:
        raise ValueError(f"CUDAEVENTS_ATOMIC_BACKEND={raw!r} is not one of auto, {', '.join(choices)}")
    return value


def pure_python() -> bool:
    """``CUDAEVENTS_PURE_PYTHON``: ``1`` runs everything in Python even where the compiled hot
    path is built; unset or ``0`` uses the compiled path where it can."""
    raw = os.environ.get("CUDAEVENTS_PURE_PYTHON", "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"CUDAEVENTS_PURE_PYTHON={raw!r}: set it to 1 (pure Python) or 0, or unset it")
    return raw == "1"
