"""CUDA access: the only module that imports ``cuda.bindings``.

The driver is loaded and initialized on first use, never at import, so ``import cudaevents``
works on machines with no driver and no GPU. Every driver call goes through a checked path
that turns a failure into :class:`CudaError`; ``CUDA_ERROR_NOT_READY`` is a state that the
query helpers return as ``False``, never an error.

Events and streams are created in the primary context of their device, the context that
PyTorch, CuPy and cuda.core use, so handles are interchangeable with theirs. Calls that need
a current context push it for their duration and restore whatever the thread had before, so
we never change another library's idea of the current device.

CUDA does not survive ``fork()``: a child forked after the parent initialized the driver
inherits the parent's handles, contexts and pinned memory but cannot use any of them, and a
driver call there may fail, hang or crash. So in such a child every cudaevents CUDA use
raises :class:`CudaUnavailableError` saying so (use the 'spawn' start method), ``is_usable()``
is False, and finalizers leak the parent's handles instead of destroying them (as they do at
interpreter exit). A child forked before the parent's first CUDA use may use CUDA normally.
What such a child creates on the CPU works as on a machine without a GPU: CpuStreams, Workers
committing on CPU streams, host-backend counters (``AtomicEvent()`` without a device picks the
host backend there, as ``is_usable()`` is False).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

from . import compiled
from .errors import CudaError, CudaUnavailableError
from .lifetime import after_fork_in_child, state

_lock = threading.Lock()
_d = None  # cuda.bindings.driver once cuInit has succeeded
_init_started = False  # cuInit was called (it may still be running in another thread)
_reason: str | None = None  # why CUDA is unavailable, once known
_contexts: dict[int, object] = {}
_context_ints: dict[int, int] = {}  # the same contexts as integers, for cheap comparisons
NOT_READY = 600  # CUDA_ERROR_NOT_READY, rebound to the bindings' enum member at init


def bindings():
    """``cuda.bindings.driver`` after ``cuInit``; raises :class:`CudaUnavailableError`.

    For this module's wrappers and for tests that drive CUDA directly: the rest of the
    package calls the named wrappers below, never the bindings."""
    d = _d
    if d is not None and not state.forked:
        return d
    return _init()


def _init():
    global _reason, _init_started
    with _lock:
        if _reason is not None:
            raise CudaUnavailableError(_reason)
        if _d is not None:
            return _d
        try:
            from cuda.bindings import driver as d
        except ImportError as exc:  # a broken install; the package depends on it
            _reason = f"cuda-bindings could not be imported ({exc}); install it with 'pip install cuda-bindings'"
            raise CudaUnavailableError(_reason) from None
        _init_started = True
        try:
            (err,) = d.cuInit(0)
        except RuntimeError as exc:  # the bindings raise this when libcuda cannot be loaded
            _reason = f"no CUDA driver: {exc} (install the NVIDIA driver, or run on a machine with a GPU)"
            raise CudaUnavailableError(_reason) from None
        if err == d.CUresult.CUDA_ERROR_NO_DEVICE:
            _reason = "the CUDA driver is installed but found no GPU (CUDA_ERROR_NO_DEVICE; check CUDA_VISIBLE_DEVICES)"
            raise CudaUnavailableError(_reason)
        if err:
            _reason = f"cuInit failed with {err.name} ({int(err)})"
            raise CudaUnavailableError(_reason)
        _bind(d)
        return d


# The entry points of the hot wrappers, bound once (a global is cheaper than an attribute of
# the bindings module on every call).
_cuEventRecord = _cuEventQuery = _cuEventSynchronize = _cuEventElapsedTime = None
_cuStreamWaitEvent = _cuStreamQuery = _cuStreamSynchronize = None


def _bind(d) -> None:
    """Bind the driver module ``d`` (after a successful ``cuInit``; tests also bind a
    simulated driver here)."""
    global _d, NOT_READY, _cuEventRecord, _cuEventQuery, _cuEventSynchronize, _cuEventElapsedTime
    global _cuStreamWaitEvent, _cuStreamQuery, _cuStreamSynchronize
    NOT_READY = d.CUresult.CUDA_ERROR_NOT_READY
    _cuEventRecord, _cuEventQuery = d.cuEventRecord, d.cuEventQuery
    _cuEventSynchronize, _cuEventElapsedTime = d.cuEventSynchronize, d.cuEventElapsedTime
    _cuStreamWaitEvent, _cuStreamQuery, _cuStreamSynchronize = d.cuStreamWaitEvent, d.cuStreamQuery, d.cuStreamSynchronize
    _d = d
    compiled.bind_driver(d, _raise_code, _context_ints)


def rebind() -> None:
    """Bind the driver bound now once more (the compiled path follows :func:`compiled.use`);
    with none bound yet, only the compiled path's choice is reset."""
    compiled.bind_driver(_d, _raise_code, _context_ints)


def _raise_code(code: int, call: str):
    """The compiled path's errors: :func:`raise_error` for the ``CUresult`` ``code``."""
    try:
        err = _d.CUresult(code)
    except Exception:  # a code the bindings do not know, or a stand-in driver
        err = code
    raise_error(err, call)


_usable: bool | None = None


def unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or ``None`` when it can."""
    global _usable
    try:
        bindings()
        if device_count() == 0:
            _usable = False
            return "the CUDA driver reports 0 devices"
    except CudaUnavailableError as exc:
        _usable = False
        return str(exc)
    _usable = True
    return None


def is_usable() -> bool:
    """Whether a driver and at least one device are there (checked once per process)."""
    if _usable is None:
        unavailable_reason()
    return _usable


# Errors that leave the context unusable for the rest of the process ("sticky" errors).
STICKY_ERRORS = frozenset({700, 710, 714, 715, 716, 717, 718, 719})  # illegal address, assert, ..., launch failed
_STICKY_DETAIL = ("earlier GPU work failed and left this device's context unusable (a sticky error, e.g. "
                  "a device-side assert or an illegal address); find the failing kernel "
                  "(CUDA_LAUNCH_BLOCKING=1, compute-sanitizer) and restart the process")


def raise_error(err, call: str, detail: str | None = None):
    """Raise :class:`CudaError` for the non-success code ``err`` returned by ``call``."""
    name = getattr(err, "name", None)
    code = int(err)
    if detail is None and code in STICKY_ERRORS:
        detail = _STICKY_DETAIL
    raise CudaError(call, code, name, detail)


def call(name: str, *args):
    """``cuda.bindings.driver.<name>(*args)``, checked: a failure raises :class:`CudaError`
    naming the call; returns the call's value (a tuple for several, ``None`` for none).

    The one generic path to the driver, for the wrappers below (and tests); the hot wrappers
    call their bound entry point directly, which saves the lookup by name."""
    result = getattr(bindings(), name)(*args)
    err = result[0]
    if err:
        raise_error(err, name)
    n = len(result)
    if n == 1:
        return None
    if n == 2:
        return result[1]
    return result[1:]


# -- devices and contexts -------------------------------------------------------------
def device_count() -> int:
    """Number of CUDA devices the driver sees (raises when CUDA is unavailable)."""
    return call("cuDeviceGetCount")


def primary_context(index: int):
    """The retained primary context of device ``index`` (retained once, kept for the process)."""
    ctx = _contexts.get(index)
    if ctx is not None:
        return ctx
    bindings()
    with _lock:
        ctx = _contexts.get(index)
        if ctx is None:
            ctx = call("cuDevicePrimaryCtxRetain", call("cuDeviceGet", index))
            _context_ints[index] = int(ctx)
            _contexts[index] = ctx
    return ctx


def current_device_index() -> int | None:
    """Device of the calling thread's current context, or ``None`` when it has none."""
    ctx = call("cuCtxGetCurrent")
    if ctx is None or int(ctx) == 0:
        return None
    return int(call("cuCtxGetDevice"))


def make_current(index: int) -> None:
    """Make device ``index``'s primary context current on the calling thread."""
    call("cuCtxSetCurrent", primary_context(index))


def device_synchronize(index: int) -> None:
    """Wait on the host until all work on device ``index`` has finished."""
    with pushed(index):
        call("cuCtxSynchronize")


def _context_to_push(index: int):
    """Device ``index``'s primary context, or ``None`` when it is already current here."""
    ctx = _contexts.get(index)
    if ctx is None:
        ctx = primary_context(index)
    err, cur = _d.cuCtxGetCurrent()
    if err:
        raise_error(err, "cuCtxGetCurrent")
    if cur is not None and int(cur) == _context_ints[index]:
        return None
    return ctx


@contextlib.contextmanager
def pushed(index: int):
    """Make device ``index``'s primary context current for the block, then restore."""
    bindings()
    ctx = _context_to_push(index)
    if ctx is None:
        yield
        return
    call("cuCtxPushCurrent", ctx)
    try:
        yield
    finally:
        call("cuCtxPopCurrent")


def in_context(index: int, fn, *args):
    """``fn(*args)`` with device ``index``'s primary context current (pushed only when another
    one, or none, is current); returns what ``fn`` returns. The cheap form of :func:`pushed`
    for single driver calls on hot paths."""
    ctx = _context_to_push(index)
    if ctx is None:
        return fn(*args)
    call("cuCtxPushCurrent", ctx)
    try:
        return fn(*args)
    finally:
        call("cuCtxPopCurrent")


def versions() -> dict[str, str]:
    """Versions of the driver API and of cuda-bindings (what is known without a GPU too)."""
    out: dict[str, str] = {}
    try:
        import cuda.bindings as cb

        out["cuda-bindings"] = getattr(cb, "__version__", "unknown")
    except ImportError:
        out["cuda-bindings"] = "not installed"
    try:
        v = driver_version()
        out["driver CUDA version"] = f"{v // 1000}.{(v % 1000) // 10}"
    except CudaUnavailableError:
        out["driver CUDA version"] = "unavailable"
    return out


def device_attribute(index: int, name: str) -> int:
    """``cuDeviceGetAttribute`` by attribute name, e.g. ``"CAN_MAP_HOST_MEMORY"``."""
    attr = getattr(bindings().CUdevice_attribute, "CU_DEVICE_ATTRIBUTE_" + name)
    return int(call("cuDeviceGetAttribute", attr, call("cuDeviceGet", index)))


def device_name(index: int) -> str:
    """The marketing name of device ``index``."""
    raw = call("cuDeviceGetName", 256, call("cuDeviceGet", index))
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def device_total_memory(index: int) -> int:
    """Total memory of device ``index`` in bytes."""
    return int(call("cuDeviceTotalMem", call("cuDeviceGet", index)))


def device_uuid(index: int) -> bytes:
    """The 16-byte UUID of device ``index``: the same GPU in every process, whatever index
    ``CUDA_VISIBLE_DEVICES`` gives it there."""
    return bytes(call("cuDeviceGetUuid", call("cuDeviceGet", index)).bytes)


def driver_version() -> int:
    """The CUDA version the driver supports, as 1000*major + 10*minor."""
    return int(call("cuDriverGetVersion"))


# -- events: the hot wrappers call their entry point directly -----------------------------
def event_create(index: int, flags: int):
    """Create a native event with ``flags`` in device ``index``'s primary context (an int
    while the compiled path is in use, which takes ints fastest; else a ``CUevent``, which the
    bindings take fastest; either path accepts both)."""
    with pushed(index):
        handle = call("cuEventCreate", flags)
    return int(handle) if compiled.active() else handle


def event_destroy(handle) -> None:
    """Destroy a native event (legal while work recorded on it is pending)."""
    call("cuEventDestroy", handle)


def event_record(event, stream) -> None:
    """Record ``event`` on ``stream``: it captures the work enqueued there so far."""
    (err,) = _cuEventRecord(event, stream)
    if err:
        raise_error(err, "cuEventRecord")


def event_query(event) -> bool:
    """Whether the work before ``event`` has finished (never blocks; NOT_READY is False)."""
    (err,) = _cuEventQuery(event)
    if not err:
        return True
    if err == NOT_READY:
        return False
    raise_error(err, "cuEventQuery")


def event_synchronize(event) -> None:
    """Wait on the host, in the driver with the GIL released, until ``event`` completes."""
    (err,) = _cuEventSynchronize(event)
    if err:
        raise_error(err, "cuEventSynchronize")


def event_elapsed_ms(start, end) -> float | None:
    """Milliseconds from ``start`` to ``end``, or ``None`` while either is still pending."""
    err, ms = _cuEventElapsedTime(start, end)
    if not err:
        return ms
    if err == NOT_READY:
        return None
    raise_error(err, "cuEventElapsedTime")


# -- streams -------------------------------------------------------------------------------
def stream_create(index: int, flags: int, priority: int):
    """Create a native stream in device ``index``'s primary context."""
    with pushed(index):
        handle = call("cuStreamCreateWithPriority", flags, priority)
    return int(handle) if compiled.active() else handle


def stream_destroy(handle) -> None:
    """Destroy a native stream; work already enqueued still completes."""
    call("cuStreamDestroy", handle)


def stream_priority_range(index: int) -> tuple[int, int]:
    """``(greatest, least)`` stream priority of device ``index`` (numerically low, high)."""
    with pushed(index):
        least, greatest = call("cuCtxGetStreamPriorityRange")
    return int(greatest), int(least)


def stream_device(handle) -> int:
    """Device ordinal of a (non-special) stream handle."""
    return int(call("cuStreamGetDevice", handle))


def as_stream_handle(value: int):
    """An integer stream handle as the hot path takes it fastest: the int itself for the
    compiled path, a ``CUstream`` for the bindings."""
    d = bindings()
    return value if compiled.active() else d.CUstream(value)


def stream_wait_event(stream, event) -> None:
    """Make ``stream`` wait on the device for ``event`` (across devices too)."""
    (err,) = _cuStreamWaitEvent(stream, event, 0)
    if err:
        raise_error(err, "cuStreamWaitEvent")


def stream_query(stream) -> bool:
    """Whether all work enqueued on ``stream`` has finished (never blocks)."""
    (err,) = _cuStreamQuery(stream)
    if not err:
        return True
    if err == NOT_READY:
        return False
    raise_error(err, "cuStreamQuery")


def stream_synchronize(stream) -> None:
    """Wait on the host, in the driver with the GIL released, for all work on ``stream``."""
    (err,) = _cuStreamSynchronize(stream)
    if err:
        raise_error(err, "cuStreamSynchronize")


compiled.register(sys.modules[__name__], compiled.DRIVER_WRAPPERS,
                  lambda hot, module, python: {name: getattr(hot, name) for name in python}, needs_driver=True)


# -- memory, for the demo, benchmark() and tests: plain device allocations (never managed) --
def mem_alloc(index: int, nbytes: int) -> int:
    """Allocate ``nbytes`` of device memory on device ``index``; returns the pointer."""
    with pushed(index):
        return int(call("cuMemAlloc", nbytes))


def mem_free(ptr: int) -> None:
    """Free memory from :func:`mem_alloc`."""
    call("cuMemFree", ptr)


def memset_d32_async(ptr: int, value: int, count: int, stream) -> None:
    """Fill ``count`` 32-bit words at ``ptr`` with ``value`` in stream order."""
    call("cuMemsetD32Async", ptr, value, count, stream)


def memcpy_dtod_async(dst: int, src: int, nbytes: int, stream) -> None:
    """Copy device memory in stream order."""
    call("cuMemcpyDtoDAsync", dst, src, nbytes, stream)


def mem_host_alloc(nbytes: int, *, mapped: bool = False):
    """Pinned host memory of ``nbytes`` usable from every context (portable); returns its
    address, or with ``mapped=True`` ``(host_address, device_address)`` of memory mapped into
    every device's address space (with unified addressing the two are equal)."""
    d = bindings()
    flags = d.CU_MEMHOSTALLOC_PORTABLE | (d.CU_MEMHOSTALLOC_DEVICEMAP if mapped else 0)
    with pushed(0):
        host = int(call("cuMemHostAlloc", nbytes, flags))
        if not mapped:
            return host
        return host, int(call("cuMemHostGetDevicePointer", host, 0))


def mem_host_free(address: int) -> None:
    """Free memory from :func:`mem_host_alloc`."""
    call("cuMemFreeHost", address)


def mem_host_register(index: int, address: int, nbytes: int) -> int:
    """Page-lock the host range ``[address, address + nbytes)`` (page aligned, e.g. a shared
    memory mapping), portable and mapped into every device's address space; returns its device
    address. Undo with :func:`mem_host_unregister` before the range is unmapped."""
    d = bindings()
    flags = d.CU_MEMHOSTREGISTER_PORTABLE | d.CU_MEMHOSTREGISTER_DEVICEMAP
    with pushed(index):
        call("cuMemHostRegister", address, nbytes, flags)
        return int(call("cuMemHostGetDevicePointer", address, 0))


def mem_host_unregister(address: int) -> None:
    """Undo :func:`mem_host_register` for the range starting at ``address``."""
    call("cuMemHostUnregister", address)


# -- interprocess events ----------------------------------------------------------------
IPC_HANDLE_SIZE = 64  # CU_IPC_HANDLE_SIZE


def ipc_event_handle(index: int, event) -> bytes:
    """The 64-byte interprocess handle of ``event`` of device ``index`` (created with the
    interprocess flag and timing disabled), which another process opens with
    :func:`ipc_open_event`. The handle's bytes are read through its address: cuda-bindings
    13.4 and later no longer expose its ``reserved`` field."""
    with pushed(index):
        h = call("cuIpcGetEventHandle", event)
    return ctypes.string_at(h.getPtr(), IPC_HANDLE_SIZE)


def ipc_open_event(index: int, handle: bytes):
    """Open in this process the event another process exported as ``handle`` (its 64 bytes),
    in device ``index``'s primary context; close it with :func:`event_destroy`."""
    if len(handle) != IPC_HANDLE_SIZE:
        raise ValueError(f"an interprocess event handle has {IPC_HANDLE_SIZE} bytes, not {len(handle)}")
    h = bindings().CUipcEventHandle()
    ctypes.memmove(h.getPtr(), handle, IPC_HANDLE_SIZE)
    with pushed(index):
        event = call("cuIpcOpenEventHandle", h)
    return int(event) if compiled.active() else event


def memcpy_dtoh_async(host_address: int, src: int, nbytes: int, stream) -> None:
    """Copy device memory to pinned host memory in stream order."""
    call("cuMemcpyDtoHAsync", host_address, src, nbytes, stream)


def memcpy_htod_async(dst: int, host_address: int, nbytes: int, stream) -> None:
    """Copy pinned host memory to device memory in stream order."""
    call("cuMemcpyHtoDAsync", dst, host_address, nbytes, stream)


def memcpy_dtoh(index: int, host_address: int, src: int, nbytes: int) -> None:
    """Copy device memory of device ``index`` to host memory at ``host_address`` (synchronous)."""
    with pushed(index):
        call("cuMemcpyDtoH", host_address, src, nbytes)


# -- stream memory operations and host functions, for counter events ----------------------
_GEQ = 0  # CU_STREAM_WAIT_VALUE_GEQ


def stream_write_value(stream, address: int, value: int, bits: int) -> None:
    """Enqueue a store of ``value`` at device address ``address`` (32 or 64 bits)."""
    name = "cuStreamWriteValue64" if bits == 64 else "cuStreamWriteValue32"
    (err,) = getattr(_d, name)(stream, address, value, 0)
    if err:
        raise_error(err, name)


def stream_wait_value(stream, address: int, value: int, bits: int) -> None:
    """Enqueue a wait until the word at ``address`` is >= ``value`` (32 or 64 bits)."""
    name = "cuStreamWaitValue64" if bits == 64 else "cuStreamWaitValue32"
    (err,) = getattr(_d, name)(stream, address, value, _GEQ)
    if err:
        raise_error(err, name)


_cu_launch_host_func = None


def launch_host_func(stream, function_address: int, argument: int) -> None:
    """Enqueue a call of the C function at ``function_address`` with one pointer argument.

    Only ever pass a C function (e.g. libc's ``sem_post``): Python must never run in the
    driver's callback thread, where it could deadlock against the GIL. That is also why
    this calls libcuda through ctypes: cuda.bindings' ``cuLaunchHostFunc`` wraps every host
    function in a trampoline that takes the GIL (NVIDIA/cuda-python#517), so a blocking
    host function such as ``sem_wait`` would freeze the interpreter.
    """
    global _cu_launch_host_func
    fn = _cu_launch_host_func
    if fn is None:
        bindings()
        fn = ctypes.CDLL("libcuda.so.1").cuLaunchHostFunc  # already loaded by cuInit
        fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        fn.restype = ctypes.c_int
        _cu_launch_host_func = fn
    err = fn(int(stream), function_address, argument)  # ctypes releases the GIL for the call
    if err:
        raise_error(_d.CUresult(err), "cuLaunchHostFunc")


# -- fork: CUDA does not survive it -------------------------------------------------------
FORK_REASON = (
    "CUDA cannot be used in this process: it was forked (os.fork(), or multiprocessing's 'fork' "
    "start method) after its parent had initialized CUDA, and CUDA does not survive fork: the "
    "child inherits the parent's driver state, events, streams and pinned memory but cannot use "
    "them, and driver calls there may fail, hang or crash. Start processes that use the GPU with "
    "the 'spawn' start method (multiprocessing.get_context('spawn'), or "
    "multiprocessing.set_start_method('spawn'); 'forkserver' works too), or fork before the "
    "parent's first CUDA use"
)


def refuse_forked(*args, **kwargs):
    """Stands in for every driver use in a child forked from a CUDA-initialized parent."""
    raise CudaUnavailableError(FORK_REASON)


class _Forked:
    """The driver module as a forked child sees it: every entry point refuses."""

    class CUresult:
        CUDA_ERROR_NOT_READY = 600

    def __getattr__(self, name):
        return refuse_forked


@after_fork_in_child
def _after_fork_in_child() -> None:
    """The first fork hook (this module is imported before every other that registers one).

    If the parent had initialized the driver (or was initializing it), nothing in this
    process may call it again: every wrapper refuses, :func:`bindings` raises,
    :func:`is_usable` is False, and ``state.exiting`` makes finalizers leak the parent's
    handles instead of destroying them. Otherwise the child may initialize CUDA itself, as
    any fresh process does.
    """
    global _lock, _d, _reason, _usable, _cu_launch_host_func
    _lock = threading.Lock()  # another parent thread may have held it; only this thread survives
    if _d is None and not (_init_started and _reason is None):
        return  # the parent never initialized CUDA (or found none): the child starts afresh
    state.forked = True
    state.exiting = True
    _bind(_Forked())
    _reason = FORK_REASON
    _usable = False
    _contexts.clear()
    _context_ints.clear()
    _cu_launch_host_func = refuse_forked


rebind()  # the compiled fast paths that need no driver yet, where the extension is in use
