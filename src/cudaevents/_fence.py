"""Fence: a counter that streams bump in order and others wait on."""

from __future__ import annotations

import threading

from ._atomic import AtomicEvent

__all__ = ["Fence"]


class Fence:
    """Orders work across CPU and GPU streams with a counter.

    :meth:`update` increments the count and signals it on a stream (in stream order) or on
    the host; :meth:`wait` waits, on the host or on a stream, for every update made before
    the call. Errors travel as for :class:`AtomicEvent`: an update on a CpuStream whose
    earlier task raised fails the fence, and waiters raise that error.

    Args:
        device: the device whose GPU streams use the fence (``None``: the current device,
            or host and CPU streams only where there is no GPU).
        policy: the default wait policy for host waits.
    """

    __slots__ = ("_atomic", "_count", "_lock", "__weakref__")

    def __init__(self, device=None, *, policy=None):
        self._atomic = AtomicEvent(device, policy=policy)
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """How many updates have been made (enqueued or done)."""
        return self._count

    @property
    def completed(self) -> int:
        """How many updates have completed."""
        return self._atomic.value

    @property
    def backend(self) -> str:
        """The counter backend (see :attr:`AtomicEvent.backend`)."""
        return self._atomic.backend

    def __repr__(self) -> str:
        return f"<Fence count={self._count} {self._atomic!r}>"

    def update(self, stream=None) -> int:
        """Increment the count and signal it on ``stream`` (or now); returns the new count."""
        with self._lock:
            value = self._count + 1
            self._atomic.signal(value, stream)
            self._count = value
        return value

    def wait(self, stream=None, timeout: float | None = None, policy=None) -> None:
        """Wait for every update made before this call: on the host (``stream=None``, with
        ``timeout`` seconds and a wait ``policy``) or on a CPU or GPU stream."""
        value = self._count
        if value == 0:
            self._atomic._check_open()
            return
        self._atomic.wait(value, stream, timeout, policy)

    def close(self) -> None:
        """Release the fence's counter. Idempotent."""
        self._atomic.close()

    def __enter__(self) -> "Fence":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
