"""A simulated GPU for the stress script's ``--mode sim`` (tests/scripts/stress.py): a stand-in for
``cuda.bindings.driver`` that runs stream work asynchronously, in stream order, on threads of its
own, so that the GPU half of the stress mix can run (and its harness be checked) without a GPU.

Unlike :mod:`helpers.fake_driver`, whose GPU runs only when a test tells it to, this one keeps
going by itself, a little behind the host:

- Each stream is a FIFO of operations; the "GPU" thread executes the head of every stream once
  it is ready, each operation no earlier than a small random delay after it was enqueued, so
  streams run at different speeds and the host is usually ahead (the windows in which a
  reordering would show stay open for a while).
- ``cuStreamWaitValue32/64`` block their stream until the word is >= the value (compared
  cyclically, as the GPU's GEQ does); ``cuStreamWriteValue32/64`` store in stream order;
  ``cuStreamWaitEvent`` blocks until the event's record captured at the call has completed.
  Memsets and copies (``cuMemsetD32Async``, ``cuMemcpy*Async``) act on host memory standing in
  for device memory, in stream order; ``cuMemcpyDtoH`` copies at once.
- Events: a record completes when its stream reaches it (timestamped with the host clock);
  query and synchronize look at the latest record, as CUDA does. Using a destroyed event or
  stream is ``CUDA_ERROR_INVALID_HANDLE`` (400), which would show a pool handing out a
  destroyed handle.
- A destroyed stream's work still completes, while its handle is handed at once to the next
  stream created (the real driver reuses handles; handing one out while the old stream still
  drains is the adversarial case for code that keys streams by handle).
- Stream handles are :class:`CUstream` objects, as the bindings give them.
- Host functions (the hostfn counter backend calls libcuda's ``cuLaunchHostFunc`` through
  ctypes; :func:`install` points that at :meth:`SimDriver.launch_host_func`) run one at a time
  on a thread of their own, like the driver's callback thread, and hold their stream until
  they return.
- ``cuGetProcAddress`` gives C entry points into this simulation (:mod:`helpers.c_entries`),
  so the compiled hot path runs against it as against the driver.
- More than :data:`QUEUE_LIMIT` operations queued on one stream is answered with an error
  (the real driver would block the enqueuing thread there) and noted in ``violations``.

Everything here is for a harness: it models the semantics cudaevents relies on, not CUDA's
performance.
"""

from __future__ import annotations

import array
import collections
import ctypes
import queue
import random
import threading
import time

from .c_entries import proc_address

SUCCESS = 0
INVALID_VALUE = 1
INVALID_HANDLE = 400
NOT_READY = 600
UNKNOWN = 999
QUEUE_LIMIT = 1000  # about where the real driver blocks the enqueuing thread
WAIT_LIMIT = 60.0  # seconds a simulated host wait blocks at most before answering UNKNOWN


class _Names:
    """An enum stand-in whose every member is its own name (``CUdevice_attribute``)."""

    def __getattr__(self, name):
        return name


class _CUresult(int):
    """Stands in for ``CUresult``: an int with the two members cudaevents reads."""

    CUDA_SUCCESS = SUCCESS
    CUDA_ERROR_NOT_READY = NOT_READY

    @property
    def name(self):
        return {INVALID_VALUE: "CUDA_ERROR_INVALID_VALUE", INVALID_HANDLE: "CUDA_ERROR_INVALID_HANDLE",
                NOT_READY: "CUDA_ERROR_NOT_READY", UNKNOWN: "CUDA_ERROR_UNKNOWN (simulated)"}.get(int(self),
                                                                                        f"CUresult {int(self)}")


class CUstream:
    """What ``cuda.bindings.driver.CUstream(value)`` gives (cuda-bindings >= 12.9.5): an object
    that converts to the handle and speaks the ``__cuda_stream__`` protocol."""

    __slots__ = ("_value",)

    def __init__(self, value=0):
        self._value = int(value)

    def __int__(self):
        return self._value

    def __index__(self):
        return self._value

    def __eq__(self, other):
        return isinstance(other, CUstream) and other._value == self._value

    def __hash__(self):
        return hash(self._value)

    def __repr__(self):
        return f"<CUstream {self._value:#x}>"

    def getPtr(self):
        return self._value

    def __cuda_stream__(self):
        return (0, self._value)


class _Stream:
    __slots__ = ("handle", "ops", "destroyed")

    def __init__(self, handle):
        self.handle = handle
        self.ops: collections.deque = collections.deque()
        self.destroyed = False


class _Event:
    __slots__ = ("handle", "flags", "latest", "pending", "at", "destroyed")

    def __init__(self, handle, flags):
        self.handle, self.flags = handle, flags
        self.latest = 0  # generation of the latest record (0: never recorded)
        self.pending: set = set()  # generations recorded and not yet reached
        self.at = None  # host clock (s) when the latest record completed
        self.destroyed = False


class _Op:
    __slots__ = ("kind", "a", "b", "c", "not_before", "started", "done")

    def __init__(self, kind, a=None, b=None, c=None, not_before=0.0):
        self.kind, self.a, self.b, self.c = kind, a, b, c
        self.not_before = not_before
        self.started = self.done = False


def _geq(word: int, value: int, bits: int) -> bool:
    """The GPU's cyclic GEQ: ``(int)(word - value) >= 0``."""
    mask = (1 << bits) - 1
    return ((word - value) & mask) < (1 << (bits - 1))


class SimDriver:
    """The simulated driver (see the module docstring). ``lag_us`` bounds the random delay of
    each operation after its enqueue; ``seed`` seeds those delays."""

    CUresult = _CUresult
    CUdevice_attribute = _Names()
    CU_MEMHOSTALLOC_PORTABLE = 1
    CU_MEMHOSTALLOC_DEVICEMAP = 2
    CUdriverProcAddress_flags = _Names()

    def __init__(self, *, seed=0, lag_us: float = 300.0):
        self._c_entries: dict = {}  # C entry points for the compiled hot path (kept alive here)
        self.lock = threading.RLock()  # reentrant: a finalizer run by the collector inside it may call in
        self.cond = threading.Condition(self.lock)
        self._rng = random.Random(f"sim:{seed}")
        self._lag = lag_us * 1e-6
        self._ids = iter(range(0x10000, 1 << 40, 0x10))
        self._streams: dict[int, _Stream] = {}
        self._draining: list[_Stream] = []  # destroyed streams whose work is still running
        self._free_handles: list[int] = []  # destroyed streams' handles, handed out again (LIFO)
        self._events: dict[int, _Event] = {}
        self._memory: dict[int, object] = {}
        self._graveyard: list = []  # freed memory, kept: simulated work may still be using it
        self.violations: list[str] = []
        self.counts = collections.Counter()
        self._hostfn_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = False
        self._gpu = threading.Thread(target=self._gpu_loop, name="sim-gpu", daemon=True)
        self._hostfn = threading.Thread(target=self._hostfn_loop, name="sim-hostfn", daemon=True)
        self._gpu.start()
        self._hostfn.start()

    # -- the simulated GPU ---------------------------------------------------------------------
    def _gpu_loop(self) -> None:
        while not self._stop:
            with self.cond:
                progressed = self._step()
                if progressed:
                    self.cond.notify_all()
                else:
                    self.cond.wait(0.0005)  # host stores into mapped memory notify nobody: poll

    def _step(self) -> bool:
        now = time.perf_counter()
        progressed = False
        for s in [*self._streams.values(), *self._draining]:
            for _ in range(16):
                if not s.ops:
                    break
                op = s.ops[0]
                if op.not_before > now or not self._ready(op):
                    break
                s.ops.popleft()
                self._execute(op, now)
                progressed = True
        if self._draining:
            self._draining = [s for s in self._draining if s.ops]
        return progressed

    def _ready(self, op: _Op) -> bool:
        kind = op.kind
        if kind == "wait_value":
            width = ctypes.c_uint64 if op.c == 64 else ctypes.c_uint32
            return _geq(width.from_address(op.a).value, op.b, op.c)
        if kind == "wait_event":
            return op.b not in op.a.pending
        if kind == "hostfn":
            if not op.started:
                op.started = True
                self._hostfn_queue.put(op)
            return op.done
        return True

    def _execute(self, op: _Op, now: float) -> None:
        kind = op.kind
        if kind == "record":
            ev, gen = op.a, op.b
            ev.pending.discard(gen)
            if gen == ev.latest:
                ev.at = now
        elif kind == "write_value":
            width = ctypes.c_uint64 if op.c == 64 else ctypes.c_uint32
            width.from_address(op.a).value = op.b
        elif kind == "memset":
            pattern = array.array("I", [op.b]) * op.c
            ctypes.memmove(op.a, pattern.buffer_info()[0], 4 * op.c)
        elif kind == "copy":
            ctypes.memmove(op.a, op.b, op.c)
        self.counts[kind] += 1

    def _hostfn_loop(self) -> None:
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        while True:
            op = self._hostfn_queue.get()
            proto(op.a)(op.b)  # a C function (libc's sem_wait): ctypes releases the GIL around it
            with self.cond:
                op.done = True
                self.cond.notify_all()

    def _enqueue(self, stream, kind, a=None, b=None, c=None) -> int:
        with self.lock:
            s = self._stream(stream)
            if s is None:
                return INVALID_HANDLE
            if len(s.ops) >= QUEUE_LIMIT:
                msg = (f"{len(s.ops)} operations queued on stream {s.handle:#x} (head: {s.ops[0].kind}); the real "
                       "driver would block the enqueuing thread here")
                self.violations.append(msg)
                return UNKNOWN
            s.ops.append(_Op(kind, a, b, c, time.perf_counter() + self._rng.random() * self._lag))
            self.cond.notify_all()
            return SUCCESS

    def _stream(self, handle):
        """The live stream of ``handle`` (with the lock held), or None."""
        h = int(handle)
        if h in (0, 1, 2):  # the legacy default / per-thread stream: one stream here
            s = self._streams.get(0)
            if s is None:
                s = self._streams[0] = _Stream(0)
            return s
        s = self._streams.get(h)
        return None if s is None or s.destroyed else s

    def _event(self, handle):
        ev = self._events.get(int(handle))
        return None if ev is None or ev.destroyed else ev

    def _wait_for(self, predicate) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=WAIT_LIMIT)

    def idle(self) -> bool:
        """True when no stream has work left."""
        with self.lock:
            return not any(s.ops for s in [*self._streams.values(), *self._draining])

    def live_events(self) -> int:
        with self.lock:
            return sum(1 for ev in self._events.values() if not ev.destroyed)

    # -- devices and contexts ----------------------------------------------------------------------
    CUstream = CUstream

    def cuDeviceGetCount(self):
        return (SUCCESS, 1)

    def cuDeviceGet(self, index):
        return (SUCCESS, index) if int(index) == 0 else (INVALID_VALUE, None)

    def cuDeviceGetAttribute(self, attr, dev):
        return (SUCCESS, {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 9,
                          "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 0,
                          "CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE": 1 << 20}.get(attr, 1))

    def cuDriverGetVersion(self):
        return (SUCCESS, 13000)

    def cuDeviceGetName(self, length, dev):
        return (SUCCESS, b"Simulated GPU (stress_sim)\0")

    def cuDeviceTotalMem(self, dev):
        return (SUCCESS, 1 << 30)

    def cuDevicePrimaryCtxRetain(self, dev):
        return (SUCCESS, 0x100)

    def cuCtxGetCurrent(self):
        return (SUCCESS, 0x100)

    def cuGetProcAddress(self, name, version, flags):
        return proc_address(self, name, self._c_entries)

    def cuCtxGetDevice(self):
        return (SUCCESS, 0)

    def cuCtxSetCurrent(self, ctx):
        return (SUCCESS,)

    def cuCtxPushCurrent(self, ctx):
        return (SUCCESS,)

    def cuCtxPopCurrent(self):
        return (SUCCESS, 0x100)

    def cuCtxGetStreamPriorityRange(self):
        return (SUCCESS, 0, -5)

    def cuCtxSynchronize(self):
        return (SUCCESS,) if self._wait_for(self.idle) else (UNKNOWN,)

    # -- streams -----------------------------------------------------------------------------------
    def cuStreamCreateWithPriority(self, flags, priority):
        with self.lock:
            h = self._free_handles.pop() if self._free_handles else next(self._ids)
            self._streams[h] = _Stream(h)
            self.counts["streams"] += 1
            return (SUCCESS, CUstream(h))

    def cuStreamDestroy(self, stream):
        with self.lock:
            s = self._stream(stream)
            if s is None or s.handle == 0:
                return (INVALID_HANDLE,)
            s.destroyed = True  # its work still completes; its handle is free at once
            del self._streams[s.handle]
            if s.ops:
                self._draining.append(s)
            self._free_handles.append(s.handle)
            self.counts["streams destroyed"] += 1
            self.cond.notify_all()
            return (SUCCESS,)

    def cuStreamGetDevice(self, stream):
        return (SUCCESS, 0) if self._stream(stream) is not None else (INVALID_HANDLE, None)

    def cuStreamQuery(self, stream):
        with self.lock:
            s = self._stream(stream)
            if s is None:
                return (INVALID_HANDLE,)
            return (NOT_READY,) if s.ops else (SUCCESS,)

    def cuStreamSynchronize(self, stream):
        with self.lock:
            s = self._stream(stream)
            if s is None:
                return (INVALID_HANDLE,)
        return (SUCCESS,) if self._wait_for(lambda: not s.ops) else (UNKNOWN,)

    def cuStreamWaitEvent(self, stream, event, flags):
        with self.lock:
            ev = self._event(event)
            if ev is None:
                return (INVALID_HANDLE,)
            if ev.latest == 0:  # never recorded: nothing to wait for (as in CUDA)
                return (SUCCESS,) if self._stream(stream) is not None else (INVALID_HANDLE,)
            return (self._enqueue(stream, "wait_event", ev, ev.latest),)

    def cuStreamWriteValue32(self, stream, address, value, flags):
        return (self._enqueue(stream, "write_value", int(address), int(value), 32),)

    def cuStreamWriteValue64(self, stream, address, value, flags):
        return (self._enqueue(stream, "write_value", int(address), int(value), 64),)

    def cuStreamWaitValue32(self, stream, address, value, flags):
        return (self._enqueue(stream, "wait_value", int(address), int(value), 32),)

    def cuStreamWaitValue64(self, stream, address, value, flags):
        return (self._enqueue(stream, "wait_value", int(address), int(value), 64),)

    def launch_host_func(self, stream, function_address, argument) -> int:
        """Stands in for libcuda's ``cuLaunchHostFunc`` called through ctypes: returns the code."""
        return self._enqueue(stream, "hostfn", int(function_address), int(argument))

    # -- events ------------------------------------------------------------------------------------
    def cuEventCreate(self, flags):
        with self.lock:
            h = next(self._ids)
            self._events[h] = _Event(h, int(flags))
            self.counts["events created"] += 1
            return (SUCCESS, h)

    def cuEventDestroy(self, event):
        with self.lock:
            ev = self._event(event)
            if ev is None:
                return (INVALID_HANDLE,)
            ev.destroyed = True  # pending records still complete (they hold the object)
            del self._events[ev.handle]
            self.counts["events destroyed"] += 1
            return (SUCCESS,)

    def cuEventRecord(self, event, stream):
        with self.lock:
            ev = self._event(event)
            if ev is None or self._stream(stream) is None:
                return (INVALID_HANDLE,)
            if len(self._stream(stream).ops) >= QUEUE_LIMIT:
                return (self._enqueue(stream, "record"),)  # refused and noted
            ev.latest += 1
            ev.pending.add(ev.latest)
            ev.at = None
            code = self._enqueue(stream, "record", ev, ev.latest)
            return (code,)

    def cuEventQuery(self, event):
        with self.lock:
            ev = self._event(event)
            if ev is None:
                return (INVALID_HANDLE,)
            return (NOT_READY,) if ev.latest in ev.pending else (SUCCESS,)

    def cuEventSynchronize(self, event):
        with self.lock:
            ev = self._event(event)
            if ev is None:
                return (INVALID_HANDLE,)
            gen = ev.latest
        return (SUCCESS,) if self._wait_for(lambda: gen not in ev.pending) else (UNKNOWN,)

    def cuEventElapsedTime(self, start, end):
        with self.lock:
            a, b = self._event(start), self._event(end)
            if a is None or b is None or a.latest == 0 or b.latest == 0:
                return (INVALID_HANDLE, 0.0)
            if a.flags & 2 or b.flags & 2:  # CU_EVENT_DISABLE_TIMING
                return (INVALID_HANDLE, 0.0)
            if a.latest in a.pending or b.latest in b.pending or a.at is None or b.at is None:
                return (NOT_READY, 0.0)
            return (SUCCESS, (b.at - a.at) * 1000.0)

    # -- memory ------------------------------------------------------------------------------------
    def _allocate(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(int(nbytes) + 64)
        ptr = (ctypes.addressof(buf) + 63) & ~63
        with self.lock:
            self._memory[ptr] = buf
        return ptr

    def _free(self, ptr) -> tuple:
        with self.lock:
            buf = self._memory.pop(int(ptr), None)
            if buf is None:
                return (INVALID_VALUE,)
            self._graveyard.append(buf)
            return (SUCCESS,)

    def cuMemAlloc(self, nbytes):
        return (SUCCESS, self._allocate(nbytes))

    def cuMemFree(self, ptr):
        return self._free(ptr)

    def cuMemHostAlloc(self, nbytes, flags):
        return (SUCCESS, self._allocate(nbytes))

    def cuMemHostGetDevicePointer(self, host, flags):
        return (SUCCESS, int(host))

    def cuMemFreeHost(self, address):
        return self._free(address)

    def cuMemsetD32Async(self, ptr, value, count, stream):
        return (self._enqueue(stream, "memset", int(ptr), int(value) & 0xFFFFFFFF, int(count)),)

    def cuMemcpyDtoDAsync(self, dst, src, nbytes, stream):
        return (self._enqueue(stream, "copy", int(dst), int(src), int(nbytes)),)

    def cuMemcpyDtoHAsync(self, host, src, nbytes, stream):
        return (self._enqueue(stream, "copy", int(host), int(src), int(nbytes)),)

    def cuMemcpyHtoDAsync(self, dst, host, nbytes, stream):
        return (self._enqueue(stream, "copy", int(dst), int(host), int(nbytes)),)

    def cuMemcpyDtoH(self, host, src, nbytes):
        ctypes.memmove(int(host), int(src), int(nbytes))
        return (SUCCESS,)


def install(**options) -> SimDriver:
    """Bind a new ``SimDriver(**options)`` as cudaevents' driver for the rest of this process
    (before anything has used CUDA); returns it."""
    from cudaevents._core import driver

    sim = SimDriver(**options)
    driver._bind(sim)
    driver._cu_launch_host_func = sim.launch_host_func
    return sim
