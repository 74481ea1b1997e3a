"""AtomicEvent: a 64-bit monotonic counter that the CPU and GPU streams signal and wait on."""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref

from .._core import driver
from .._core.cuda_event import HeldEvent
from .._core.devices import resolve_device_index
from .._core.errors import ClosedError, CudaError, DeviceMismatchError, NotShareableError, PeerError
from .._core.lifetime import after_fork_in_child, defer, state
from .._core.streams import GpuStream, as_stream, helper_stream
from .._core.wait import check_timeout, resolve_policy, wait_until
from . import counter_storage, shared_storage
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
    :func:`cudaevents.atomic_backend`) or forced with ``CUDAEVENTS_ATOMIC_BACKEND``. On mem64
    and mem32 a GPU signal or wait is a stream memory operation, of which CUDA queues about a
    thousand behind work a stream has not finished (on an H200 the 1,021st blocks the thread
    until the GPU catches up, as for kernel launches); hostfn signals are event records and its
    waits host functions, which CUDA queues without such a limit.

    Beware: a GPU stream that waits for a value only the host will signal holds the stream;
    once about a thousand more operations queue behind it, the thread enqueuing them blocks
    until the signal comes. Never enqueue GPU work behind such a wait from the only thread
    that will give the signal. The detectable case, a GPU wait enqueued from a CpuStream
    task for a value that only a later task of that same CpuStream signals, is refused.

    Shared by processes (``shared=True``): the value lives in shared memory, and the counter
    pickles, so ``multiprocessing`` (start method ``spawn``) or ``torch.multiprocessing``
    sends it to other processes, whose host, CPU streams and GPU streams (of the same GPU,
    whatever its ordinal there) signal and wait on the same counter, with the same rules:
    values never decrease from one signal call to the next in any process, and a stream
    signal behind another process's pending signal waits for it first (a host signal then
    raises ``ValueError``). Backends mem64, mem32 and host share; hostfn does not. A process
    that ends without closing it (killed, crashed) breaks it for all: waits for values not
    reached by then raise :class:`PeerError` within about a second, GPU waits are let go,
    signals change nothing; a failure in one process breaks it the same way. ``close()`` in
    a process detaches it (interpreter exit does too); after its creator closed it no
    process can receive it (:class:`CreatorClosedError`). A forked child uses an inherited
    shared counter from the host without joining it (its end is not watched).

    Args:
        device: the device whose streams use the counter; ``None`` is the current device,
            or no device on a machine without a GPU (then only host and CPU streams).
        policy: the default :class:`WaitPolicy` (or preset name) for host waits.
        shared: keep the value in shared memory, for other processes (see above).
    """

    __slots__ = ("_cell", "_device", "_lock", "_gpu_lock", "_cond", "_promised", "_last_source", "_error",
                 "_error_tb", "_closed", "_touched", "_gpu_wait_max", "_cpu_pending", "_direct_promised",
                 "_gpu_promised", "_gpu_inflight", "_gpu_signalling", "_policy", "_final", "_finish", "__weakref__")

    def __init__(self, device=None, *, policy=None, shared: bool = False):
        self._closed = True  # until fully built, so a failed __init__ leaves nothing to close
        self._final = 0  # the value at close(): the cell may be released or recycled after it
        self._policy = resolve_policy(policy)
        index = None if device is None and not driver.is_usable() else resolve_device_index(device)
        backend = counter_storage.choose_backend(index)
        if shared:
            cell = shared_storage.create(backend, index)
            index = index if cell.gpu else None  # host only, as in every process that receives it
        else:
            cell = counter_storage.make_cell(backend, -1 if index is None else index)
        self._start(cell, index)

    @classmethod
    def _attach(cls, path: str, backend: str, uuid, policy) -> "AtomicEvent":
        """Unpickling: the shared counter at ``path`` in this process (one object per counter
        and process while it is open here)."""
        event = _shared.get(path)
        if event is not None and not event._closed:
            return event
        event = object.__new__(cls)
        event._closed, event._final, event._policy = True, 0, policy
        cell, index = shared_storage.attach(path, backend, uuid)
        event._start(cell, index)
        return event

    def __reduce__(self):
        cell = self._cell
        if not cell.shared:
            raise NotShareableError(
                "this AtomicEvent is not shared and cannot be sent to another process (pickled); create it with "
                "AtomicEvent(device, shared=True)"
            )
        if self._closed:
            raise ClosedError("this shared AtomicEvent was closed in this process and cannot be sent from it; "
                              "send it before closing it")
        return (AtomicEvent._attach, (cell.path, cell.name, cell.uuid, self._policy))

    def _start(self, cell, index: int | None) -> None:
        """The rest of construction, around a new ``cell`` on device ``index`` (or none)."""
        self._cell = cell
        self._device = -1 if index is None else index
        self._lock = threading.Lock()  # the state; never held across a driver call
        self._gpu_lock = threading.Lock()  # GPU enqueues of this counter, one at a time
        self._cond = threading.Condition(self._lock)
        self._promised = 0
        self._last_source = None  # None: the host; a CpuStream; or a GPU stream's key (int)
        self._gpu_promised = 0  # highest value a GPU stream signal promised
        self._finish = None  # what close() left to the operations in flight: (release, retire)
        self._gpu_inflight = 0  # GPU operations decided and being enqueued
        self._gpu_signalling = 0  # of which GPU signals
        self._error = None
        self._error_tb = None
        self._touched: dict[int, _Touched] = {}  # by GpuStream key
        self._gpu_wait_max = 0
        self._cpu_pending: list[tuple[int, CpuStream]] = []  # CPU-stream signals not yet run
        self._direct_promised = 0  # highest value signalled by the host or a GPU stream
        self._closed = False
        _events.add(self)
        if cell.shared:
            _shared[cell.path] = self

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
        value = self._read()
        if self._cell.shared:
            self._adopt_break()
        self._raise_error()
        return value

    @property
    def error(self) -> BaseException | None:
        """The error that failed the counter (a producer's exception), or ``None``."""
        return self._error

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def shared(self) -> bool:
        """True for a counter shared by processes (``shared=True``, or received from another)."""
        return self._cell.shared

    def __repr__(self) -> str:
        state = f"closed at {self._final}" if self._closed else f"value={self._cell.read()}"
        return f"<AtomicEvent {self._cell.name}{' shared' if self._cell.shared else ''} {state}>"

    # -- checks -------------------------------------------------------------------------
    def _read(self) -> int:
        """The counter's value; after :meth:`close`, the value it had then. (The cell is read
        first: close() sets ``_closed`` before it releases GPU waiters by raising the cell.)"""
        value = self._cell.read()
        return self._final if self._closed else value

    def _raise_error(self, reached: int | None = None) -> None:
        """Raise the counter's error, unless it is another process's break and ``reached``
        (a value waited for) was reached before it."""
        err = self._error
        if err is not None:
            if reached is not None and type(err) is PeerError and reached <= err.value:
                return
            raise err.with_traceback(self._error_tb)

    def _adopt_break(self) -> None:
        """A shared counter that another process broke fails here too. Called (for shared
        counters only) after reading the value: the release value a break stores is then seen
        with its break."""
        cell = self._cell
        if self._error is None:
            err = cell.peer_error()
            if err is not None:
                self._poison(err)

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
        if state.forked:  # before any decision: a shared counter must not fail for its other processes
            driver.refuse_forked()
        if not self._cell.gpu and self._cell.shared and self._cell.uuid is not None:
            raise DeviceMismatchError(
                f"this shared AtomicEvent belongs to the GPU with UUID {self._cell.uuid.hex()}, which this process "
                "does not see (CUDA_VISIBLE_DEVICES, or no usable driver here); make that GPU visible to this "
                "process, or use the host and CpuStreams here"
            )
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
            ValueError: ``value`` is negative, too large, or below a value already signalled
                (in any process, for a shared counter); or a host signal would be overtaken
                by a pending stream signal (of any process).
            ClosedError: the event (or the CpuStream) was closed.
        """
        cell = self._cell
        if cell.shared:
            self._adopt_break()
        try:
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
                    if cell.shared:  # the store under the page's promise (SharedCell.claiming)
                        with cell.claiming(v, True):
                            cell.store(v)
                    else:
                        cell.store(v)
                    self._promised = self._direct_promised = v
                    self._last_source = None
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
                    # a shared counter's page promise around the decision (SharedCell.claiming: it
                    # yields another process's pending value, which this signal must follow)
                    with cell.claiming(v, False) if cell.shared else _NO_RECORD as other:
                        if other is not None:  # another process's later signal, which follows ours too
                            prev = other
                        # enqueue first: a closed stream raises ClosedError and nothing has changed
                        # (the task cannot finish before we let go of the lock: it takes it at the end)
                        stream.enqueue(self._cpu_signal, v, prev, stream, entry)
                        self._promised = v
                        self._last_source = stream
                        self._cpu_pending.append(entry)
                return
            s = self._gpu_stream(stream)
            with self._gpu_lock:  # GPU enqueues of this counter in call order, outside self._lock
                new = self._new_touched(s)
                with new or _NO_RECORD, self._lock:
                    self._check_open()
                    self._check_order(v)
                    if self._error is not None:
                        self._promised = v
                        return
                    last = self._last_source
                    after = None  # what this signal must follow: a GPU stream's fence, or a CPU value
                    if last is not None and last != s._key and cell.read() < self._promised:
                        after = self._touched[last].signalled if type(last) is int else self._promised
                    # a shared counter's page promise around the decision (SharedCell.claiming: it
                    # yields another process's pending value, which this signal must follow)
                    with cell.claiming(v, False) if cell.shared else _NO_RECORD as other:
                        if other is not None:  # another process's later signal, which follows ours too
                            after = other
                        # Promised before the enqueue, so a host signal meanwhile is refused rather than
                        # overwritten; a failed enqueue fails the counter (the signal can never land).
                        self._promised = self._direct_promised = self._gpu_promised = v
                        self._last_source = s._key
                        touched = self._in_flight(s, new)
                        self._gpu_signalling += 1
                try:
                    if type(after) is int:  # keep completion order = call order
                        s._call(cell.gpu_wait, s._live(), after)  # a host value: only a memory wait sees it
                    elif after is not None:
                        after.wait(s)  # a CUDA-visible dependency on the earlier stream's signal
                    s._call(cell.gpu_signal, s._live(), v)
                    touched.signalled.record(s)
                except BaseException as exc:
                    self._poison(exc)
                    raise
                finally:
                    self._landed_in_queue(signal=True)
        except PeerError as err:  # only a shared counter's page raises it: another process broke it meanwhile
            self._poison(err)

    def _new_touched(self, s: GpuStream) -> "_Touched | None":
        """A record for GPU stream ``s`` if the counter has none yet (made outside the state
        lock: taking its events may create them in the driver); with ``self._gpu_lock`` held."""
        if s._key in self._touched:
            return None
        return _Touched(s, HeldEvent(s._device), HeldEvent(s._device))

    def _in_flight(self, s: GpuStream, new) -> "_Touched":
        """With the state lock held, once a GPU operation on ``s`` is decided: its stream's
        record (``new`` if it had none; an unused ``new`` is given back), and one more
        operation in flight, so a close() meanwhile leaves its end to that operation."""
        touched = self._touched.get(s._key)
        if touched is None:
            touched = self._touched[s._key] = new
            new.used = True
        self._gpu_inflight += 1
        return touched

    def _landed_in_queue(self, signal: bool = False) -> None:
        """A GPU operation is enqueued (or failed): the last one in flight finishes a close()
        that came meanwhile."""
        with self._lock:
            self._gpu_inflight -= 1
            self._gpu_signalling -= signal
            finish = self._take_finish()
        for step in finish:
            step()

    def _take_finish(self) -> tuple:
        """With the state lock held: the steps of close() that what is in flight no longer
        holds back. Letting stranded GPU waits go waits for the signals only (pending CPU
        signals, GPU signals being enqueued), never for a GPU wait being enqueued: that wait's
        own driver calls may block until its stream is let go. Retiring the cell waits for
        every operation in flight (each records its stream's fence)."""
        if self._finish is None or self._cpu_pending or self._gpu_signalling:
            return ()
        release, retire = self._finish
        if self._gpu_inflight:
            self._finish = (None, retire)
            return () if release is None else (release,)
        self._finish = None
        return (retire,) if release is None else (release, retire)

    def _cpu_signal(self, v: int, prev, stream: CpuStream, entry) -> None:
        """Runs on the CpuStream's thread. A close() meanwhile does not stop it: signals
        called before close() still land, in order (close() leaves the rest of its work to
        the last of them)."""
        try:
            failed = stream.error
            if failed is not None:  # an earlier task of this stream raised
                self._poison(failed)
                return
            cell = self._cell
            if prev is not None:  # another source's earlier signal must land first
                # A failure meanwhile ends the wait; this signal then changes nothing, and
                # the signalling stream itself does not fail.
                failed, found = self._failure_probe(prev)
                wait_until(lambda: self._error is not None or cell.read() >= prev or failed(), None,
                           f"AtomicEvent.signal({v}) after {prev}", self._policy, self._cond,
                           notified=not (cell.gpu or cell.shared))
                if found:
                    self._poison(found[0])
            with self._lock:
                if self._error is not None:
                    return
                if self._cell.read() < v:
                    self._cell.store(v)
                self._cond.notify_all()
        finally:
            with self._lock:
                self._cpu_pending.remove(entry)
                finish = self._take_finish()
            for step in finish:
                step()

    def _failure_probe(self, v: int) -> tuple:
        """For a host wait for ``v``: ``(failed, found)``. ``failed()`` is a check, cheap
        enough to call in a spin loop, that looks at most every 50 ms whether a GPU stream
        this counter was used on has failed (a sticky error of its context, e.g. after a
        device-side assert); it then puts that error in the list ``found`` and returns True,
        and the waiter fails the counter with it once its wait is over (a blocking wait calls
        ``failed()`` with the event's condition held, so the check must not take the lock): a
        GPU signal behind failed work never lands, and the wait must not hang. It calls the driver only while a GPU signal has promised ``v``: a value only the
        host or a CpuStream will give needs no driver, and a thread that will give a value
        GPU streams wait for must not need the driver (it may block behind those waits).

        On a shared counter it also looks whether a process sharing it has ended without
        closing it (or another process broke it), and then fails the counter with that
        :class:`PeerError` (no driver call either)."""
        cell = self._cell
        if not cell.gpu and not cell.shared:
            return _never, ()
        next_at = [time.monotonic() + _PROBE_EVERY]
        found: list = []

        def failed() -> bool:
            now = time.monotonic()
            if now < next_at[0]:
                return False
            next_at[0] = now + _PROBE_EVERY
            if cell.shared:
                err = cell.check_peers()
                if err is not None:
                    found.append(err)
                    return True
            if self._gpu_promised < v or state.forked:  # a forked child cannot ask the parent's streams
                return False
            for s in [touched.stream for touched in list(self._touched.values())]:
                try:
                    s.query()
                except CudaError as exc:
                    if exc.code not in driver.STICKY_ERRORS:  # e.g. a stream its owner destroyed:
                        continue  # the work enqueued there still runs; only a dead context is final
                    found.append(exc)
                    return True
                except ClosedError:  # a stream closed since: its work was fenced at close
                    continue
            return False

        return failed, found

    def _poison(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
                self._error_tb = error.__traceback__
                if self._cell.shared:
                    self._cell.fail(error)  # breaks it for every process, and lets every GPU wait go
                elif self._cell.gpu:
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
            PeerError: a process sharing the counter died or failed it before ``value``.
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
        if cell.shared:
            self._adopt_break()
        if type(stream) is CpuStream:
            with self._lock:
                self._raise_error(v)
                if self._closed and self._final < v:
                    raise self._never_reached(v)
            stream.enqueue(self._host_wait, v, None, None)
            return
        s = self._gpu_stream(stream)
        with self._gpu_lock:
            new = self._new_touched(s)
            with new or _NO_RECORD, self._lock:
                self._raise_error(v)
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
                # counted before the enqueue: a close() meanwhile lets this wait go too
                if v > self._gpu_wait_max:
                    self._gpu_wait_max = v
                touched = self._in_flight(s, new)
            # Outside self._lock: behind about a thousand operations queued after an unsatisfied
            # wait the driver blocks this call, and the signal that frees it must not need the lock.
            try:
                s._call(cell.gpu_wait, s._live(), v)
                touched.fence.record(s)
            finally:
                self._landed_in_queue()

    def _only_this_thread_signals(self, v: int) -> bool:
        """True when ``v`` is promised only by pending signals of a CpuStream whose thread is
        the calling one (so the caller would block before giving the signal)."""
        if self._direct_promised >= v or (self._cell.shared and self._cell.promised_elsewhere(v)):
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

            failed, found = self._failure_probe(v)

            def done() -> bool:
                return self._error is not None or self._closed or cell.read() >= v or failed()

            spinner = getattr(cell, "spinner", None)  # a word in memory the GPU writes: spun on in C
            # another process's stores notify nobody here
            wait_until(done, timeout, f"AtomicEvent.wait({v})", self._policy if policy is None else policy, self._cond,
                       notified=not (cell.gpu or cell.shared), spin=None if spinner is None else spinner(v))
            if found:
                self._poison(found[0])
        if cell.shared:
            self._adopt_break()
        self._raise_error(v)
        if self._read() < v:
            raise self._never_reached(v)

    def is_signaled(self, value: int) -> bool:
        """True when the counter has reached ``value`` (never blocks)."""
        cell = self._cell
        v = _check_value(value, cell.limit, cell.name)
        reached = self._read() >= v
        if cell.shared:
            self._adopt_break()
        self._raise_error(v)
        return reached

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the counter; its storage goes back once nothing can touch it any more.

        What was called before still happens: signals already called land, in call order.
        Host waiters wake now, with :class:`ClosedError` unless the value at close reached
        theirs. GPU waits for values those signals promise pass when they land; GPU waits for
        values no signal promised are let go (and a warning logged) after the last of those
        signals, never before, rather than left to hang. The storage is given back once every
        GPU stream that used the counter has passed its last operation of it. Idempotent.
        Afterwards :attr:`value` and waits answer from the value at close.

        A shared counter is closed in this process only: this process detaches once none of
        its operations is in flight any more (pending CpuStream signals stored, GPU ones
        enqueued), the others go on. Its stranded GPU waits are let go only by the last
        process attached (another may still signal them). The creator's close makes the
        counter impossible to receive from then on."""
        with self._lock:
            if self._closed:
                return
            cell = self._cell
            if cell.gpu and state.forked and not cell.shared:  # the parent's pinned memory: touch nothing
                self._final, self._closed, self._touched = 0, True, {}
                self._cond.notify_all()
                return
            self._final = cell.settled() if cell.shared else cell.read()
            self._closed = True
            self._cond.notify_all()
            if cell.shared:
                cell.close()
                if _shared.get(cell.path) is self:
                    del _shared[cell.path]
                stranded = (cell.gpu and self._error is None and self._gpu_wait_max > max(self._promised, cell.promised())
                            and cell.last_attached())
            else:
                # GPU waits that no signal will satisfy (after a failure too: a GPU signal enqueued
                # before it may have landed since and lowered the value again)
                stranded = cell.gpu and self._gpu_wait_max > (self._final if self._error is not None else self._promised)
            last = self._last_source
            behind = self._touched.get(last) if type(last) is int and self._final < self._promised else None
            touched = list(self._touched.values())
            release = functools.partial(self._release_stranded, cell, behind, touched) if stranded else None
            self._finish = (release, functools.partial(self._retire, cell, touched))
            self._touched = {}
            finish = self._take_finish()  # what is in flight finishes the rest
        for step in finish:
            step()

    def _release_stranded(self, cell, behind, touched: list) -> None:
        """A step of :meth:`close`, once no signal is pending or being enqueued: let stranded
        GPU waits go after the last GPU signal (``behind``: that stream's record, when it may
        not have landed yet). GPU waits enqueued after this pass at once.

        The write that lets them go after that signal goes on the library's helper stream,
        behind the signal's CUDA event: on the signal's own stream it could queue behind a
        stranded wait enqueued there since, which would hold it forever. The helper's record
        joins ``touched``, so the cell is retired behind it too."""
        if not state.exiting:  # at exit the process is going anyway: say nothing
            _log.warning("AtomicEvent closed with GPU waits for up to %d that no signal will reach; "
                         "released them", self._gpu_wait_max)
        if behind is not None and cell.releases_in_stream_order and not state.exiting:
            h = helper_stream(self._device)
            behind.signalled.wait(h)
            h._call(cell.gpu_signal, h._live(), cell.limit - 1)
            done = HeldEvent(self._device)
            done.record(h)
            touched.append(_Touched(h, done, HeldEvent(self._device)))
        else:
            cell.release_waiters()

    def _retire(self, cell, touched: list) -> None:
        """The last step of :meth:`close`, once nothing is in flight: the cell goes back behind
        every stream's fence."""
        if not state.exiting:
            fences = [ev for t in touched for ev in (t.signalled, t.fence) if ev.recorded or ev.close()]
            cell.retire(fences)
            counter_storage.reclaim()  # what earlier counters left behind, once done: no fence lingers

    def __enter__(self) -> "AtomicEvent":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # The collector may run this inside a critical section of this thread (a pool's, the
        # slab's, another counter's lock), and close() takes such locks: another thread closes.
        # At interpreter exit no thread starts and nothing is given back: GPU waits are let go.
        if getattr(self, "_closed", True):
            return
        if state.exiting:
            cell = self._cell  # a shared counter's other processes may still signal
            if cell.gpu and not cell.shared and not state.forked and self._gpu_wait_max > cell.read():
                cell.release_waiters()
            return
        defer(self.close)


class _Touched:
    """A GPU stream a counter was used on: the stream (kept alive until the counter closes)
    and two fence events, recorded after each of the counter's signals there (``signalled``:
    what a later signal on another stream orders itself after) and after each of its waits
    there (``fence``; never an ordering point: a wait may be for a value a later signal gives).
    The storage goes back once both complete, also when the stream has been destroyed since."""

    __slots__ = ("stream", "signalled", "fence", "used")

    def __init__(self, stream: GpuStream, signalled: HeldEvent, fence: HeldEvent):
        self.stream = stream
        self.signalled = signalled
        self.fence = fence
        self.used = False  # taken into a counter's records (else given back on leaving a with block)

    # A record made for an operation that then did not happen (an early return, a refusal)
    # gives its events back: ``with new or _NO_RECORD, lock:`` around the decision.
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        if not self.used:
            self.signalled.close()
            self.fence.close()


class _NoRecord:
    """Stands in for a new :class:`_Touched` where the stream has its record already, and
    for the page's claim around a stream signal of a counter that is not shared."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


_NO_RECORD = _NoRecord()


_events: weakref.WeakSet = weakref.WeakSet()
_shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # path -> this process's open shared counter


@after_fork_in_child
def _after_fork_in_child() -> None:
    """In the child of a fork: renew every counter's lock (a parent thread may have held it),
    and fail the counters still expecting signals from CpuStreams, whose threads did not
    survive the fork, so their waiters raise instead of waiting for what never comes."""
    for event in list(_events):
        event._lock = threading.Lock()
        event._gpu_lock = threading.Lock()
        event._cond = threading.Condition(event._lock)
        if event._cpu_pending and event._error is None:
            event._error = ClosedError(
                "this AtomicEvent was still to be signalled by a CpuStream created before os.fork(); that "
                "stream's thread does not exist in this process, so the signal never comes: create the "
                "event and its streams in this process"
            )
            event._error_tb = None
