"""Where a counter event's value lives and how streams reach it: one class per backend.

- ``mem64`` / ``mem32``: an 8-byte slot of pinned, device-mapped host memory, carved from a
  shared slab and recycled. GPU streams store with ``cuStreamWriteValue64/32`` and wait with
  ``cuStreamWaitValue64/32`` (GEQ): no kernel spins on an SM. The host reads and stores the
  slot directly.
- ``hostfn``: for devices without stream memory operations. A GPU signal records a pooled
  CUDA event; a GPU wait for a value an earlier GPU signal promised waits on that event,
  otherwise it enqueues libc's ``sem_wait`` with ``cuLaunchHostFunc``, which the host store
  reaching the value releases with ``sem_post``. No Python ever runs in the driver's
  callback thread.
- ``host``: a plain integer, for machines without a GPU; only host and CPU streams.

Counters shared by processes keep their value in a page of shared memory instead
(:mod:`.shared_storage`); every cell says which it is (``shared``).

Cells are not thread-safe on their own: the owning AtomicEvent holds its lock around them.

In a child forked after its parent initialized CUDA, the GPU cells it inherited (``mem64``,
``mem32``, ``hostfn``) refuse every read, store and stream operation with
:class:`CudaUnavailableError` (their slots are the parent's pinned memory, possibly still
shared with it, possibly unmapped), and releasing or retiring them does nothing; the slab is
forgotten, so a new GPU cell there needs the driver and is refused too. Host cells work.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import sys
import threading
import weakref

from .._core import compiled, driver, env
from .._core.errors import CudaUnavailableError
from .._core.lifetime import Quarantine, after_fork_in_child, drain, state

__all__ = ["ATOMIC_BACKENDS", "HostCell", "MemCell", "HostFnCell", "choose_backend", "slab_stats"]

ATOMIC_BACKENDS = ("mem64", "mem32", "hostfn", "host")


_quarantine = Quarantine()


def reclaim() -> None:
    """Give back what quarantined counters no GPU work can touch any more (their slots,
    semaphores and fence events); cheap when nothing is quarantined."""
    if len(_quarantine):
        _quarantine.reclaim()


class _Slab:
    """Recycled 8-byte slots of pinned, device-mapped host memory, allocated 4 KiB at a time.

    :meth:`release` takes no lock (one deque append), so a finalizer may call it, also in a
    thread inside :meth:`acquire` (the garbage collector may run finalizers there): the slots
    it returns wait in a pending list that :meth:`acquire` and :meth:`stats` take in under the
    lock, so they are reused and counted exactly. ``in_use`` counts them until then."""

    CHUNK = 4096

    def __init__(self):
        self._lock = threading.Lock()
        self._free: list[tuple[int, int]] = []
        self._chunks: list[int] = []
        self._returned: collections.deque = collections.deque()  # from release(), not yet free
        self.in_use = 0

    def acquire(self) -> tuple[int, int]:
        if not self._free and not self._returned and len(_quarantine):
            _quarantine.reclaim()
        with self._lock:
            if self._returned:
                self._take_returned()
            if not self._free:
                host, dev = driver.mem_host_alloc(self.CHUNK, mapped=True)
                self._chunks.append(host)
                self._free.extend((host + off, dev + off) for off in range(self.CHUNK - 8, -8, -8))
            self.in_use += 1
            return self._free.pop()

    def release(self, slot: tuple[int, int]) -> None:
        """Give ``slot`` back; lock-free, safe from finalizers (see the class)."""
        self._returned.append(slot)

    def _take_returned(self) -> None:
        """With the lock held: the slots :meth:`release` returned become free."""
        for slot in drain(self._returned):
            self._free.append(slot)
            self.in_use -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            if self._returned:
                self._take_returned()
            total = len(self._chunks) * (self.CHUNK // 8)
            return {"bytes": len(self._chunks) * self.CHUNK, "slots": total, "in_use": self.in_use,
                    "free": len(self._free), "quarantined": len(_quarantine)}


_slab: _Slab | None = None
_slab_lock = threading.Lock()


def _get_slab() -> _Slab:
    global _slab
    if _slab is None:
        with _slab_lock:
            if _slab is None:
                _slab = _Slab()
    return _slab


def slab_stats() -> dict[str, int]:
    """Pinned memory behind the mem64/mem32 counters: bytes, slots, in use, free, quarantined."""
    return _get_slab().stats()


class HostCell:
    """A counter value in a Python int: host and CPU streams only."""

    name = "host"
    limit = 1 << 63
    gpu = False
    shared = False
    releases_in_stream_order = False

    def __init__(self, device: int):
        self._value = 0

    def read(self) -> int:
        return self._value

    def store(self, value: int) -> None:
        self._value = value

    def retire(self, fences: list | None) -> None:
        pass


def _word(address: int, bits: int):
    """The counter word at ``address`` as an object whose ``value`` reads and writes it
    (ctypes here; the compiled path's ``Word`` loads with acquire and stores with release
    ordering, which the GPU's stream memory operations pair with)."""
    return (ctypes.c_uint64 if bits == 64 else ctypes.c_uint32).from_address(address)


compiled.register(sys.modules[__name__], ("_word",), lambda hot, module, python: {"_word": hot.Word})


class MemCell:
    """A counter value in a slab slot, reached by GPU stream memory operations."""

    gpu = True
    shared = False
    releases_in_stream_order = True  # gpu_signal(limit - 1) lets every GPU wait go, in stream order

    def __init__(self, device: int, bits: int):
        self.name = f"mem{bits}"
        self._bits = bits
        # GEQ waits compare cyclically ((int)(*addr - value) >= 0), so values stay below half
        # the word's range; limit - 1 then satisfies every wait (release_waiters).
        self.limit = 1 << (63 if bits == 64 else 31)
        self._slot = _get_slab().acquire()
        host, self._dev = self._slot
        self._word = _word(host, bits)
        self._word.value = 0
        _gpu_cells.add(self)

    def read(self) -> int:
        return self._word.value

    def store(self, value: int) -> None:
        self._word.value = value

    def spinner(self, value: int):
        """``spin(seconds)`` that busy-reads the word in C (GIL released) until it reaches
        ``value``, for the spinning phase of host waits; ``None`` without the compiled path."""
        spin = getattr(self._word, "spin", None)
        return None if spin is None else functools.partial(spin, value)

    def gpu_signal(self, stream, value: int) -> None:
        driver.stream_write_value(stream, self._dev, value, self._bits)

    def gpu_wait(self, stream, value: int) -> None:
        driver.stream_wait_value(stream, self._dev, value, self._bits)

    def release_waiters(self) -> None:
        """Let every GPU wait on this cell pass (used when the event fails or closes)."""
        self._word.value = self.limit - 1

    def retire(self, fences: list | None) -> None:
        """Give the slot back once ``fences`` complete; ``None``: GPU work on it cannot be
        fenced (a stream was destroyed), so the slot is never reused."""
        if fences is not None:
            slot, slab = self._slot, _get_slab()
            _quarantine.add(fences, lambda: slab.release(slot))


class _Libc:
    """libc's semaphore functions: ``sem_wait``'s address for host functions, the rest for
    the host."""

    def __init__(self):
        lib = ctypes.CDLL(None, use_errno=True)
        self.sem_init = lib.sem_init
        self.sem_init.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint)
        self.sem_post = lib.sem_post
        self.sem_post.argtypes = (ctypes.c_void_p,)
        self.wait_address = ctypes.cast(lib.sem_wait, ctypes.c_void_p).value

    def new_semaphore(self):
        sem = ctypes.create_string_buffer(64)  # sem_t is 32 bytes on x86-64 glibc
        if self.sem_init(sem, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "sem_init failed")
        return sem


_libc: _Libc | None = None


class HostFnCell:
    """A counter value on the host, for devices without stream memory operations.

    A GPU signal records a pooled CUDA event; the host folds completed events into the value.
    A GPU wait for a value an earlier GPU signal promised waits on that signal's event; for
    any other value it enqueues libc's ``sem_wait`` as a host function, released by the host
    store that reaches the value. Such a wait occupies the driver's host-function thread
    until then, so only the host (or a CpuStream) may release it: a later GPU signal for it
    is refused, since it could need that very thread. Its events are HeldEvents: the
    counter's close() still uses them when the collector frees counter and cell together.
    """

    name = "hostfn"
    limit = 1 << 63
    gpu = True
    shared = False
    releases_in_stream_order = False  # only the host releases its waits (release_waiters)

    def __init__(self, device: int):
        global _libc
        if _libc is None:
            _libc = _Libc()
        self._libc = _libc
        self._device = device
        self._value = 0
        self._pending: list[tuple[int, object]] = []  # GPU signals in flight: (value, event)
        self._waiters: list[tuple[int, object]] = []  # blocked GPU waits: (target, semaphore)
        self._keep: list[tuple[object, object]] = []  # (semaphore, event after its host function)
        self._released = False  # release_waiters() ran: every GPU wait passes from then on
        self._lock = threading.Lock()  # read() runs from host waiters without the event's lock
        _gpu_cells.add(self)

    def read(self) -> int:
        with self._lock:
            if self._pending:
                keep = []
                for value, ev in self._pending:
                    if ev.query():
                        if value > self._value:
                            self._value = value
                        ev.close()
                    else:
                        keep.append((value, ev))
                self._pending = keep
            return self._value

    def store(self, value: int) -> None:
        with self._lock:
            self._value = value
            self._post_waiters(value)

    def _post_waiters(self, value: int) -> None:
        still = []
        for target, sem in self._waiters:
            if target <= value:
                self._libc.sem_post(sem)
            else:
                still.append((target, sem))
        self._waiters = still
        if len(self._keep) > 64:  # drop semaphores whose host functions have surely returned
            still = []
            for sem, ev in self._keep:
                if ev.query():
                    ev.close()
                else:
                    still.append((sem, ev))
            self._keep = still

    def _stream(self, stream):
        # A GpuStream for the raw handle the counter passes (older cuda-bindings' CUstream has
        # no __cuda_stream__, so the handle alone would not say its device).
        from .._core.streams import GpuStream

        return GpuStream._borrow(int(stream), self._device, None)

    def gpu_signal(self, stream, value: int) -> None:
        from .._core.cuda_event import HeldEvent

        with self._lock:
            if any(target <= value for target, _ in self._waiters):
                raise RuntimeError(
                    "the hostfn counter backend cannot release a GPU wait with a later GPU signal: that "
                    "wait holds the driver's host-function thread until the host signals. Signal that "
                    "value from the host or a CpuStream, or use the mem64/mem32 backend"
                )
        ev = HeldEvent(self._device).record(self._stream(stream))
        with self._lock:
            self._pending.append((value, ev))

    def gpu_wait(self, stream, value: int) -> None:
        from .._core.cuda_event import HeldEvent

        s = self._stream(stream)
        sem = self._libc.new_semaphore()  # made outside the lock, used only if no signal covers the wait
        with self._lock:  # held so that read() cannot close the event under us
            if self._value >= value or self._released:  # reached (a host read may have folded the
                return  # signal in already), or let go by close(), which a wait enqueued after it sees here
            covering = next((ev for promised, ev in self._pending if promised >= value), None)
            if covering is not None:
                covering.wait(s)
                return
            # registered before the launch: a store meanwhile posts it, and sem_wait returns at once
            self._waiters.append((value, sem))
        try:
            driver.launch_host_func(stream, self._libc.wait_address, ctypes.addressof(sem))
        except BaseException:
            with self._lock:
                if (value, sem) in self._waiters:
                    self._waiters.remove((value, sem))
            raise
        after = HeldEvent(self._device).record(s)
        with self._lock:
            self._keep.append((sem, after))

    def release_waiters(self) -> None:
        with self._lock:
            self._released = True
            self._post_waiters(self.limit)

    def retire(self, fences: list | None) -> None:
        self.release_waiters()
        with self._lock:
            keep, self._keep = self._keep, []
            pending, self._pending = self._pending, []
        for _, ev in pending:
            ev.close()
        # the semaphores must outlive the host functions that wait on them
        _quarantine.add([ev for _, ev in keep] + list(fences or ()), keep.clear)


# -- fork: a child must never touch the parent's counters ----------------------------------
_gpu_cells: weakref.WeakSet = weakref.WeakSet()  # live MemCells and HostFnCells
_inherited: list = []  # what a forked child keeps from its parent, untouched, until it exits


def _do_nothing(*args, **kwargs) -> None:
    return None


@after_fork_in_child
def _after_fork_in_child() -> None:
    """Runs in the child of every ``fork()``, after the driver's hook.

    Locks get fresh objects (a thread of the parent may have held one). In a child of a
    CUDA-initialized parent, every GPU cell is disowned: its methods are replaced, on the
    instance, by ones that raise :class:`CudaUnavailableError` (reads, stores, stream
    operations) or do nothing (releasing waiters, retiring), so the child never writes into
    the parent's pinned counters nor hands their slots out again; the slab is dropped. The
    quarantine's entries (the parent's fences) are set aside, not dropped: dropping them here
    would run finalizers inside the fork handler.
    """
    global _slab, _slab_lock
    _slab_lock = threading.Lock()
    if not state.forked:
        _quarantine._lock = threading.Lock()
        if _slab is not None:  # made by slab_stats(); without CUDA it holds no memory
            _slab._lock = threading.Lock()
        return  # the parent never initialized CUDA: it had no GPU cells
    _inherited.append((_slab, _quarantine.disown()))
    _slab = None  # a new slab allocates through the driver, which refuses
    for cell in list(_gpu_cells):
        cell.read = cell.store = cell.gpu_signal = cell.gpu_wait = driver.refuse_forked
        cell.release_waiters = cell.retire = _do_nothing
        if isinstance(cell, MemCell):
            cell._word = None  # the parent's pinned memory: no way to reach it from here


def choose_backend(device: int | None) -> str:
    """The backend for a counter on ``device``: forced by ``CUDAEVENTS_ATOMIC_BACKEND`` or
    picked from the device's capabilities (``host`` where there is no GPU)."""
    forced = env.atomic_backend(ATOMIC_BACKENDS)
    if device is None:
        if forced not in (None, "host"):
            raise CudaUnavailableError(
                f"CUDAEVENTS_ATOMIC_BACKEND={forced} needs a GPU, but none is usable here; unset it or use 'host'"
            )
        return "host"
    from .._core.devices import Device

    caps = Device(device).capabilities
    usable = {
        "mem64": caps.stream_mem_ops_64 and caps.can_map_host_memory,
        "mem32": caps.stream_mem_ops_32 and caps.can_map_host_memory,
        "hostfn": True,
        "host": True,
    }
    if forced is not None:
        if not usable[forced]:
            raise ValueError(
                f"CUDAEVENTS_ATOMIC_BACKEND={forced} is not supported by device {device}; "
                "unset it to let cudaevents choose"
            )
        return forced
    return next(name for name in ATOMIC_BACKENDS if usable[name])


def make_cell(backend: str, device: int):
    """A new cell of ``backend`` for ``device``."""
    if backend == "mem64":
        return MemCell(device, 64)
    if backend == "mem32":
        return MemCell(device, 32)
    if backend == "hostfn":
        return HostFnCell(device)
    return HostCell(device)
