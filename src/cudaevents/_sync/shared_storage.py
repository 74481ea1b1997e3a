"""Shared counters: a counter's value in a page of shared memory that several processes map.

One page per counter, in a file under ``/dev/shm`` (the temporary folder where that is
missing), made with its space reserved (:func:`cudaevents._core.shm.create`) and mapped with ``mmap`` in every process that
uses the counter. ``multiprocessing.shared_memory`` is not used: before Python 3.13 its
resource tracker unlinks a segment that a process other than its creator attached to when
that process exits. The page holds (:class:`_Page`):

- the value word (64 bits; the low 32 on mem32), which host stores write with release and
  host reads read with acquire ordering, and GPU streams reach with stream memory operations
  through this process's registration of the page (``cuMemHostRegister``, portable and
  mapped);
- the highest value a signal of any process promised, and which process promised it;
- the break: who died or failed the counter, how, the value then, and the failure's text;
- the creator, whether it closed the counter, and the table of attached processes.

Bookkeeping (promises, the table, the break) happens under :meth:`SharedCell.locked`: this
process's lock around ``fcntl.flock`` on the file (the kernel lets go of it when a holder
dies), held for a few loads and stores, never across a driver call.

A process is attached from creating or receiving (unpickling) the counter until it closes it
or exits (an ``atexit`` hook detaches it, and the creator unlinks the file). An attached
process that is gone otherwise (killed, crashed, ``os._exit``) died: whoever sees it first
breaks the page, and stores the release value so every GPU wait on it passes. Host waits look
every 50 ms (the counter's failure probe); a watcher thread per process, while shared cells
exist, looks every 0.2 s so that GPU waits are let go with no host wait running. Neither calls
the driver.

A forked child maps the page afresh through its own descriptor (its own lock, not the
parent's); it is not attached (its end is not watched), and where the parent had initialized
CUDA its GPU stream operations are refused as for every counter (before anything is decided:
a refused enqueue must not fail the counter for the other processes).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import secrets
import threading
import time
import weakref

from .._core import driver, processes, shm
from .._core.errors import CreatorClosedError, NotShareableError, PeerError
from .._core.lifetime import after_fork_in_child, state
from . import counter_storage

__all__ = ["SharedCell", "create", "attach", "SHAREABLE_BACKENDS"]

SHAREABLE_BACKENDS = ("mem64", "mem32", "host")
PAGE = mmap.PAGESIZE
SLOTS = 128  # attached processes at most
_MAGIC = int.from_bytes(b"cudaevS1", "little")
_DIED, _FAILED = 1, 2  # the break's kind
WATCH_EVERY = 0.2  # seconds between the watcher's looks

_log = logging.getLogger("cudaevents")

_Identity = ctypes.c_uint64 * 2  # (pid, start time); pid 0: nobody


class _Page(ctypes.Structure):
    _fields_ = [
        ("value", ctypes.c_uint64),
        ("magic", ctypes.c_uint64),
        ("bits", ctypes.c_uint64),
        ("promised", ctypes.c_uint64),
        ("promiser", _Identity),
        ("broken", ctypes.c_uint64),  # 0, _DIED or _FAILED; written last, read lock-free
        ("broken_by", _Identity),
        ("broken_value", ctypes.c_uint64),
        ("creator", _Identity),
        ("creator_closed", ctypes.c_uint64),
        ("attached", _Identity * SLOTS),
        ("reason", ctypes.c_char * 512),
    ]


assert ctypes.sizeof(_Page) <= PAGE


def _ident(slot) -> tuple:
    return (slot[0], slot[1])


def _set(slot, identity: tuple) -> None:
    slot[1] = identity[1]
    slot[0] = identity[0]


class SharedCell:
    """A counter value in a shared page (see the module docstring); the cell API of
    :mod:`counter_storage` plus the bookkeeping that the owning AtomicEvent does across
    processes. ``gpu`` says whether this process's GPU streams can reach it (its device is
    here and the page is registered)."""

    shared = True

    def __init__(self, path: str, fd: int, name: str, uuid: bytes | None):
        self.name = name
        self.path = path
        self.uuid = uuid  # the GPU the counter belongs to, the same in every process; None: host only
        self._bits = 32 if name == "mem32" else 64
        self.limit = 1 << (31 if self._bits == 32 else 63)
        self.gpu = False
        self.releases_in_stream_order = False
        self._dev = None
        self._fd = fd
        self._lock = threading.Lock()  # this process's threads, around the file lock
        self._peer_error = None
        self._detached = False
        self._mine = 0  # the highest value this process promised on the page
        self._map()
        _cells.add(self)

    def _map(self) -> None:
        self._mm = mmap.mmap(self._fd, PAGE)
        self._page = _Page.from_buffer(self._mm)
        address = ctypes.addressof(self._page)
        self._word = counter_storage._word(address, self._bits)
        self._broken = counter_storage._word(address + _Page.broken.offset, 64)

    def _register(self, device: int) -> None:
        """Make the page reachable by ``device``'s streams. The mapping is never unmapped
        nor unregistered (``cuMemHostUnregister`` could wait for GPU work the host holds
        back): one page per shared GPU counter a process used, as the slab's chunks are."""
        self._dev = driver.mem_host_register(device, ctypes.addressof(self._page), PAGE)
        _registered.append(self._mm)
        self.gpu = self.releases_in_stream_order = True

    # -- the counter cell API ---------------------------------------------------------------
    def read(self) -> int:
        return self._word.value

    def store(self, value: int) -> None:
        self._word.value = value

    def spinner(self, value: int):
        """As :meth:`MemCell.spinner <cudaevents._sync.counter_storage.MemCell.spinner>`."""
        spin = getattr(self._word, "spin", None)
        return None if spin is None else lambda seconds: spin(value, seconds)

    def gpu_signal(self, stream, value: int) -> None:
        driver.stream_write_value(stream, self._dev, value, self._bits)

    def gpu_wait(self, stream, value: int) -> None:
        driver.stream_wait_value(stream, self._dev, value, self._bits)

    def release_waiters(self) -> None:
        """Let every GPU wait on the page pass, in every process: only when nobody else is
        left to signal, or with the page broken."""
        self._word.value = self.limit - 1

    def retire(self, fences: list | None) -> None:
        """This process is done with the counter: it detaches. The page is never reused, so
        the fences only go back (through the quarantine) once they completed."""
        self.detach()
        if fences:
            counter_storage._quarantine.add(fences, _nothing)

    # -- bookkeeping across processes -------------------------------------------------------
    def locked(self) -> "_Locked":
        """The page, with this process's lock and the file lock held (a context manager)."""
        return _Locked(self)

    def claiming(self, value: int, host: bool) -> "_Claim":
        """With the page locked: a signal of ``value`` about to be given. Yields the value
        another process promised and has not reached yet (this signal must come after it),
        or ``None``; when the block ends without an exception, ``value`` is the page's
        promise, by this process.

        Raises:
            PeerError: the page is broken (the signal changes nothing).
            ValueError: ``value`` is below a value promised already; or ``host`` and another
                process's promise has not landed (the host store now would be overwritten).
        """
        return _Claim(self, value, host)

    def promised_elsewhere(self, value: int) -> bool:
        """Whether another process has promised ``value`` or more (read without the lock)."""
        page = self._page
        return page.promised >= value and _ident(page.promiser) != processes.me()

    def promised(self) -> int:
        """The highest value any process promised."""
        return self._page.promised

    def peer_error(self) -> PeerError | None:
        """The :class:`PeerError` of a broken page, ``None`` while it is whole (lock-free)."""
        if not self._broken.value:
            return None
        if self._peer_error is None:
            page = self._page
            pid, value = page.broken_by[0], page.broken_value
            if page.broken == _DIED:
                msg = (f"process {pid}, which shared this AtomicEvent, ended without closing it (killed or crashed), "
                       f"so the values it would have signalled may never come; waits for values above {value} raise "
                       f"this error. Find why process {pid} ended, close shared counters before a process exits, and "
                       "use a new shared AtomicEvent (this one stays broken)")
            else:
                reason = page.reason.decode(errors="replace")
                msg = (f"process {pid}, which shares this AtomicEvent, failed it ({reason}); waits for values above "
                       f"{value} raise this error. Fix that process's error and use a new shared AtomicEvent "
                       "(this one stays broken)")
            self._peer_error = PeerError(msg, pid, page.broken == _DIED, value)
        return self._peer_error

    def settled(self) -> int:
        """The value now, or the value at the break of a broken page (the word then holds the
        release value)."""
        value = self._word.value
        err = self.peer_error()
        return value if err is None else min(value, err.value)

    def fail(self, error: BaseException) -> None:
        """This process failed the counter with ``error``: break the page (unless broken
        already) so that every process's waits raise, and let every GPU wait go."""
        if isinstance(error, PeerError):
            self.release_waiters()
            return
        with self.locked() as page:
            self._break(page, _FAILED, processes.me(), f"{type(error).__name__}: {error}")

    def _break(self, page, kind: int, by: tuple, reason: str = "") -> None:
        """With the page locked: break it (the first break stays) and release its waiters."""
        if not page.broken:
            page.broken_value = self._word.value
            _set(page.broken_by, by)
            page.reason = reason.encode(errors="replace")[:511]
            self._broken.value = kind  # release store: whoever sees it sees the fields above
        self.release_waiters()

    def check_peers(self) -> PeerError | None:
        """Whether an attached process has ended without detaching; the first one seen
        breaks the page (and, were it the creator, the file is unlinked: nobody can attach
        any more). Returns the page's :class:`PeerError`, or ``None``."""
        if not self._broken.value:
            me = processes.me()
            with self.locked() as page:
                for slot in page.attached:
                    ident = _ident(slot)
                    if ident[0] and ident != me and not processes.alive(ident):
                        self._break(page, _DIED, ident)
                        if _ident(page.creator) == ident:
                            self._seal(page)
                        break
        return self.peer_error()

    def watch(self) -> None:
        """One look of the watcher: deaths, and a broken page kept released (a GPU signal
        enqueued before the break may land after it and lower the word again)."""
        if self._detached:
            return
        if self.check_peers() is not None and self._word.value < self.limit - 1:
            self.release_waiters()

    def join(self) -> None:
        """Attach this process (raises :class:`CreatorClosedError` after the creator closed)."""
        me = processes.me()
        with self.locked() as page:
            if page.creator_closed:
                raise _creator_closed(self.path)
            free = next((slot for slot in page.attached if not slot[0]), None)
            if free is None:
                raise RuntimeError(f"more than {SLOTS} processes attached to one shared AtomicEvent; "
                                   "close it in processes that are done with it")
            _set(free, me)

    def detach(self) -> None:
        """Take this process out of the table (idempotent): from then on its end is no death."""
        if self._detached:
            return
        self._detached = True
        me = processes.me()
        with self.locked() as page:
            for slot in page.attached:
                if _ident(slot) == me:
                    _set(slot, (0, 0))
                    return

    def last_attached(self) -> bool:
        """Whether no other process is attached (then nobody else will signal)."""
        me = processes.me()
        with self.locked() as page:
            return not any(slot[0] and _ident(slot) != me for slot in page.attached)

    def close(self) -> None:
        """This process closes the counter: its creator unlinks the file, after which no
        process can receive it (those attached keep their mapping)."""
        with self.locked() as page:
            if _ident(page.creator) == processes.me():
                self._seal(page)

    def _seal(self, page) -> None:
        if not page.creator_closed:
            page.creator_closed = 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def leave_at_exit(self) -> None:
        """At interpreter exit: close and detach, unless this process promised a value that
        has not landed (then it stays attached, and counts as dead once gone: the value may
        never come), also when another process promised a later one since."""
        with self.locked() as page:
            if _ident(page.creator) == processes.me():
                self._seal(page)
            if self._word.value < self._mine and not page.broken:
                return
        self.detach()

    def after_fork(self) -> None:
        """In a forked child: a descriptor of its own (the inherited one shares the parent's
        file lock) and a fresh mapping; the parent's, possibly unmapped in the child where
        CUDA registered it, stays untouched."""
        self._lock = threading.Lock()
        _inherited.append((self._mm, self._page))
        try:
            fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)  # unlinked or not
        except OSError:
            self.read = self.store = self.gpu_signal = self.gpu_wait = _refuse_unmapped
            return
        os.close(self._fd)
        self._fd = fd
        self._map()
        self._detached = True  # not attached: its end is not watched
        self._mine = 0  # the parent's promises are the parent's

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Locked:
    """:meth:`SharedCell.locked`'s context (a class, not a generator: it is on every signal
    of a shared counter)."""

    __slots__ = ("cell",)

    def __init__(self, cell: SharedCell):
        self.cell = cell

    def __enter__(self):
        cell = self.cell
        cell._lock.acquire()
        try:
            _flock(cell._fd, True)
        except BaseException:
            cell._lock.release()
            raise
        return cell._page

    def __exit__(self, *exc) -> None:
        cell = self.cell
        try:
            _flock(cell._fd, False)
        finally:
            cell._lock.release()


class _Claim(_Locked):
    """:meth:`SharedCell.claiming`'s context."""

    __slots__ = ("value", "host", "me")

    def __init__(self, cell: SharedCell, value: int, host: bool):
        self.cell, self.value, self.host = cell, value, host

    def __enter__(self):
        page = super().__enter__()
        try:
            cell, value = self.cell, self.value
            self.me = me = processes.me()
            if page.broken:
                raise cell.peer_error()
            promised, by = page.promised, _ident(page.promiser)
            if value < promised:
                raise ValueError(
                    f"signal({value}) is below {promised}, the value already signalled (by process {by[0]}): "
                    f"counter values never decrease, also across processes; signal a value >= {promised}"
                )
            other = promised if by != me and cell._word.value < promised else None
            if self.host and other is not None:
                raise ValueError(
                    f"process {by[0]}'s signal of {promised} has not happened yet, and a host signal of {value} now "
                    f"would be overwritten by it; wait({promised}) first or signal on a stream"
                )
        except BaseException:
            super().__exit__()
            raise
        return other

    def __exit__(self, typ, *exc) -> None:
        try:
            if typ is None:
                cell = self.cell
                cell._page.promised = cell._mine = self.value
                _set(cell._page.promiser, self.me)
        finally:
            super().__exit__()


def _flock(fd: int, take: bool) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX if take else fcntl.LOCK_UN)


def _nothing() -> None:
    return None


def _refuse_unmapped(*args, **kwargs):
    raise OSError("this shared AtomicEvent could not be mapped again in this forked child (no /proc): "
                  "receive it through multiprocessing with the 'spawn' start method")


def _creator_closed(path: str) -> CreatorClosedError:
    return CreatorClosedError(
        f"the shared AtomicEvent {path} was closed in the process that created it, or that process ended, so "
        "it can no longer be received: send it to other processes while its creator still has it open, or "
        "create a new shared AtomicEvent"
    )


def create(backend: str, device: int | None) -> SharedCell:
    """A new shared page for a counter of ``backend`` on ``device`` (``None``, or the host
    backend: host only), with this process as its creator, attached."""
    if backend == "host":
        device = None
    if backend not in SHAREABLE_BACKENDS:
        raise NotShareableError(
            f"the {backend} counter backend cannot be shared between processes (its GPU signals are CUDA events "
            f"and its GPU waits semaphores of one process); shared counters use {', '.join(SHAREABLE_BACKENDS)}: "
            "a device with stream memory operations, or host and CPU streams only (no GPU, or "
            "CUDAEVENTS_ATOMIC_BACKEND=host)"
        )
    path, fd = shm.create(f"cudaevents-{os.getpid()}-{secrets.token_hex(8)}", PAGE)
    try:
        cell = SharedCell(path, fd, backend, None if device is None else driver.device_uuid(device))
        page = cell._page
        page.magic = _MAGIC
        page.bits = cell._bits
        _set(page.creator, processes.me())
        if device is not None:
            cell._register(device)
        cell.join()
    except BaseException:
        os.unlink(path)
        raise
    _watch_from_now()
    return cell


def attach(path: str, backend: str, uuid: bytes | None) -> tuple[SharedCell, int | None]:
    """The page another process shared: ``(cell, device)``, where ``device`` is this
    process's ordinal of the counter's GPU, or ``None`` when it has none here (then host and
    CPU streams only)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _creator_closed(path) from None
    cell = SharedCell(path, fd, backend, uuid)
    if cell._page.magic != _MAGIC or cell._page.bits != cell._bits:
        raise ValueError(f"{path} is not the page of a shared {backend} AtomicEvent as this cudaevents makes them: "
                         "run the same cudaevents version in every process that shares it")
    device = None if uuid is None else _device_with_uuid(uuid)
    if device is not None:
        cell._register(device)
    cell.join()
    _watch_from_now()
    return cell, device


def _device_with_uuid(uuid: bytes) -> int | None:
    """This process's ordinal of the GPU ``uuid``, or ``None`` (no driver, or not visible)."""
    if not driver.is_usable():
        return None
    return next((i for i in range(driver.device_count()) if driver.device_uuid(i) == uuid), None)


# -- the watcher, exit, fork ---------------------------------------------------------------
_cells: weakref.WeakSet = weakref.WeakSet()  # this process's shared cells
_registered: list = []  # mappings registered with the driver: kept for good
_inherited: list = []  # a forked child's parent mappings, untouched
_watch_lock = threading.Lock()
_watcher: threading.Thread | None = None


def _watch_from_now() -> None:
    """Start the watcher thread unless it runs."""
    global _watcher
    with _watch_lock:
        if _watcher is None:
            _watcher = threading.Thread(target=_watch, name="cudaevents-peers", daemon=True)
            _watcher.start()


def _watch() -> None:
    """Every 0.2 s, each shared cell of this process looks at its peers (no driver call: a
    break lets GPU waits go with a host store); ends once there are none (the next one
    starts it again) or at interpreter exit."""
    global _watcher
    while not state.exiting:
        time.sleep(WATCH_EVERY)
        with _watch_lock:
            cells = list(_cells)
            if not cells:
                _watcher = None
                return
        for cell in cells:
            try:
                cell.watch()
            except Exception:  # reported, never raised: the next look tries again
                if not state.exiting:
                    _log.exception("looking at the processes sharing an AtomicEvent failed")
        cells = None


@atexit.register
def _leave_all() -> None:
    for cell in list(_cells):
        with contextlib.suppress(Exception):
            cell.leave_at_exit()


@after_fork_in_child
def _after_fork_in_child() -> None:
    """In the child of a fork: fresh locks, the watcher gone (a new shared counter starts
    one), every inherited page mapped again through a descriptor of the child's own."""
    global _watch_lock, _watcher
    _watch_lock = threading.Lock()
    _watcher = None
    for cell in list(_cells):
        cell.after_fork()
