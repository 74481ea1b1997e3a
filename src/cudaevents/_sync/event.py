"""Event: the high-level value event, backed by a recycled CudaEvent or an AtomicEvent."""

from __future__ import annotations

import threading

from .._core.cuda_event import CudaEvent
from .._core.errors import ClosedError, NotRecordedError
from .._core.streams import GpuStream, as_stream, helper_stream
from .._core.wait import check_timeout, resolve_policy, wait_until
from .atomic_event import AtomicEvent
from .cpu_stream import CpuStream

__all__ = ["Event"]

class Event:
    """A value event: :meth:`signal` sets it to :attr:`value` on a stream (CPU or GPU) or the
    host, :meth:`wait` waits there until it reaches :attr:`value`.

    The backing is chosen at the first signal, as MLX does: a recycled :class:`CudaEvent`
    when a GPU stream signals value 1 (the cheap, common case), an :class:`AtomicEvent`
    otherwise. When a later call needs a counter (a CPU-stream or host signal, a second
    signal, another value), the event moves to an AtomicEvent that takes over the CUDA
    event's completion on the device, so waits already enqueued stay correct.

    Errors travel: when a CpuStream task raises, every Event that stream signals afterwards
    carries that error, and every wait on it (host or CPU stream) raises it, which in turn
    fails the waiting CPU stream and the events it signals. A GPU stream cannot raise, so a
    GPU wait on a failed event is let go rather than left to hang; waits enqueued after the
    failure raise at once.

    Args:
        device: the device for a counter created before any GPU stream is seen (default:
            the signalling stream's device, else the current device).
        value: the value :meth:`signal` and :meth:`wait` use (default 1); raise it with
            :attr:`value` to reuse the event.

    Waiting on an Event that was never signalled raises :class:`NotRecordedError`.
    """

    __slots__ = ("_value", "_device", "_cuda_event", "_atomic", "_signals", "_lock", "_closed", "_cpu_waits",
                 "__weakref__")

    def __init__(self, device=None, *, value: int = 1):
        self._lock = threading.Lock()
        self._closed = False
        self._cuda_event: CudaEvent | None = None
        self._atomic: AtomicEvent | None = None
        self._signals = 0
        self._cpu_waits = 0  # CpuStream waits on the CUDA event still to run: it stays out of the pool
        self._device = device
        self._value = 0
        self.value = value

    @property
    def value(self) -> int:
        """The value the next :meth:`signal` sets and :meth:`wait` waits for."""
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"an Event's value is an int, got {type(value).__name__}")
        if not 1 <= value < (1 << 63):
            raise ValueError(f"an Event's value is in [1, 2**63), got {value}; pass a value in that range")
        if value < self._value:
            raise ValueError(
                f"an Event's value never decreases: it is {self._value}, got {value}; set a value >= "
                f"{self._value}, or use a new Event"
            )
        self._value = value

    @property
    def backing(self) -> str | None:
        """``"cuda"`` or ``"atomic"`` once signalled, ``None`` before."""
        if self._atomic is not None:
            return "atomic"
        return "cuda" if self._cuda_event is not None else None

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def error(self) -> BaseException | None:
        """The error of a failed producer that this event carries, or ``None``."""
        return None if self._atomic is None else self._atomic.error

    def __repr__(self) -> str:
        return f"<Event value={self._value} backing={self.backing}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Event was closed; create a new Event")

    def _to_atomic(self, device, carry: bool = True) -> AtomicEvent:
        """The counter behind the event, created on first need; with ``carry``, fed the CUDA
        event's completion (a host signal sets the value now and needs nothing carried)."""
        atomic = self._atomic
        if atomic is not None:
            return atomic
        ce = self._cuda_event
        if ce is not None and not carry:
            atomic = AtomicEvent(ce._device)
        elif ce is None:
            atomic = AtomicEvent(self._device if self._device is not None else device)
        else:
            atomic = AtomicEvent(ce._device)
            helper = helper_stream(ce._device)
            ce.wait(helper)
            atomic.signal(1, helper)  # the CUDA event's completion, carried over in stream order
        self._atomic = atomic
        return atomic

    def signal(self, stream=None) -> None:
        """Set the event to :attr:`value` now (``stream=None``) or when ``stream`` gets there.

        A signal that raises (a closed or wrong stream, say) does not count: waiting on an
        Event whose every signal failed still raises :class:`NotRecordedError`.
        """
        with self._lock:
            self._check_open()
            first = self._signals == 0
            if stream is None:
                self._to_atomic(None, carry=False).signal(self._value)
            elif type(stream) is CpuStream:
                self._to_atomic(None).signal(self._value, stream)
            else:
                s = stream if type(stream) is GpuStream else as_stream(stream)
                if first and self._value == 1 and self._device in (None, s._device) and self._atomic is None:
                    self._cuda_event = CudaEvent(s._device).record(s)
                else:
                    self._to_atomic(s._device).signal(self._value, s)
            self._signals += 1

    def wait(self, stream=None, timeout: float | None = None, policy=None) -> None:
        """Wait until the event reaches :attr:`value`: on the host (``stream=None``, with
        ``timeout`` seconds and a wait ``policy``), or make a CPU or GPU stream wait.

        Raises:
            NotRecordedError: the event was never signalled.
            BaseException: the error of a failed producer.
        """
        with self._lock:
            self._check_open()
            atomic, ce, value, signals = self._atomic, self._cuda_event, self._value, self._signals
        if signals == 0:
            raise NotRecordedError("wait() on an Event that was never signalled would order nothing; signal() it first")
        if atomic is not None:
            atomic.wait(value, stream, timeout, policy)
            return
        if stream is None:
            wait_until(ce.query, check_timeout(timeout), "Event.wait()", resolve_policy(policy))
        elif type(stream) is CpuStream:
            with self._lock:
                self._cpu_waits += 1
            try:
                stream.enqueue(self._cpu_wait, ce)
            except BaseException:
                self._cpu_wait_done(ce)
                raise
        else:
            ce.wait(stream)

    def is_signaled(self) -> bool:
        """True when the event has reached :attr:`value` (never blocks; False before any signal).

        Raises:
            ClosedError: the event was closed.
        """
        with self._lock:
            self._check_open()
            atomic, ce, value = self._atomic, self._cuda_event, self._value
        if atomic is not None:
            return atomic.is_signaled(value)
        return ce is not None and ce.query()

    def _cpu_wait(self, ce: CudaEvent) -> None:
        """A CpuStream's wait on the CUDA event (runs on its thread)."""
        try:
            ce.synchronize()
        finally:
            self._cpu_wait_done(ce)

    def _cpu_wait_done(self, ce: CudaEvent) -> None:
        with self._lock:
            self._cpu_waits -= 1
            last = self._closed and self._cpu_waits == 0
        if last:  # close() left the CUDA event to the last CpuStream wait
            ce.close()

    def close(self) -> None:
        """Release the event's CUDA event or counter; waits already enqueued still see the
        work they wait for (a CpuStream's wait keeps the CUDA event until it has run).
        Idempotent."""
        with self._lock:
            self._closed = True
            ce, self._cuda_event = self._cuda_event, None
            atomic, self._atomic = self._atomic, None
            if self._cpu_waits:
                ce = None  # the last CpuStream wait closes it
        if ce is not None:
            ce.close()
        if atomic is not None:
            atomic.close()

    def __enter__(self) -> "Event":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

