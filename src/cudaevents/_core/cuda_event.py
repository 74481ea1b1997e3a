"""CudaEvent: one pooled native CUDA event."""

from __future__ import annotations

from . import compiled, driver
from .devices import Device, resolve_device_index
from .errors import ClosedError, DeviceMismatchError, NotReadyError, NotRecordedError, NotShareableError
from .interprocess import IpcEvent, send
from .pool import default_pool
from .streams import GpuStream, as_stream
from .wait import check_timeout, resolve_policy, wait_until

__all__ = ["CudaEvent", "HeldEvent", "event_flags", "synchronize_handle"]

# CUevent_flags, the pool's keys besides the device
BLOCKING_SYNC = 0x1
DISABLE_TIMING = 0x2
INTERPROCESS = 0x4
TIMING_FLAGS = 0  # the flags of an event created with timing=True (and nothing else)


def event_flags(*, timing: bool = False, blocking_sync: bool = False, interprocess: bool = False) -> int:
    """The ``CUevent_flags`` of a :class:`CudaEvent` made with these arguments."""
    if interprocess and timing:
        raise ValueError(
            "an interprocess event cannot record timing (CUDA requires timing disabled on "
            "interprocess events); pass timing=False"
        )
    return ((0 if timing else DISABLE_TIMING) | (BLOCKING_SYNC if blocking_sync else 0)
            | (INTERPROCESS if interprocess else 0))


def synchronize_handle(handle, timeout: float | None, what: str, policy=None) -> None:
    """Wait on the host for the native event ``handle``: in the driver with the GIL released
    when neither ``timeout`` nor ``policy`` is given, else polling as ``policy`` says until
    ``timeout`` seconds (``TimeoutError``)."""
    if timeout is not None or policy is not None:
        wait_until(lambda: driver.event_query(handle), timeout, what, resolve_policy(policy))
        return
    driver.event_synchronize(handle)


class CudaEvent:
    """A CUDA event whose native handle comes from an :class:`EventPool` and goes back to it.

    The handle returns to the pool on :meth:`close`, at the end of a ``with`` block, or when
    the last reference goes, so timing a region with a fresh pair of events costs no native
    creation once the pool is warm.

    Args:
        device: the device whose primary context owns the event. ``None`` binds the event to
            the device of the first stream it is recorded on (no handle is taken until then).
        timing: allow :meth:`elapsed_time` (events without timing are cheaper to record).
        blocking_sync: host waits block the thread instead of spinning. CUDA queues few
            records of such events behind unfinished work: on an H200 the 57th record behind
            a busy stream blocks the recording thread until the GPU catches up (an event
            without timing: none up to 6,000). Use it for the one event a thread sleeps on.
        interprocess: the event can be sent to other processes (:meth:`ipc_handle`), which
            wait for it there; incompatible with timing.
        pool: the pool to draw from (default: :func:`default_pool`).

    A ``CudaEvent`` object is meant for one thread at a time, like the streams it is
    recorded on; the pool behind it is safe from any thread.
    """

    __slots__ = ("_handle", "_device", "_flags", "_pool", "_recorded", "_closed", "__weakref__")

    def __init__(self, device=None, *, timing: bool = False, blocking_sync: bool = False,
                 interprocess: bool = False, pool=None):
        self._handle = None
        self._closed = False
        self._recorded = False
        flags = self._flags = event_flags(timing=timing, blocking_sync=blocking_sync, interprocess=interprocess)
        self._pool = default_pool() if pool is None else pool
        if device is None:
            self._device = -1
        else:
            index = resolve_device_index(device)
            self._handle = self._pool.acquire(index, flags)
            self._device = index

    # -- properties ---------------------------------------------------------------------
    @property
    def device(self) -> Device | None:
        """The event's :class:`Device`, or ``None`` before an unbound event's first record."""
        return None if self._device < 0 else Device(self._device)

    @property
    def handle(self) -> int | None:
        """The native ``CUevent`` as an integer (``None`` when unbound or closed)."""
        h = self._handle
        return None if h is None else int(h)

    @property
    def timing(self) -> bool:
        """True when the event records timestamps for :meth:`elapsed_time`."""
        return not self._flags & DISABLE_TIMING

    @property
    def blocking_sync(self) -> bool:
        """True when host waits block instead of spinning."""
        return bool(self._flags & BLOCKING_SYNC)

    @property
    def interprocess(self) -> bool:
        """True for an interprocess event."""
        return bool(self._flags & INTERPROCESS)

    @property
    def recorded(self) -> bool:
        """True once :meth:`record` has been called."""
        return self._recorded

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __repr__(self) -> str:
        if self._closed:
            return "<CudaEvent closed>"
        where = "unbound" if self._device < 0 else f"device={self._device}"
        return f"<CudaEvent {where} timing={self.timing} recorded={self._recorded}>"

    # -- operations ---------------------------------------------------------------------
    def _closed_error(self) -> ClosedError:
        return ClosedError("this CudaEvent was closed; its handle went back to the pool. Create a new CudaEvent")

    def _stream(self, stream) -> GpuStream:
        if self._closed:
            raise self._closed_error()
        if stream is None:
            return as_stream(None, None if self._device < 0 else self._device)
        return as_stream(stream)

    def record(self, stream=None) -> "CudaEvent":
        """Capture the work enqueued on ``stream`` so far; returns ``self``.

        ``stream`` is anything :func:`as_stream` accepts; ``None`` is the legacy default
        stream of the event's device. Recording again replaces the captured work.

        Raises:
            DeviceMismatchError: the stream belongs to another device than the event.
            ClosedError: the event or the stream was closed.
        """
        s = stream if type(stream) is GpuStream else self._stream(stream)
        h = self._handle
        if h is None:
            if self._closed:
                raise self._closed_error()
            h = self._handle = self._pool.acquire(s._device, self._flags)
            self._device = s._device
        elif s._device != self._device:
            raise DeviceMismatchError(
                f"cannot record an event of device {self._device} on a stream of device {s._device} "
                "(CUDA needs both in one context); create the event with "
                f"device={s._device}, or with device=None to bind it at its first record"
            )
        s._record(h)
        self._recorded = True
        return self

    def _recorded_handle(self, what: str):
        h = self._handle
        if h is None and self._closed:
            raise self._closed_error()
        if not self._recorded:
            raise NotRecordedError(
                f"{what} on an event that was never recorded would order nothing; call record(stream) first"
            )
        return h

    def wait(self, stream=None) -> None:
        """Make ``stream`` wait (on the device, not the host) for the recorded work.

        The stream may belong to another device: CUDA then synchronizes across devices.

        Raises:
            NotRecordedError: the event was never recorded.
        """
        h = self._recorded_handle("wait()")
        s = stream if type(stream) is GpuStream else self._stream(stream)
        s._call(driver.stream_wait_event, s._live(), h)

    def query(self) -> bool:
        """True when the recorded work has finished, False while it is pending (never blocks).

        Raises:
            NotRecordedError: the event was never recorded.
            CudaError: any failure other than "not ready", e.g. a sticky error of the context.
        """
        return driver.event_query(self._recorded_handle("query()"))

    def synchronize(self, timeout: float | None = None, policy=None) -> None:
        """Block the host until the recorded work has finished.

        With neither ``timeout`` nor ``policy`` the thread waits in the driver with the GIL
        released (spinning or, for ``blocking_sync`` events, sleeping); otherwise it polls as
        ``policy`` says (a :class:`WaitPolicy` or a preset name; ``"spin"`` for the lowest
        latency) and raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        timeout = check_timeout(timeout)
        synchronize_handle(self._recorded_handle("synchronize()"), timeout, "CudaEvent.synchronize()", policy)

    def elapsed_time(self, end: "CudaEvent") -> float:
        """Milliseconds between this (start) event and ``end``; both must have completed.

        Raises:
            ValueError: either event was created without ``timing=True``.
            NotRecordedError: either event was never recorded.
            NotReadyError: the work before either event has not finished yet.
            DeviceMismatchError: the events belong to different devices.
        """
        if not isinstance(end, CudaEvent):
            raise TypeError(f"elapsed_time() needs the end CudaEvent, got {type(end).__name__}")
        pair = ((self, "start"), (end, "end"))
        for ev, role in pair:
            if ev._closed:
                raise ClosedError(f"the {role} event was closed; time with events that are still open")
            if ev._flags & DISABLE_TIMING:
                raise ValueError(
                    f"the {role} event was created without timing; create both events with timing=True"
                )
        for ev, role in pair:
            if not ev._recorded:
                raise NotRecordedError(f"the {role} event was never recorded; record() both events before elapsed_time()")
        if self._device != end._device:
            raise DeviceMismatchError(
                f"cannot time between events of device {self._device} and device {end._device}; "
                "record both on streams of one device"
            )
        ms = driver.event_elapsed_ms(self._handle, end._handle)
        if ms is None:
            raise NotReadyError("the events have not both completed; call end.synchronize() before elapsed_time()")
        return ms

    def close(self) -> None:
        """Return the handle to the pool; the event cannot be used afterwards. Idempotent."""
        self._closed = True
        h = self._handle
        if h is not None:
            self._handle = None
            self._pool.release(self._device, self._flags, h)

    def ipc_handle(self) -> "IpcEvent":
        """One send of this interprocess event: an :class:`~cudaevents.IpcEvent` to pickle
        once to another process (``multiprocessing``, ``torch.multiprocessing``), which waits
        for the event's record there. The event goes back to its pool only once every send has
        been released (by its receiver, or here if never pickled); see
        :mod:`cudaevents._core.interprocess`.

        Raises:
            NotShareableError: the event is not interprocess.
            NotRecordedError: the event was never recorded (a wait on it would order nothing).
            ClosedError: the event was closed.
        """
        return send(self)

    def __reduce__(self):
        raise NotShareableError(
            "a CudaEvent cannot be pickled; to wait for it in another process, create it with "
            "interprocess=True and send event.ipc_handle()"
        )

    def __enter__(self) -> "CudaEvent":
        if self._closed:
            raise self._closed_error()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Marked closed as well: the garbage collector runs every finalizer of a cycle, also
        # on objects another finalizer there has made reachable again (see HeldEvent).
        self._closed = True
        h = getattr(self, "_handle", None)  # None too if __init__ failed early
        if h is not None:
            self._handle = None
            try:
                # Never the pool's lock here: the collector may run this finalizer in a thread
                # inside that lock (DESIGN.md, "What may run inside a lock").
                self._pool.release_deferred(self._device, self._flags, h)
            except Exception:  # a finalizer must not raise
                pass


compiled.register(CudaEvent, ("__init__", "record", "wait", "query", "close", "__del__"),
                  lambda hot, cls, python: hot.install_event(cls, python, default_pool))


class HeldEvent(CudaEvent):
    """A :class:`CudaEvent` that only its owner's explicit :meth:`close` gives back: dropping
    it releases nothing. For events kept inside an object whose own finalizer still uses
    them: when the garbage collector frees such an object together with its events (one
    reference cycle), it runs every finalizer of the cycle in no set order, so a plain
    event could give its handle back before the owner's finalizer queries it or hands it on
    to be fenced. An owner that is never closed leaks the handle instead."""

    __slots__ = ()

    def __del__(self):
        pass
