"""The simulated CUDA driver: a stand-in for ``cuda.bindings.driver`` for tests without a GPU.

cudaevents reaches the driver only through ``cudaevents._core.driver``, whose wrappers call
the module bound there (``driver._d``). A test binds a :class:`FakeDriver` with :func:`bind`
(the ``fake_driver`` fixture of tests/conftest.py does), undone at the end of the test; a
script in a subprocess binds one for good with :func:`install`.

The simulated GPU:

- ``devices`` devices (1 unless told), each with a primary context; every attribute is 1, so
  every capability is there (stream memory operations, mapped host memory, ...).
- Streams and events are numbered handles. A record puts the event in its stream's queue,
  pending; :meth:`FakeDriver.run` completes a stream's queue up to now (or its first
  ``events``), stamping each event with a clock that advances 1 ms per event. With
  ``keeps_up=True`` (a GPU that keeps up) every record completes at once.
- ``cuEventQuery`` succeeds for a completed event and for one never recorded, and is
  NOT_READY for a pending one; ``cuEventElapsedTime`` is NOT_READY unless both events have
  completed (each such read is counted in ``early_reads``). ``cuStreamQuery`` is NOT_READY
  while the stream has pending work (:meth:`FakeDriver.enqueue_work` adds some).
- ``cuEventSynchronize`` waits until the event has completed and no
  :meth:`FakeDriver.hold_host_waits` holds it; ``cuStreamSynchronize`` until the stream's
  work has completed. Both give up after 60 s, so a test that forgot to run the GPU fails on
  its own timeout instead of hanging.
- Device memory (``cuMemAlloc``) is addresses only: memsets on it do nothing.
- Host memory registration (``cuMemHostRegister``) maps a range as it is: its device address
  is its host address (``registered`` lists the ranges). Device ``i``'s UUID is 16 bytes of
  ``i + 1`` unless ``uuids`` says otherwise.
- Pinned host memory comes from a shared anonymous mapping (MAP_SHARED), so a forked child's
  store into it would show in the parent, as it can with real pinned memory; its device
  address is its host address. Stream memory operations take effect at once: a write stores
  the value, a wait passes. With ``stream_order=True`` a write waits in its stream's queue
  like a record and stores when :meth:`FakeDriver.run` gets there. ``value_waits`` lists
  every memory wait as ``(stream, address, value)``, in call order.
- Copies (``cuMemcpyHtoDAsync``, ``cuMemcpyDtoHAsync``) move bytes: device memory from
  ``cuMemAlloc`` gets storage once a copy touches it. A copy waits in its stream's order
  behind the memory waits enqueued there before it that its words have not reached yet
  (those waits gate copies only: records, stream writes and queries see them pass, as
  above), and lands once a query or synchronize of the stream finds them reached; the
  stream is NOT_READY while a copy waits. A copy whose two ends are host memory (pinned or
  registered) is synchronous with respect to the host, as the real driver documents ("API
  synchronization behavior"): it blocks the calling thread until those waits are reached,
  and raises ``AssertionError`` after ``HOST_COPY_LIMIT`` seconds (a real GPU would keep
  the thread blocked: a deadlock when that thread is the one to give the value).
- With ``reuse_streams=True`` a new stream gets the handle of the last one destroyed, as the
  real driver does most of the time. ``cuStreamGetDevice`` says device 0 for any handle.
- :meth:`FakeDriver.fail` makes an entry point fail with an error code from then on.
- ``cuGetProcAddress`` gives C-callable addresses (ctypes callbacks into this simulation) of
  the entry points the compiled hot path calls, so that path runs against the simulated GPU
  as it would against the driver; ``no_entry_points=True`` makes it give none (a driver the
  compiled path cannot use).
- ``calls`` counts the calls of each entry point; ``child_calls`` lists those made in another
  process than the one that made the fake (a forked child), where cudaevents must make none.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import itertools
import mmap
import os
import threading
import time

from .c_entries import proc_address

NOT_READY = 600  # CUDA_ERROR_NOT_READY
WAIT_LIMIT = 60.0  # seconds a simulated host wait blocks at most
HOST_COPY_LIMIT = 5.0  # seconds a copy between host memory blocks behind its stream's waits, then raises


class _Names:
    """An enum stand-in whose every member is its own name (``CUdevice_attribute``)."""

    def __getattr__(self, name):
        return name


# Entry points whose callers unpack more than the error code even when it is one.
_RESULT_LENGTH = {"cuEventElapsedTime": 2, "cuCtxGetCurrent": 2, "cuGetProcAddress": 3}


def _entry_points(cls):
    """Make every entry point (``cu...``) of ``cls`` note its calls (``calls``,
    ``child_calls``) and fail as :meth:`FakeDriver.fail` says."""

    def entry_point(name, fn):
        failed_tail = (None,) * (_RESULT_LENGTH.get(name, 1) - 1)

        @functools.wraps(fn)
        def entry(self, *args):
            self._called(name)
            err = self.faults.get(name)
            if err:
                return (err, *failed_tail)
            return fn(self, *args)

        return entry

    for name, fn in list(vars(cls).items()):
        if name.startswith("cu"):
            setattr(cls, name, entry_point(name, fn))
    return cls


@_entry_points
class FakeDriver:
    """A simulated ``cuda.bindings.driver`` (see the module docstring for what it models)."""

    class CUresult:
        CUDA_SUCCESS = 0
        CUDA_ERROR_NOT_READY = NOT_READY

    CUdevice_attribute = _Names()
    CU_MEMHOSTALLOC_PORTABLE = 1
    CU_MEMHOSTALLOC_DEVICEMAP = 2
    CU_MEMHOSTREGISTER_PORTABLE = 1
    CU_MEMHOSTREGISTER_DEVICEMAP = 2
    PINNED_BYTES = 1 << 16

    CUdriverProcAddress_flags = _Names()

    def __init__(self, *, keeps_up: bool = False, devices: int = 1, stream_order: bool = False,
                 reuse_streams: bool = False, no_entry_points: bool = False):
        self.pid = os.getpid()
        self.no_entry_points = no_entry_points
        self._c_entries: dict = {}  # name -> ctypes callback (kept alive while bound)
        self.keeps_up = keeps_up
        self.stream_order = stream_order
        self.reuse_streams = reuse_streams
        self.destroyed: list[int] = []  # stream handles to hand out again (reuse_streams)
        self.devices = devices
        self.calls: collections.Counter = collections.Counter()
        self.child_calls: list[str] = []
        self.faults: dict[str, int] = {}
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.ids = itertools.count(0x1000)
        self.clock = 0.0
        self.pending: dict[int, list] = {}  # stream handle -> events recorded there, not completed
        self.when: dict = {}  # event -> completion time, None while pending
        self.records = 0
        self.current_context = 0  # what cuCtxGetCurrent says (0: none; device i's primary is 0x100 + i)
        self.recorded: list[tuple[int, int]] = []  # (event, stream) of every record, in call order
        self.waited: list[tuple[int, int]] = []  # (stream, event) of every cuStreamWaitEvent, in call order
        self.twice: list = []  # events recorded again while a record of them was still pending
        self.early_reads = 0  # cuEventElapsedTime calls answered NOT_READY
        self.ipc_exports = self.ipc_opens = 0  # cuIpcGetEventHandle and cuIpcOpenEventHandle calls
        self.ipc_opened: list[bytes] = []  # the handle bytes each cuIpcOpenEventHandle was given
        self.held = False
        self._pinned = None
        self._pinned_base = 0
        self._pinned_used = 0
        self._count_lock = threading.Lock()
        self.registered: list[tuple[int, int]] = []  # (address, bytes) of cuMemHostRegister
        self.uuids = [bytes([i + 1]) * 16 for i in range(devices)]
        self.value_waits: list[tuple[int, int, int]] = []  # (stream, address, value) of memory waits
        self.allocations: dict[int, int] = {}  # cuMemAlloc: base -> bytes
        self._storage: dict[int, ctypes.Array] = {}  # device memory a copy touched: base -> its bytes
        self._ordered: dict[int, list] = {}  # stream -> its memory waits and the copies behind them

    def _called(self, name: str) -> None:
        if os.getpid() != self.pid:
            self.child_calls.append(name)  # no lock: a parent thread may have held it at fork
        else:
            with self._count_lock:
                self.calls[name] += 1

    # -- controlling the simulated GPU -------------------------------------------------------
    def run(self, stream=None, events: int | None = None) -> None:
        """Complete the work enqueued so far on ``stream`` (a GpuStream or a handle; every
        stream when ``None``), or only its first ``events`` events."""
        with self.cond:
            keys = list(self.pending) if stream is None else [int(getattr(stream, "_id", stream))]
            for key in keys:
                queue = self.pending.get(key, [])
                done, self.pending[key] = queue[:events], queue[len(queue[:events]):]
                for event in done:
                    if callable(event):  # a stream-ordered write
                        event()
                        continue
                    self.clock += 1.0
                    self.when[event] = self.clock
            self.cond.notify_all()

    @contextlib.contextmanager
    def running(self, every: float = 0.0005):
        """The simulated GPU at work in a thread while the block runs: every ``every`` seconds
        it completes what every stream has enqueued; after the block, whatever is left."""
        stop = threading.Event()

        def work():
            while not stop.is_set():
                self.run()
                stop.wait(every)

        runner = threading.Thread(target=work, name="simulated-gpu", daemon=True)
        runner.start()
        try:
            yield self
        finally:
            stop.set()
            runner.join(timeout=10)
            self.run()

    def enqueue_work(self, stream) -> None:
        """Put work on ``stream`` that completes only when :meth:`run` runs the stream."""
        with self.lock:
            self.pending.setdefault(int(getattr(stream, "_id", stream)), []).append(object())

    def fail(self, name: str, code: int) -> None:
        """From now on the entry point ``name`` returns the error ``code`` and does nothing
        else (0: it works again)."""
        self.faults[name] = code

    def hold_host_waits(self) -> None:
        """``cuEventSynchronize`` blocks (as on pending GPU work) until :meth:`release_host_waits`."""
        with self.cond:
            self.held = True

    def release_host_waits(self) -> None:
        with self.cond:
            self.held = False
            self.cond.notify_all()

    def _pending(self, event) -> bool:
        return event in self.when and self.when[event] is None

    # -- devices and contexts ----------------------------------------------------------------
    def cuDeviceGetCount(self):
        return (0, self.devices)

    def cuDeviceGet(self, index):
        return (0, index)

    def cuDeviceGetAttribute(self, attr, dev):
        return (0, 1)

    def cuDriverGetVersion(self):
        return (0, 13000)

    def cuDeviceGetName(self, length, dev):
        return (0, b"Simulated GPU\0")

    def cuDeviceTotalMem(self, dev):
        return (0, 1 << 30)

    def cuDeviceGetUuid(self, dev):
        class CUuuid:
            bytes = self.uuids[int(dev)]

        return (0, CUuuid())

    def cuDevicePrimaryCtxRetain(self, dev):
        return (0, 0x100 + int(dev))

    def cuCtxGetCurrent(self):
        return (0, self.current_context)

    def cuCtxGetDevice(self):
        return (0, 0)

    def cuCtxPushCurrent(self, ctx):
        return (0,)

    def cuCtxPopCurrent(self):
        return (0, 0x100)

    def cuCtxGetStreamPriorityRange(self):
        return (0, 0, -5)

    # -- entry points for C callers (the compiled hot path) ------------------------------------
    def cuGetProcAddress(self, name, version, flags):
        if self.no_entry_points:
            return (0, 0, 1)  # CUDA_SUCCESS with a NULL pointer: CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
        return proc_address(self, name, self._c_entries)

    # -- streams -----------------------------------------------------------------------------
    def CUstream(self, value):
        return value

    def cuStreamCreateWithPriority(self, flags, priority):
        with self.lock:
            if self.reuse_streams and self.destroyed:
                return (0, self.destroyed.pop())
        return (0, next(self.ids))

    def cuStreamGetDevice(self, stream):  # every raw handle is a stream of device 0
        return (0, 0)

    def cuStreamDestroy(self, stream):
        with self.lock:
            self.destroyed.append(int(stream))
        return (0,)

    def cuStreamQuery(self, stream):
        copying = self._copying(stream)
        with self.lock:
            return (NOT_READY,) if copying or self.pending.get(int(stream)) else (0,)

    def cuStreamSynchronize(self, stream):
        deadline = time.monotonic() + WAIT_LIMIT
        while self._copying(stream) and time.monotonic() < deadline:
            time.sleep(0.001)
        with self.cond:
            self.cond.wait_for(lambda: not self.pending.get(int(stream)), timeout=WAIT_LIMIT)
        return (0,)

    def cuStreamWaitEvent(self, stream, event, flags):
        self.waited.append((int(stream), int(event)))
        return (0,)

    # -- events ------------------------------------------------------------------------------
    def cuEventCreate(self, flags):
        return (0, next(self.ids))

    def cuEventDestroy(self, event):
        return (0,)

    def cuEventRecord(self, event, stream):
        with self.lock:
            self.records += 1
            self.recorded.append((int(event), int(stream)))
            if self._pending(event):
                self.twice.append(event)
            if self.keeps_up:
                self.clock += 1.0
                self.when[event] = self.clock
            else:
                self.when[event] = None
                self.pending.setdefault(int(stream), []).append(event)
        return (0,)

    def cuEventQuery(self, event):
        with self.lock:
            return (NOT_READY,) if self._pending(event) else (0,)

    def cuEventSynchronize(self, event):
        with self.cond:
            self.cond.wait_for(lambda: not self.held and not self._pending(event), timeout=WAIT_LIMIT)
        return (0,)

    # interprocess events: a handle names this process and the event; opening one made in
    # another process gives a fresh simulated event (a simulation spans one process)
    from cuda.bindings.driver import CUipcEventHandle  # the real type: its bytes are reached by address

    @staticmethod
    def ipc_handle(data: bytes):
        """A ``CUipcEventHandle`` holding ``data`` (padded to its 64 bytes), as the driver fills one."""
        h = FakeDriver.CUipcEventHandle()
        ctypes.memmove(h.getPtr(), data.ljust(64, b"\0"), 64)
        return h

    def cuIpcGetEventHandle(self, event):
        self.ipc_exports += 1
        return (0, self.ipc_handle(b"%d:%d" % (os.getpid(), int(event))))

    def cuIpcOpenEventHandle(self, handle):
        self.ipc_opens += 1
        self.ipc_opened.append(ctypes.string_at(handle.getPtr(), 64))
        return (0, next(self.ids))

    def cuEventElapsedTime(self, start, end):
        with self.lock:
            a, b = self.when.get(start), self.when.get(end)
            if a is None or b is None:
                self.early_reads += 1
                return (NOT_READY, 0.0)
            return (0, b - a)

    # -- pinned host memory and stream memory operations ---------------------------------------
    def cuMemHostAlloc(self, nbytes, flags):
        with self.lock:
            if self._pinned is None:
                self._pinned = mmap.mmap(-1, self.PINNED_BYTES)  # anonymous and MAP_SHARED
                self._pinned_base = ctypes.addressof(ctypes.c_char.from_buffer(self._pinned))
            if self._pinned_used + nbytes > self.PINNED_BYTES:
                return (2, 0)  # CUDA_ERROR_OUT_OF_MEMORY
            address = self._pinned_base + self._pinned_used
            self._pinned_used += nbytes
            return (0, address)

    def cuMemHostGetDevicePointer(self, host, flags):
        return (0, host)

    def cuMemFreeHost(self, address):
        return (0,)

    def cuMemHostRegister(self, address, nbytes, flags):
        self.registered.append((int(address), int(nbytes)))
        return (0,)

    def cuMemHostUnregister(self, address):
        return (0,)

    # -- device memory: addresses only (nothing reads or writes it); calls counted as all are --
    def cuMemAlloc(self, nbytes):
        ptr = next(self.ids) << 32
        self.allocations[ptr] = int(nbytes)
        return (0, ptr)

    def cuMemFree(self, ptr):
        return (0,)

    def cuMemsetD32Async(self, ptr, value, count, stream):
        return (0,)

    def _write(self, stream, word, value) -> tuple:
        def store():
            word.value = value

        if not self.stream_order or self.keeps_up:
            store()
        else:
            with self.lock:
                self.pending.setdefault(int(stream), []).append(store)
        return (0,)

    def cuStreamWriteValue32(self, stream, address, value, flags):
        return self._write(stream, ctypes.c_uint32.from_address(address), value)

    def cuStreamWriteValue64(self, stream, address, value, flags):
        return self._write(stream, ctypes.c_uint64.from_address(address), value)

    def cuStreamWaitValue32(self, stream, address, value, flags):
        return self._wait_value(stream, ctypes.c_uint32, address, value)

    def cuStreamWaitValue64(self, stream, address, value, flags):
        return self._wait_value(stream, ctypes.c_uint64, address, value)

    def _wait_value(self, stream, kind, address, value) -> tuple:
        self.value_waits.append((int(stream), int(address), int(value)))
        with self.lock:
            self._ordered.setdefault(int(stream), []).append((kind.from_address(int(address)), int(value)))
        return (0,)

    # -- copies: in stream order behind memory waits; between host memory, synchronous ---------
    def _host(self, address: int) -> bool:
        base = self._pinned_base
        if self._pinned is not None and base <= address < base + self.PINNED_BYTES:
            return True
        return any(a <= address < a + n for a, n in self.registered)

    def _where(self, address: int, nbytes: int) -> int:
        """The host address holding ``address`` (device memory gets storage on first use)."""
        for base, size in self.allocations.items():
            if base <= address < base + size:
                if address + nbytes > base + size:
                    raise AssertionError(f"a copy of {nbytes} bytes at {address:#x} overruns its allocation")
                store = self._storage.get(base)
                if store is None:
                    store = self._storage[base] = ctypes.create_string_buffer(size)
                return ctypes.addressof(store) + (address - base)
        return address  # host memory: its own address

    def _advance(self, stream: int, copy: bool = False) -> None:
        """With the lock held: the stream's reached waits pass and the copies behind them land.
        The words waited for are read only for a copy (``copy``, or one waiting there): a wait
        with no copy behind it passes unread, as every wait did before copies were modelled."""
        ordered = self._ordered.get(stream)
        if not copy and not any(callable(op) for op in ordered or ()):
            return
        while ordered:
            head = ordered[0]
            if callable(head):
                head()
            elif head[0].value < head[1]:
                return
            ordered.pop(0)

    def _copying(self, stream) -> bool:
        with self.lock:
            self._advance(int(stream))
            return any(callable(op) for op in self._ordered.get(int(stream), ()))

    def _copy(self, name: str, dst, src, nbytes, stream) -> tuple:
        dst, src, nbytes, key = int(dst), int(src), int(nbytes), int(stream)
        both_host = self._host(dst) and self._host(src)
        to, frm = self._where(dst, nbytes), self._where(src, nbytes)

        def land():
            ctypes.memmove(to, frm, nbytes)

        with self.lock:
            self._advance(key, copy=True)
            if not self._ordered.get(key):
                land()
                return (0,)
            if not both_host:
                self._ordered[key].append(land)
                return (0,)
        deadline = time.monotonic() + HOST_COPY_LIMIT  # synchronous: the caller waits for the stream
        while True:
            with self.lock:
                self._advance(key, copy=True)
                if not self._ordered.get(key):
                    break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} between two host ranges on stream {key} blocked {HOST_COPY_LIMIT:g} s behind that "
                    "stream's unreached memory wait: a copy between host memory is synchronous with respect to "
                    "the host, so the real driver keeps this thread here until the wait passes (a deadlock when "
                    "this thread is the one to give the value); copy through device memory instead")
            time.sleep(0.001)
        land()
        return (0,)

    def cuMemcpyHtoDAsync(self, dst, host, nbytes, stream):
        return self._copy("cuMemcpyHtoDAsync", dst, host, nbytes, stream)

    def cuMemcpyDtoHAsync(self, host, src, nbytes, stream):
        return self._copy("cuMemcpyDtoHAsync", host, src, nbytes, stream)


def install(**options) -> FakeDriver:
    """Bind a new ``FakeDriver(**options)`` for the rest of this process (a subprocess
    script): from then on cudaevents takes the process for one that initialized CUDA."""
    from cudaevents._core import driver

    fake = FakeDriver(**options)
    driver._bind(fake)
    return fake


def finalizers_done(timeout: float = 30.0) -> None:
    """Wait until the package's finalizer thread has run everything deferred so far (it runs
    in order): a close deferred under one driver must not run once another is bound."""
    from cudaevents._core import lifetime

    done = threading.Event()
    lifetime.defer(done.set)
    if not done.wait(timeout):
        raise AssertionError("the cudaevents finalizer thread is stuck")


def bind(monkeypatch, fake: FakeDriver) -> FakeDriver:
    """Bind ``fake`` as the driver of this process for the rest of the test (fixtures use :func:`bound`).

    ``monkeypatch`` restores at the test's end the real binding and what the driver module
    and the device registry cached (contexts, availability, Device objects), so nothing
    simulated leaks into later tests, and nothing real (a context retained on a GPU machine)
    leaks into this one. Use stand-in event handles (the ``fake_pool`` fixture) rather than
    the default pool, which outlives the test."""
    import gc

    from cudaevents._core import devices, driver, interprocess, pool, streams
    from cudaevents._sync import counter_storage

    gc.collect()  # what earlier tests left in cycles is finalized under the driver it belongs to
    finalizers_done()
    # Whatever caches handles or memory across tests starts empty, so no simulated handle is
    # ever handed to the real driver after this test (a real one would crash on it), nor a real
    # one to the simulation.
    monkeypatch.setattr(pool, "_default", None)
    monkeypatch.setattr(counter_storage, "_slab", None)
    monkeypatch.setattr(counter_storage, "_quarantine", counter_storage.Quarantine())
    monkeypatch.setattr(streams, "_helpers", {})
    monkeypatch.setattr(interprocess, "_exports", None)  # sends and their slots, per driver
    monkeypatch.setattr(interprocess, "_opened", collections.OrderedDict())
    monkeypatch.setattr(interprocess, "_local_devices", {})
    bound = [name for name in vars(driver) if name.startswith("_cu") and name != "_cu_launch_host_func"]
    for name in ("_d", "NOT_READY", "_usable", *bound):  # what _bind sets, and the cached availability
        monkeypatch.setattr(driver, name, getattr(driver, name))
    monkeypatch.setattr(driver, "_contexts", {})
    monkeypatch.setattr(driver, "_context_ints", {})
    monkeypatch.setattr(devices, "_devices", {})
    driver._bind(fake)
    return fake


@contextlib.contextmanager
def bound(monkeypatch, fake: FakeDriver):
    """For a fixture: ``fake`` bound (:func:`bind`) while the block runs; at its end what the
    test left in reference cycles is finalized and the finalizer thread drained while ``fake``
    is still the driver (a simulated stream handle destroyed later by the real driver, once
    monkeypatch has restored it, crashes the process)."""
    import gc

    from cudaevents._core import streams

    from cudaevents._core import compiled, driver

    before, before_contexts = driver._d, driver._context_ints
    yield bind(monkeypatch, fake)
    for s in list(streams._helpers.values()):  # dropped when monkeypatch restores the real ones
        s.close()
    gc.collect()
    finalizers_done()
    # the compiled path back on the driver monkeypatch restores (its entry points, not fake's)
    compiled.bind_driver(before, driver._raise_code, before_contexts)
