"""Host threads that wait, for tests of what wakes them."""

from __future__ import annotations

import threading
import time


def spawn_waiters(calls):
    """Start one daemon thread per ``call``; returns ``(threads, outcomes)``, where each outcome
    becomes the exception the call raised, or ``"returned"`` (``None`` while it runs)."""
    outcomes = [None] * len(calls)

    def run(i, call):
        try:
            call()
            outcomes[i] = "returned"
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, outcomes


def join_all(threads, timeout: float = 30) -> None:
    """Join ``threads`` within ``timeout`` seconds in all; fails if one is still running."""
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a waiter hung"
