"""Host waits with a deadline: poll a completion check with a growing sleep."""

from __future__ import annotations

import time

__all__ = ["poll_until", "check_timeout"]

_FIRST_SLEEP = 10e-6
_MAX_SLEEP = 1e-3


def check_timeout(timeout) -> float | None:
    """Validate a ``timeout`` argument: ``None`` (wait forever) or a number >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, got {type(timeout).__name__}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return float(timeout)


def poll_until(done, timeout: float, what: str) -> None:
    """Call ``done()`` until it returns True; raise ``TimeoutError`` after ``timeout`` s.

    The sleep between checks starts at 10 us and doubles up to 1 ms, so a short wait stays
    responsive and a long one costs little CPU. ``time.sleep`` releases the GIL.
    """
    if done():
        return
    deadline = time.monotonic() + timeout
    pause = _FIRST_SLEEP
    while True:
        now = time.monotonic()
        if now >= deadline:
            if done():
                return
            raise TimeoutError(f"{what} did not complete within {timeout:g} s")
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, _MAX_SLEEP)
        if done():
            return
