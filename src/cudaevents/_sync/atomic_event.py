"""AtomicEvent: a 64-bit monotonic counter that the CPU and GPU streams signal and wait on."""

from __future__ import annotations

import logging
import threading
import time
import weakref

from .._core import driver
from .._core.devices import resolve_device_index
from .._core.errors import ClosedError, CudaError, DeviceMismatchError
from .._core.lifetime import after_fork_in_child, state
from .._core.streams import GpuStream, as_stream
from .._core.wait import check_timeout, resolve_policy, wait_until
from . import counter_storage
from .cpu_stream import CpuStream

__all__ = ["AtomicEvent", "atomic_backend"]

_PROBE_EVERY = 0.05  # seconds between looks at the health of the GPU streams a host wait depends on


def _never() -> bool:
    return False


_log = logging.getLogger("cudaevents")


def atomic_backend(device=None) -> str:
    """The counter backend :class:`AtomicEvent` uses on ``device`` (``None``: the current
    device, or ``"host"`` without a GPU): ``mem64``, ``mem32``, ``hostfn`` or ``host``."""
    index = None if device is None and not driver.is_usable() else resolve_device_index(device)
    return counter_storage.choose_backend(index)


def _check_value(value, limit: int, backend: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"counter values are ints, got {type(value).__name__}; pass an int in [0, 2**63)")
    if value < 0:
        raise ValueError(f"counter values are >= 0, got {value}; pass a value in [0, 2**63)")
    if value >= limit:
        if limit == 1 << 63:
            raise ValueError(
                f"counter values are below 2**63 (the GPU compares them cyclically), got {value}; "
                "keep values in [0, 2**63)"
            )
        raise ValueError(
            f"the {backend} backend holds values below 2**31 (the GPU compares 32-bit values cyclically), "
            f"got {value}; use the mem64 backend or keep values small"
        )
    return value


class AtomicEvent:
    """A 64-bit counter that only grows; CPU and GPU streams signal it and wait for values.

    ``signal(v, stream)`` sets the counter to ``v`` now (``stream=None``) or when the stream
    reaches that point; ``wait(v, stream)`` blocks the host (``stream=None``) or makes the
    stream wait until the counter is at least ``v``. Values are ints in ``[0, 2**63)``
    (``[0, 2**32)`` on the mem32 backend) and must not decrease from one signal call to the
    next. Signals complete in the order they were called, also across streams: a GPU or CPU
    stream signal that follows a pending signal of another stream first waits for it.

    Errors travel: a signal on a CpuStream whose earlier task raised fails the counter with
    that exception (:attr:`error`). From then on every host or CPU-stream wait raises it, GPU
    waits already enqueued are let go (a GPU stream cannot raise), GPU waits enqueued later
    raise at once, and further signals change nothing: the counter stays failed.

    The storage backend is chosen from the device's capabilities (see
    :func:`cudaevents.atomic_backend`) or forced with ``CUDAEVENTS_ATOMIC_BACKEND``.

    Beware: a GPU stream that waits for a value only the host will signal holds the stream;
    once about a thousand more operations queue behind it, the thread enqueuing them blocks
    until the signal comes. Never enqueue GPU work behind such a wait from the only thread
    that will give the signal. The detectable case, a GPU wait enqueued from a CpuStream
    task for a value that only a later task of that same CpuStream signals, is refused.

    Args:
        device: the device whose streams use the counter; ``None`` is the current device,
            or no device on a machine without a GPU (then only host and CPU streams).
        policy: the default :class:`WaitPolicy` (or preset name) for host waits.
    """

    __slots__ = ("_cell", "_device", "_lock", "_cond", "_promised", "_last_source", "_error", "_error_tb",
                 "_closed", "_touched", "_gpu_wait_max", "_cpu_pending", "_direct_promised", "_policy",
                 "_final", "__weakref__")

    def __init__(self, device=None, *, policy=None):
        self._closed = True  # until fully built, so a failed __init__ leaves nothing to close
        self._final = 0  # the value at close(): the cell may be released or recycled after it
        self._policy = resolve_policy(policy)
        index = None if device is None and not driver.is_usable() else resolve_device_index(device)
        backend = counter_storage.choose_backend(index)
        self._cell = counter_storage.make_cell(backend, -1 if index is None else index)
        self._device = -1 if index is None else index
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._promised = 0
        self._last_source = None  # None: the host; a CpuStream; or a GPU stream handle (int)
        self._error = None
        self._error_tb = None
        self._touched: dict[int, GpuStream] = {}
        self._gpu_wait_max = 0
        self._cpu_pending: list[tuple[int, CpuStream]] = []  # CPU-stream signals not yet run
        self._direct_promised = 0  # highest value signalled by the host or a GPU stream
        self._closed = False
        _events.add(self)

    # -- properties ---------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The storage backend: ``mem64``, ``mem32``, ``hostfn`` or ``host``."""
        return self._cell.name

    @property
    def device(self):
        """The :class:`Device` whose streams may use the counter, or ``None`` (host only)."""
        from .._core.devices import Device

        return None if self._device < 0 else Device(self._device)

    @property
    def value(self) -> int:
        """The counter's current value (what has completed, not what is enqueued)."""
        self._raise_error()
        return self._read()

    @property
    def error(self) -> BaseException | None:
        """The error that failed the counter (a producer's exception), or ``None``."""
        return self._error

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __repr__(self) -> str:
        state = f"closed at {self._final}" if self._closed else f"value={self._cell.read()}"
        return f"<AtomicEvent {self._cell.name} {state}>"

    # -- checks -------------------------------------------------------------------------
    def _read(self) -> int:
        """The counter's value; after :meth:`close`, the value it had then. (The cell is read
        first: close() sets ``_closed`` before it releases GPU waiters by raising the cell.)"""
        value = self._cell.read()
        return self._final if self._closed else value

    def _raise_error(self) -> None:
        err = self._error
        if err is not None:
            raise err.with_traceback(self._error_tb)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this AtomicEvent was closed; create a new one")

    def _check_order(self, value: int) -> None:
        if value < self._promised:
            raise ValueError(
                f"signal({value}) is below {self._promised}, the value already signalled: counter values never "
                f"decrease; signal a value >= {self._promised}, or use a new AtomicEvent to count again"
            )

    def _gpu_stream(self, stream) -> GpuStream:
        s = stream if type(stream) is GpuStream else as_stream(stream)
        if not self._cell.gpu:
            raise ValueError(
                "this AtomicEvent uses the host backend (no GPU, or CUDAEVENTS_ATOMIC_BACKEND=host) and cannot "
                "be signalled or awaited on a GPU stream; use a CpuStream or the host"
            )
        if s._device != self._device:
            raise DeviceMismatchError(
                f"this AtomicEvent belongs to device {self._device} and cannot be used on a stream of device "
                f"{s._device}; create it with device={s._device}"
            )
        if s._handle is None:
            s._live()
        return s

    # -- signal -------------------------------------------------------------------------
    def signal(self, value: int, stream=None) -> None:
        """Set the counter to ``value``: now, or when ``stream`` (CPU or GPU) gets there.

        Once the counter carries an error (see :attr:`error`), signals change nothing.

        Raises:
            ValueError: ``value`` is negative, too large, or below a value already signalled;
                or a host signal would be overtaken by a pending stream signal.
            ClosedError: the event (or the CpuStream) was closed.
        """
        cell = self._cell
        v = _check_value(value, cell.limit, cell.name)
        if stream is None:
            with self._lock:
                self._check_open()
                self._check_order(v)
                if self._error is not None:  # failed: keep GPU waiters released, change nothing
                    self._promised = v
                    return
                if self._last_source is not None and cell.read() < self._promised:
                    raise ValueError(
                        f"a stream signal of {self._promised} has not happened yet, and a host signal of {v} "
                        f"now would be overwritten by it; wait({self._promised}) first or signal on that stream"
                    )
                self._promised = self._direct_promised = v
                self._last_source = None
                cell.store(v)
                self._cond.notify_all()
            return
        if type(stream) is CpuStream:
            with self._lock:
                self._check_open()
                self._check_order(v)
                if self._error is not None:
                    self._promised = v
                    return
                prev = None
                if self._last_source is not stream and cell.read() < self._promised:
                    prev = self._promised
                entry = (v, stream)
                # enqueue first: a closed stream raises ClosedError and nothing has changed
                # (the task cannot finish before we let go of the lock: it takes it at the end)
                stream.enqueue(self._cpu_signal, v, prev, stream, entry)
                self._promised = v
                self._last_source = stream
                self._cpu_pending.append(entry)
            return
        s = self._gpu_stream(stream)
        key = int(s._handle)
        with self._lock:
            self._check_open()
            self._check_order(v)
            if self._error is not None:
                self._promised = v
                return
            if self._last_source is not None and self._last_source != key and cell.read() < self._promised:
                s._call(cell.gpu_wait, s._live(), self._promised)  # keep completion order = call order
            s._call(cell.gpu_signal, s._live(), v)
            self._promised = self._direct_promised = v
            self._last_source = key
            self._touched[key] = s

    def _cpu_signal(self, v: int, prev, stream: CpuStream, entry) -> None:
        """Runs on the CpuStream's thread."""
        try:
            failed = stream.error
            if failed is not None:  # an earlier task of this stream raised
                self._poison(failed)
                return
            cell = self._cell
            if prev is not None:  # another source's earlier signal must land first
                # A failure or a close meanwhile ends the wait; this signal then changes
                # nothing, and the signalling stream itself does not fail.
                failed = self._failure_probe()
                wait_until(lambda: self._error is not None or self._closed or cell.read() >= prev or failed(), None,
                           f"AtomicEvent.signal({v}) after {prev}", self._policy, self._cond,
                           notified=not cell.gpu)
            with self._lock:
                if self._closed or self._error is not None:
                    return
                if self._cell.read() < v:
                    self._cell.store(v)
                self._cond.notify_all()
        finally:
            with self._lock:
                self._cpu_pending.remove(entry)

    def _failure_probe(self):
        """For a host wait: a check, cheap enough to call in a spin loop, that looks at most
        every 50 ms whether a GPU stream this counter was used on has failed (a sticky error
        of its context, e.g. after a device-side assert), and then fails the counter with
        that error: a GPU signal behind failed work never lands, and the wait must not hang."""
        if not self._cell.gpu:
            return _never
        next_at = [time.monotonic() + _PROBE_EVERY]

        def failed() -> bool:
            now = time.monotonic()
            if now < next_at[0]:
                return False
            next_at[0] = now + _PROBE_EVERY
            for s in list(self._touched.values()):
                try:
                    s.query()
                except CudaError as exc:
                    if exc.code not in driver.STICKY_ERRORS:  # e.g. a stream its owner destroyed:
                        continue  # the work enqueued there still runs; only a dead context is final
                    self._poison(exc)
                    return True
                except ClosedError:  # a stream closed since: its work was fenced at close
                    continue
            return False

        return failed

    def _poison(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
                self._error_tb = error.__traceback__
                if self._cell.gpu:
                    self._cell.release_waiters()  # a GPU stream cannot raise: let it go rather than hang
            self._cond.notify_all()

    # -- wait ---------------------------------------------------------------------------
    def wait(self, value: int, stream=None, timeout: float | None = None, policy=None) -> None:
        """Wait until the counter is at least ``value``: on the host (``stream=None``), or
        make a CPU or GPU stream wait there.

        Host waits follow ``policy`` (default: the event's) and raise ``TimeoutError`` after
        ``timeout`` seconds; ``timeout`` and ``policy`` apply to host waits only.

        Raises:
            BaseException: the error of a failed producer (see :attr:`error`).
            ClosedError: the event was closed before reaching ``value``.
            RuntimeError: a GPU wait that would deadlock its enqueuing thread (see class doc).
        """
        cell = self._cell
        v = _check_value(value, cell.limit, cell.name)
        if stream is None:
            # both checked up front, also when the value has been reached already
            self._host_wait(v, check_timeout(timeout), None if policy is None else resolve_policy(policy))
            return
        if timeout is not None or policy is not None:
            raise TypeError("timeout and policy apply to host waits only (stream=None)")
        if type(stream) is CpuStream:
            with self._lock:
                self._raise_error()
                if self._closed and self._final < v:
                    raise self._never_reached(v)
            stream.enqueue(self._host_wait, v, None, None)
            return
        s = self._gpu_stream(stream)
        with self._lock:
            self._raise_error()
            if self._read() >= v:
                return
            if self._closed:
                raise self._never_reached(v)
            if self._only_this_thread_signals(v):
                raise RuntimeError(
                    f"a GPU wait for {v} enqueued from a task of the CpuStream that signals it later would "
                    "stall that very stream (enqueues block behind an unsatisfied wait); enqueue the GPU wait "
                    "from another thread, or signal before waiting"
                )
            s._call(cell.gpu_wait, s._live(), v)
            if v > self._gpu_wait_max:
                self._gpu_wait_max = v
            self._touched[int(s._handle)] = s

    def _only_this_thread_signals(self, v: int) -> bool:
        """True when ``v`` is promised only by pending signals of a CpuStream whose thread is
        the calling one (so the caller would block before giving the signal)."""
        if self._direct_promised >= v:
            return False
        me = threading.current_thread()
        givers = {src.thread for pv, src in self._cpu_pending if pv >= v}
        return givers == {me}

    def _never_reached(self, v: int) -> ClosedError:
        return ClosedError(
            f"this AtomicEvent was closed at {self._final} and will never reach {v}; close it only after "
            "its last wait, or signal first"
        )

    def _host_wait(self, v: int, timeout, policy) -> None:
        cell = self._cell
        if self._read() < v and self._error is None:
            if self._closed:
                raise self._never_reached(v)

            failed = self._failure_probe()

            def done() -> bool:
                return self._error is not None or self._closed or cell.read() >= v or failed()

            wait_until(done, timeout, f"AtomicEvent.wait({v})", self._policy if policy is None else policy, self._cond,
                       notified=not cell.gpu)
        self._raise_error()
        if self._read() < v:
            raise self._never_reached(v)

    def is_signaled(self, value: int) -> bool:
        """True when the counter has reached ``value`` (never blocks)."""
        v = _check_value(value, self._cell.limit, self._cell.name)
        self._raise_error()
        return self._read() >= v

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Release the counter's storage. Host waiters wake with :class:`ClosedError`; GPU
        waits still pending for values never signalled are let go (and a warning logged)
        rather than left to hang. Idempotent. Afterwards :attr:`value` and waits for values
        already reached still work (on the value at close)."""
        with self._lock:
            if self._closed:
                return
            cell = self._cell
            if cell.gpu and state.forked:  # the parent's pinned memory: touch nothing
                self._final, self._closed, self._touched = 0, True, {}
                self._cond.notify_all()
                return
            self._final = cell.read()
            self._closed = True  # before the release below, which raises the cell's value
            # (a failure released them already, unless a GPU signal enqueued before it landed
            # afterwards and lowered the value again: release them then too)
            if cell.gpu and self._gpu_wait_max > self._final:
                if not state.exiting:  # at exit the process is going anyway: say nothing
                    _log.warning("AtomicEvent closed at %d with GPU waits for up to %d pending; released them",
                                 self._final, self._gpu_wait_max)
                cell.release_waiters()
            self._cond.notify_all()
            touched, self._touched = self._touched, {}
        if state.exiting:
            return
        fences = []
        from .._core.cuda_event import CudaEvent

        for s in touched.values():
            if s._handle is None:  # destroyed: its pending work cannot be fenced; never reuse
                fences = None
                break
            fences.append(CudaEvent(s._device).record(s))
        cell.retire(fences)

    def __enter__(self) -> "AtomicEvent":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # a finalizer must not raise
                pass


_events: weakref.WeakSet = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    """In the child of a fork: renew every counter's lock (a parent thread may have held it),
    and fail the counters still expecting signals from CpuStreams, whose threads did not
    survive the fork, so their waiters raise instead of waiting for what never comes."""
    for event in list(_events):
        event._lock = threading.Lock()
        event._cond = threading.Condition(event._lock)
        if event._cpu_pending and event._error is None:
            event._error = ClosedError(
                "this AtomicEvent was still to be signalled by a CpuStream created before os.fork(); that "
                "stream's thread does not exist in this process, so the signal never comes: create the "
                "event and its streams in this process"
            )
            event._error_tb = None
