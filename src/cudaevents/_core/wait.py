"""Host waits: a policy (spin, then yield, then sleep with backoff, or block) and a deadline."""

from __future__ import annotations

import dataclasses
import math
import os
import time

__all__ = ["WaitPolicy", "check_timeout", "resolve_policy", "wait_until"]


@dataclasses.dataclass(frozen=True)
class WaitPolicy:
    """How a host thread waits for something another thread or the GPU will do.

    The wait spins (busy-polls) for ``spin`` seconds, then polls with ``os.sched_yield``
    for ``yield_for`` seconds, then sleeps between checks with pauses that double from 10 us
    up to ``max_sleep``. With ``block=True`` the sleeping phase waits on the event's
    condition variable instead, so a host signal wakes the waiter at once; values that only
    the GPU writes are still checked every ``max_sleep``.

    Presets: ``"spin"`` (lowest latency, one core busy), ``"yield"``, ``"sleep"`` (the
    default: 20 us spin, 200 us yield, sleeps up to 1 ms) and ``"block"``.

    A spinning thread holds the GIL between the interpreter's switches (5 ms by default), so
    spin in one thread of a process at most: several spinners take turns, and each one's
    wake-up or timeout can come about 5 ms late per other spinner.
    """

    spin: float = 20e-6
    yield_for: float = 200e-6
    max_sleep: float = 1e-3
    block: bool = False

    def __post_init__(self):
        for name in ("spin", "yield_for", "max_sleep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"WaitPolicy.{name} must be a number of seconds >= 0, got {value!r}")
        if self.max_sleep == 0:
            raise ValueError("WaitPolicy.max_sleep must be > 0")


_PRESETS = {
    "spin": WaitPolicy(spin=math.inf),
    "yield": WaitPolicy(spin=0.0, yield_for=math.inf),
    "sleep": WaitPolicy(),
    "block": WaitPolicy(spin=0.0, yield_for=0.0, block=True),
}
DEFAULT_POLICY = _PRESETS["sleep"]


def resolve_policy(policy) -> WaitPolicy:
    """A :class:`WaitPolicy` from ``None`` (the default), a preset name, or a policy."""
    if policy is None:
        return DEFAULT_POLICY
    if isinstance(policy, WaitPolicy):
        return policy
    if isinstance(policy, str) and policy in _PRESETS:
        return _PRESETS[policy]
    raise ValueError(f"unknown wait policy {policy!r}; use one of {sorted(_PRESETS)} or a WaitPolicy")


def check_timeout(timeout) -> float | None:
    """Validate a ``timeout`` argument: ``None`` (wait forever) or a number >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, got {type(timeout).__name__}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return float(timeout)


_FIRST_SLEEP = 10e-6


_SPIN_CHUNK = 50e-6  # seconds a compiled spin runs before done() is asked again


def wait_until(done, timeout: float | None, what: str, policy: WaitPolicy = DEFAULT_POLICY, cond=None,
               notified: bool = False, spin=None) -> None:
    """Return once ``done()`` is true; raise ``TimeoutError`` after ``timeout`` seconds.

    ``cond`` is a condition variable that is notified whenever ``done()`` may have become
    true from the host; with ``policy.block`` the sleeping phase waits on it. ``notified``
    says that only such notified changes can make ``done()`` true, so a blocking wait needs
    no periodic re-check. ``spin(seconds)``, where given, busy-waits in compiled code with
    the GIL released for at most ``seconds`` until what ``done()`` looks for may be there
    (a counter word's value): the spinning phase calls it between checks of ``done()``, so
    the wait sees a GPU's store within a fraction of a microsecond and lets other threads run.

    The timeout counts from the call, and ``done()`` is not called again once the deadline
    has passed, so the error comes at most one ``done()`` call (plus the scheduler's lag)
    after the deadline.
    """
    start = time.monotonic()
    if done():
        return
    deadline = math.inf if timeout is None else start + timeout
    spin_end = start + policy.spin
    while (now := time.monotonic()) < min(spin_end, deadline):
        if spin is not None:
            spin(max(min(_SPIN_CHUNK, spin_end - now, deadline - now), 0.0))
        if done():
            return
    yield_end = start + policy.spin + policy.yield_for
    while time.monotonic() < min(yield_end, deadline):
        os.sched_yield()
        if done():
            return
    pause = _FIRST_SLEEP
    if policy.block and cond is not None:
        with cond:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not notified:
                    remaining = min(policy.max_sleep, remaining)
                cond.wait(None if remaining == math.inf else remaining)
            else:
                return
    else:
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, policy.max_sleep)
            if done():
                return
    # every path above looked at done() last just before or at the deadline
    raise TimeoutError(f"{what} did not complete within {timeout:g} s")
