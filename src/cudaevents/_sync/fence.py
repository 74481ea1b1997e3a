"""Fence: a counter that streams bump in order and others wait on."""

from __future__ import annotations

import threading

from .._core.errors import ClosedError
from .atomic_event import AtomicEvent

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

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._atomic.closed

    def __repr__(self) -> str:
        return f"<Fence count={self._count} {self._atomic!r}>"

    def _check_open(self) -> None:
        if self._atomic.closed:
            raise ClosedError("this Fence was closed; create a new Fence")

    def update(self, stream=None) -> int:
        """Increment the count and signal it on ``stream`` (or now); returns the new count.

        Raises:
            ClosedError: the fence (or the CpuStream) was closed.
            ValueError: a host update (``stream=None``) while an update on a stream has not
                happened yet: it would claim that one done too. Update on a stream, or
                :meth:`wait` first.
        """
        with self._lock:
            self._check_open()
            value = self._count + 1
            self._atomic.signal(value, stream)
            self._count = value
        return value

    def wait(self, stream=None, timeout: float | None = None, policy=None) -> None:
        """Wait for every update made before this call: on the host (``stream=None``, with
        ``timeout`` seconds and a wait ``policy``) or on a CPU or GPU stream.

        Raises:
            ClosedError: the fence was closed.
            BaseException: the error of a failed update (see :class:`AtomicEvent`).
        """
        self._check_open()
        value = self._count
        if value == 0:
            return
        self._atomic.wait(value, stream, timeout, policy)

    def close(self) -> None:
        """Release the fence's counter. Idempotent."""
        self._atomic.close()

    def __enter__(self) -> "Fence":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
