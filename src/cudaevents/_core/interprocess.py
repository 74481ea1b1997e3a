"""Interprocess events: a ``CudaEvent(interprocess=True)`` sent to another process and
waited on there.

**Sending.** ``event.ipc_handle()`` of an interprocess :class:`~cudaevents.CudaEvent` is one
*send*: an :class:`IpcEvent` that may be pickled once (``multiprocessing`` queues and pipes,
``torch.multiprocessing``, ``pickle.dumps``) to reach one receiving process. It exports the
event's handle (``cuIpcGetEventHandle``, once per event and pool life) and gives the send an
acknowledgement slot in this process's shared memory. The receiver's copy opens the handle
(``cuIpcOpenEventHandle``) at its first use; opened handles are cached per exported event, so
later sends of that event cost the receiver no driver call.

**The recycling rule.** A wait (``cuStreamWaitEvent``) or query in the receiving process sees
the record the event holds *when it is called*. Were the exporter to recycle the event (back
to its pool, handed out again and recorded by other work, maybe on an idle stream) while a
receiver has not waited yet, that receiver would wait for the other work and not for the
work it was sent for: it could read data before it is written. So an exported event goes
back to its pool only after every send of it has been *released* by whoever holds it (the
receiver: :meth:`IpcEvent.release`, the end of a ``with`` block, or dropping the object, by
when its waits are enqueued and hold the record they captured; or the exporter, for a send
it never pickled). Until then a closed exported event
waits in this module (:func:`stats` counts it), and the pool makes a new native event for the
next ``CudaEvent``. A send whose receiver never releases it (pickled but never unpickled, or
a receiver that died) holds its event until this process exits: a leak, never a reorder.

**Death.** A receiver checks that the exporter still runs before each use
(:func:`processes.alive <cudaevents._core.processes.alive>`) and raises
:class:`~cudaevents.PeerError` when it does not: the event lived in the exporter's
context, which its exit destroyed.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import mmap
import os
import threading
import time

from . import driver, processes, shm
from .errors import (ClosedError, CudaError, CudaUnavailableError, DeviceMismatchError, NotRecordedError,
                     NotShareableError, PeerError)
from .lifetime import after_fork_in_child, defer, drain, state
from .streams import GpuStream, as_stream
from .wait import check_timeout, resolve_policy, wait_until

__all__ = ["IpcEvent", "stats"]

_SLOTS = 4096  # acknowledgement slots per shared file, 8 bytes each
_OPENED_MAX = 1024  # opened handles a receiving process keeps (least recently used closed first)
_LOOK_EVERY = 0.05  # seconds between looks at the exporter's life during a host wait


# -- shared acknowledgement slots ---------------------------------------------------------
class _AckFile:
    """A file in ``/dev/shm`` of :data:`_SLOTS` 64-bit slots. The exporter writes a send's
    sequence number (odd) as *pending*; its receiver acknowledges by writing it plus one. A
    stale receiver (of an earlier send in the same slot) writes an older number, which
    acknowledges nothing."""

    def __init__(self, path: str, fd: int | None = None):
        """Map the file at ``path``: one this process made (its descriptor ``fd``), or one
        another process made (opened here)."""
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.mm = mmap.mmap(fd, _SLOTS * 8)
        finally:
            os.close(fd)
        self.path = path
        self.words = (ctypes.c_uint64 * _SLOTS).from_buffer(self.mm)


class _Export:
    """This process's record of one exported native event, for one pool life."""

    __slots__ = ("uid", "handle_bytes", "device_uuid", "pending", "pooled")

    def __init__(self, uid: int, handle_bytes: bytes, device_uuid: bytes):
        self.uid = uid
        self.handle_bytes = handle_bytes
        self.device_uuid = device_uuid
        self.pending: list[tuple[_AckFile, int, int]] = []  # (file, slot, sequence) not yet released
        self.pooled = False  # back in its pool since its last send


class _Exports:
    """The exporting side: sends, their slots, and the events closed while sends are out."""

    def __init__(self):
        self._lock = threading.Lock()
        self._files: list[_AckFile] = []
        self._free: list[tuple[_AckFile, int]] = []
        self._seq = itertools.count(1, 2)  # odd: pending; +1: released
        self._uids = itertools.count(1)
        self._by_handle: dict[int, _Export] = {}
        self._parked: list[tuple] = []  # (pool, device, flags, handle, export) closed with sends out
        self._returned: collections.deque = collections.deque()  # from finalizers, lock-free
        self.sends = 0

    def send(self, event) -> tuple:
        """One send of ``event`` (an interprocess CudaEvent with a handle): its pickled state."""
        h = event._handle
        with self._lock:
            self._take_returned()
            export = self._by_handle.get(int(h))
            handle_bytes = None
            if export is not None and export.pooled:
                # Back from the pool: the same native event, unless the pool destroyed it and
                # the driver gave its number to a new one; its interprocess handle tells.
                handle_bytes = driver.ipc_event_handle(event._device, h)
                if handle_bytes != export.handle_bytes:
                    export = None
            if export is None:
                handle_bytes = handle_bytes or driver.ipc_event_handle(event._device, h)
                export = _Export(next(self._uids), handle_bytes, driver.device_uuid(event._device))
                self._by_handle[int(h)] = export
            else:
                self._released(export)  # its released sends' slots are free again
            export.pooled = False
            if not isinstance(event._pool, _GuardedPool):
                event._pool = _GuardedPool(event._pool, self)
            if not self._free:
                self._grow()
            ack, slot = self._free.pop()
            seq = next(self._seq)
            ack.words[slot] = seq
            export.pending.append((ack, slot, seq))
            self.sends += 1
            self._settle()
        return (processes.me(), export.uid, export.handle_bytes, export.device_uuid, ack.path, slot, seq)

    def _grow(self) -> None:
        ack = _AckFile(*shm.create(f"cudaevents-ipc-{os.getpid()}-{len(self._files)}-{os.urandom(4).hex()}",
                                   _SLOTS * 8))
        self._files.append(ack)
        self._free.extend((ack, slot) for slot in range(_SLOTS - 1, -1, -1))

    def _settle(self) -> None:
        """With the lock held: free the slots of released sends, and give back the parked
        events none of whose sends is out any more."""
        still = []
        for entry in self._parked:
            pool, device, flags, handle, export = entry
            if self._released(export):
                self._to_pool(pool, device, flags, handle, export)
            else:
                still.append(entry)
        self._parked = still

    def _released(self, export: _Export) -> bool:
        out = []
        for ack, slot, seq in export.pending:
            if ack.words[slot] == seq + 1:
                self._free.append((ack, slot))
            else:
                out.append((ack, slot, seq))
        export.pending = out
        return not out

    def release(self, pool, device: int, flags: int, handle) -> None:
        """An exported event was closed: back to ``pool`` now if none of its sends is out."""
        with self._lock:
            self._take_returned()
            self._closed(pool, device, flags, handle)
            self._settle()

    def release_deferred(self, pool, device: int, flags: int, handle) -> None:
        """From a finalizer: lock-free, applied by the next send, release or :func:`stats`."""
        self._returned.append((pool, device, flags, handle))

    def _take_returned(self) -> None:
        for pool, device, flags, handle in drain(self._returned):
            self._closed(pool, device, flags, handle)

    def _closed(self, pool, device: int, flags: int, handle) -> None:
        """With the lock held: an exported event was closed; to its pool or parked."""
        export = self._by_handle.get(int(handle))
        if export is None or self._released(export):
            self._to_pool(pool, device, flags, handle, export)
        else:
            self._parked.append((pool, device, flags, handle, export))

    @staticmethod
    def _to_pool(pool, device: int, flags: int, handle, export) -> None:
        """Give the handle back. Its record stays, so that a later send of the same native
        event (the pool hands it out again) keeps the identity under which receivers cached
        their opened handle: no driver call there."""
        if export is not None:
            export.pooled = True
        pool.release(device, flags, handle)

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._take_returned()
            self._settle()
            out = sum(0 if self._released(e) else len(e.pending) for e in self._by_handle.values())
            return {"sends": self.sends, "unreleased": out, "held": len(self._parked)}

    def remove_files(self) -> None:
        """At exit: the slot files go (receivers keep what they mapped)."""
        for ack in self._files:
            try:
                os.unlink(ack.path)
            except OSError:
                pass


class _GuardedPool:
    """What an exported event gives its handle back to: its pool, through the recycling rule."""

    __slots__ = ("pool", "exports")

    def __init__(self, pool, exports: _Exports):
        self.pool = pool
        self.exports = exports

    def acquire(self, device: int, flags: int):
        return self.pool.acquire(device, flags)

    def release(self, device: int, flags: int, handle) -> None:
        self.exports.release(self.pool, device, flags, handle)

    def release_deferred(self, device: int, flags: int, handle) -> None:
        self.exports.release_deferred(self.pool, device, flags, handle)


_exports: _Exports | None = None
_exports_lock = threading.Lock()


def _get_exports() -> _Exports:
    global _exports
    if _exports is None:
        with _exports_lock:
            if _exports is None:
                _exports = _Exports()
                import atexit

                atexit.register(_exports.remove_files)
    return _exports


def send(event) -> "IpcEvent":
    """``CudaEvent.ipc_handle()``: one send of ``event``, refusing what cannot be sent."""
    if not event.interprocess:
        raise NotShareableError(
            "only an interprocess CudaEvent can be sent to another process; create it with "
            "CudaEvent(interprocess=True) (timing must stay off: CUDA cannot export timing events)"
        )
    if event._closed:
        raise ClosedError("this CudaEvent was closed; send an open one")
    if not event._recorded:
        raise NotRecordedError(
            "this CudaEvent was never recorded, and a receiver's wait on it would order nothing (CUDA "
            "takes an unrecorded event as complete); call record(stream) before sending it"
        )
    return IpcEvent(*_get_exports().send(event), sendable=True)


def stats() -> dict[str, int]:
    """This process's interprocess sends: ``sends`` made, ``unreleased`` (sends whose receiver
    has not released them yet) and ``held`` (closed exported events waiting for those)."""
    return _get_exports().stats()


# -- the receiving side -------------------------------------------------------------------
class _Opened:
    """A handle opened in this process (or, in the exporter itself, the exporter's own)."""

    __slots__ = ("handle", "device", "exporter", "owned", "__weakref__")

    def __init__(self, handle, device: int, exporter, owned: bool):
        self.handle = handle
        self.device = device
        self.exporter = exporter
        self.owned = owned

    def __del__(self):
        if self.owned and not state.exiting and not state.forked:
            handle, exporter = self.handle, self.exporter
            defer(lambda: _close_opened(handle, exporter))  # a finalizer makes no driver call


def _close_opened(handle, exporter) -> None:
    """Close an opened handle, unless its exporter has ended: the event is gone with the
    exporter's context, and CUDA may block closing what refers to it (left to the exit)."""
    if processes.alive(exporter):
        driver.event_destroy(handle)


_opened: "collections.OrderedDict[tuple, _Opened]" = collections.OrderedDict()
_opened_lock = threading.Lock()
_ack_files: dict[str, _AckFile | None] = {}
_local_devices: dict[bytes, int] = {}


def _device_index(device_uuid: bytes) -> int:
    """This process's index of the GPU with ``device_uuid``."""
    index = _local_devices.get(device_uuid)
    if index is not None:
        return index
    for i in range(driver.device_count()):
        _local_devices[driver.device_uuid(i)] = i
    index = _local_devices.get(device_uuid)
    if index is None:
        raise DeviceMismatchError(
            f"the event was exported from GPU {device_uuid.hex()}, which this process does not see "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); make that GPU "
            "visible here, or export events from a GPU both processes see"
        )
    return index


def _open(exporter, uid: int, handle_bytes: bytes, device_uuid: bytes) -> _Opened:
    key = (exporter, uid)
    with _opened_lock:
        got = _opened.get(key)
        if got is not None:
            _opened.move_to_end(key)
            return got
    if exporter == processes.me():  # sent to itself: its own handle (CUDA cannot open it here)
        exports = _get_exports()
        with exports._lock:
            native = next((h for h, e in exports._by_handle.items() if e.uid == uid), None)
        if native is None:
            raise ClosedError("this process exported the event and has since recycled it; send it again")
        got = _Opened(native, _device_index(device_uuid), exporter, owned=False)
    else:
        index = _device_index(device_uuid)
        got = _Opened(driver.ipc_open_event(index, handle_bytes), index, exporter, owned=True)
    with _opened_lock:
        _opened[key] = got
        while len(_opened) > _OPENED_MAX:
            _opened.popitem(last=False)
    return got


def _ack_file(path: str) -> _AckFile | None:
    if path not in _ack_files:
        try:
            _ack_files[path] = _AckFile(path)
        except OSError:  # the exporter has exited and removed it: nothing waits for the release
            _ack_files[path] = None
    return _ack_files[path]


def _receive(*sent) -> "IpcEvent":
    return IpcEvent(*sent, sendable=False)


class IpcEvent:
    """One send of an interprocess :class:`~cudaevents.CudaEvent` (``event.ipc_handle()``):
    pickle it once to another process, which waits for, queries or synchronizes with the
    work the exporter recorded on the event.

    Whoever holds it releases it (:meth:`release`, the end of a ``with`` block, or dropping
    it): the receiver once its waits are enqueued, the exporter for a send it did not pickle.
    A send put on a ``multiprocessing.Queue`` is pickled later, by the queue's thread: the
    exporter must not release it (pickling a released send raises ``ClosedError`` there).
    Until then the exporter keeps the event out of its pool, so the receiver's waits see the
    record they were sent for (see the module's recycling rule). A receiver opens the handle
    at its first use, once per exported event and process.

    Raises (from every use): :class:`~cudaevents.PeerError` when the exporter has ended,
    :class:`~cudaevents.ClosedError` after :meth:`release` or once pickled,
    :class:`~cudaevents.DeviceMismatchError` when this process does not see the event's GPU,
    :class:`~cudaevents.CudaUnavailableError` in a child forked after its parent used CUDA
    (send through a ``spawn`` context instead).
    """

    __slots__ = ("_exporter", "_uid", "_handle_bytes", "_device_uuid", "_path", "_slot", "_seq", "_opened",
                 "_released", "_sendable", "_pid", "__weakref__")

    def __init__(self, exporter, uid, handle_bytes, device_uuid, path, slot, seq, *, sendable: bool):
        # _sendable: True for the exporter's send until pickled, then None; False as received
        self._exporter = tuple(exporter)
        self._uid = uid
        self._handle_bytes = handle_bytes
        self._device_uuid = device_uuid
        self._path, self._slot, self._seq = path, slot, seq
        self._opened: _Opened | None = None
        self._released = False
        self._sendable = sendable
        self._pid = os.getpid()  # the process whose release counts

    @property
    def exporter_pid(self) -> int:
        """The process id of the exporter."""
        return self._exporter[0]

    @property
    def released(self) -> bool:
        """True after :meth:`release`."""
        return self._released

    def __repr__(self) -> str:
        state_ = "released" if self._released else "open"
        return f"<IpcEvent from pid {self._exporter[0]} {state_}>"

    def _use(self, what: str) -> _Opened:
        if self._released:
            raise ClosedError(
                f"{what} on an IpcEvent that was released or pickled (sent): its exporter may have "
                "recycled the event; use a new send (event.ipc_handle())"
            )
        if state.forked:
            raise CudaUnavailableError(driver.FORK_REASON)
        if not processes.alive(self._exporter):
            raise PeerError(
                f"{what}: the process that exported this event (pid {self._exporter[0]}) has ended, and the "
                "event with it; the work it stood for will not be signalled from there",
                pid=self._exporter[0],
            )
        opened = self._opened
        if opened is None:
            opened = self._opened = _open(self._exporter, self._uid, self._handle_bytes, self._device_uuid)
        return opened

    def wait(self, stream=None) -> None:
        """Make ``stream`` (anything :func:`~cudaevents.as_stream` accepts; ``None``: the legacy
        default stream of the event's device) wait on the device for the exporter's record."""
        opened = self._use("wait()")
        s = stream if type(stream) is GpuStream else as_stream(stream, opened.device if stream is None else None)
        s._call(driver.stream_wait_event, s._live(), opened.handle)

    def query(self) -> bool:
        """True when the recorded work has finished (never blocks)."""
        return self._query(self._use("query()"), "query()")

    def _query(self, opened: _Opened, what: str) -> bool:
        """``cuEventQuery`` of the opened event; a driver error because the exporter ended
        meanwhile is its :class:`~cudaevents.PeerError`."""
        try:
            return driver.event_query(opened.handle)
        except CudaError:
            self._use(what)  # raises PeerError when the exporter is gone
            raise

    def synchronize(self, timeout: float | None = None, policy=None) -> None:
        """Block the host until the recorded work has finished, checking every 50 ms that the
        exporter still runs; ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).
        It polls as ``policy`` says (a :class:`WaitPolicy` or a preset name; ``"spin"`` for
        the lowest latency, one core busy)."""
        timeout = check_timeout(timeout)
        policy = resolve_policy(policy)
        opened = self._use("synchronize()")  # held: a release() meanwhile must not close it under us

        next_look = [time.monotonic() + _LOOK_EVERY]

        def done() -> bool:
            if self._query(opened, "synchronize()"):
                return True
            now = time.monotonic()
            if now >= next_look[0]:  # the exporter may have died meanwhile
                next_look[0] = now + _LOOK_EVERY
                self._use("synchronize()")
            return False

        wait_until(done, timeout, "IpcEvent.synchronize()", policy)

    def release(self) -> None:
        """Tell the exporter this receiver is done with the send (its waits are enqueued), so
        the event may go back to the exporter's pool once closed there. Idempotent; no driver call."""
        if self._released:
            return
        self._released = True
        self._opened = None
        if self._pid != os.getpid():  # a forked child's copy: the send is its parent's to release
            return
        ack = _ack_file(self._path)
        if ack is not None:
            ack.words[self._slot] = self._seq + 1

    def __enter__(self) -> "IpcEvent":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __reduce__(self):
        if self._sendable is None:
            raise ClosedError("this IpcEvent was pickled already (one receiver per send); send a new "
                              "event.ipc_handle()")
        if not self._sendable:
            raise NotShareableError(
                "an IpcEvent goes to one receiver and cannot be sent on (the exporter counts each "
                "send); have the exporting process send event.ipc_handle() to each receiver"
            )
        if self._released:
            raise ClosedError("this IpcEvent was released; send a new event.ipc_handle()")
        self._released = True  # the receiver's copy releases the send now, not this one
        self._sendable = None  # sent
        return (_receive, (self._exporter, self._uid, self._handle_bytes, self._device_uuid, self._path,
                           self._slot, self._seq))

    def __del__(self):
        try:
            self.release()
        except Exception:  # a finalizer must not raise
            pass


def _after_fork_in_child() -> None:
    global _exports
    _exports = None  # the parent's sends are the parent's
    _opened.clear()
    _ack_files.clear()


after_fork_in_child(_after_fork_in_child)
