"""GPU streams: our own (owned) and borrowed from any library, through one adapter."""

from __future__ import annotations

import functools
import itertools
import sys
import threading

from . import compiled, driver
from .devices import resolve_device_index
from .errors import ClosedError, DeviceMismatchError
from .lifetime import after_fork_in_child, defer, state
from .wait import check_timeout, resolve_policy, wait_until

__all__ = ["GpuStream", "as_stream", "helper_stream", "stream_identity", "torch_current_stream"]

# Handle values with a meaning of their own: the default stream (0), CU_STREAM_LEGACY (1) and
# CU_STREAM_PER_THREAD (2). They name a stream of whatever context is current, so every call
# on them runs with their device's primary context pushed.
_SPECIAL_HANDLES = (0, 1, 2)

_STREAM_NON_BLOCKING = 1  # CU_STREAM_NON_BLOCKING

# Keys of owned streams: serials above every pointer value. The driver hands a destroyed
# stream's handle to the next stream created (most of the time), so a handle does not
# identify a stream over time; an owned stream's key is never reused.
_serials = itertools.count(1 << 64)


class GpuStream:
    """A CUDA stream on one device.

    ``GpuStream(device=None, priority=0, blocking=False)`` creates and owns a native stream
    (non-blocking with respect to the legacy default stream unless ``blocking=True``),
    destroyed by :meth:`close`, a ``with`` block or garbage collection. Streams of other
    libraries are borrowed with :func:`as_stream`; a borrowed stream keeps its owner alive
    and never destroys it.

    Args:
        device: a :class:`Device`, an ordinal, or ``None`` for the current device.
        priority: stream priority; lower numbers are higher priority. The valid range is
            the device's (``cuCtxGetStreamPriorityRange``, e.g. -5..0 on H100).
        blocking: synchronize with the legacy default stream as plain ``cudaStreamCreate``
            streams do.
    """

    __slots__ = ("_handle", "_id", "_key", "_device", "_owned", "_owner", "_special", "__weakref__")

    def __init__(self, device=None, *, priority: int = 0, blocking: bool = False):
        index = resolve_device_index(device)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        greatest, least = driver.stream_priority_range(index)
        if not greatest <= priority <= least:
            raise ValueError(
                f"priority {priority} is outside device {index}'s range {greatest}..{least} "
                "(lower numbers are higher priority)"
            )
        flags = 0 if blocking else _STREAM_NON_BLOCKING
        self._handle = driver.stream_create(index, flags, priority)
        self._id = int(self._handle)
        self._key = next(_serials)
        self._device = index
        self._owned = True
        self._owner = None
        self._special = False

    @classmethod
    def _borrow(cls, handle: int, device: int, owner) -> "GpuStream":
        self = object.__new__(cls)
        self._handle = driver.as_stream_handle(handle)
        self._id = handle
        # A borrowed stream keeps its owner alive, so its handle is not reused meanwhile (a
        # raw handle's lifetime is the caller's promise); the special handles name one stream
        # per device.
        self._key = handle + ((device + 1) << 66) if handle in _SPECIAL_HANDLES else handle
        self._device = device
        self._owned = False
        self._owner = owner
        self._special = handle in _SPECIAL_HANDLES
        return self

    # -- properties ---------------------------------------------------------------------
    @property
    def device(self):
        """The :class:`Device` this stream belongs to."""
        from .devices import Device

        return Device(self._device)

    @property
    def handle(self) -> int:
        """The native ``CUstream`` as an integer."""
        self._live()
        return self._id

    @property
    def owned(self) -> bool:
        """True when this object created the native stream and destroys it on close."""
        return self._owned

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._handle is None

    def __cuda_stream__(self):
        """The CUDA stream protocol (version 0), so cuda.core and others can borrow ours."""
        return (0, self.handle)

    def __repr__(self) -> str:
        if self._handle is None:
            return "<GpuStream closed>"
        kind = "owned" if self._owned else "borrowed"
        return f"<GpuStream {kind} device={self._device} handle=0x{self._id:x}>"

    # -- operations ---------------------------------------------------------------------
    def _live(self):
        h = self._handle
        if h is None:
            raise ClosedError("this GpuStream was closed; create a new GpuStream or borrow one with as_stream()")
        return h

    def _call(self, fn, *args):
        """``fn(*args)``, a driver call on this stream, with the device's context current when
        the handle is one of the special ones that name a stream of the current context."""
        if self._special:
            return driver.in_context(self._device, fn, *args)
        return fn(*args)

    def _record(self, event_handle) -> None:
        """Record the native event ``event_handle`` (of this stream's device) here."""
        sh = self._handle
        if sh is None:
            self._live()
        if self._special:
            driver.in_context(self._device, driver.event_record, event_handle, sh)
        else:
            driver.event_record(event_handle, sh)

    def query(self) -> bool:
        """True when all work enqueued so far has finished (never blocks)."""
        return self._call(driver.stream_query, self._live())

    def synchronize(self, timeout: float | None = None, policy=None) -> None:
        """Block the host until all enqueued work has finished.

        With neither ``timeout`` nor ``policy`` this waits in the driver with the GIL
        released; otherwise it polls as ``policy`` says (a :class:`WaitPolicy` or a preset
        name) and raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        timeout = check_timeout(timeout)
        h = self._live()
        if timeout is not None or policy is not None:
            wait_until(self.query, timeout, "GpuStream.synchronize()", resolve_policy(policy))
            return
        self._call(driver.stream_synchronize, h)

    def close(self) -> None:
        """Destroy an owned stream (enqueued work still completes) or drop a borrowed one.

        Closing twice is fine.
        """
        h = self._handle
        if h is None:
            return
        self._handle = None
        self._owner = None
        if self._owned and not state.exiting:
            driver.stream_destroy(h)

    def __enter__(self) -> "GpuStream":
        self._live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Never a driver call in the collecting thread: the collector may run this in a thread
        # that must make none, one that releases streams held on host values (DESIGN.md,
        # "What may run inside a lock"). The finalizer thread destroys the stream.
        h = getattr(self, "_handle", None)
        if h is not None and self._owned and not state.exiting and not state.forked:
            self._handle = None  # the collector may make a finalized object reachable again
            defer(functools.partial(driver.stream_destroy, h))


def _install_stream(hot, cls, python) -> dict:
    hot.install_stream(cls)  # the slots the compiled fast paths read; no method changes
    return {}


compiled.register(GpuStream, (), _install_stream)


def _protocol_handle(obj) -> int:
    try:
        attr = obj.__cuda_stream__
        value = attr() if callable(attr) else attr
    except Exception as exc:
        raise TypeError(f"{type(obj).__name__}.__cuda_stream__ raised {type(exc).__name__}: {exc}; fix the "
                        "object, or pass its raw handle with device=") from exc
    if not (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(
            f"{type(obj).__name__}.__cuda_stream__ gave {value!r}; the protocol requires a tuple "
            "(version, handle) of two ints"
        )
    version, handle = value
    if handle < 0:
        raise ValueError(f"{type(obj).__name__}.__cuda_stream__ gave handle {handle}; a stream handle is a "
                         "non-negative pointer value")
    if version != 0:
        raise ValueError(
            f"{type(obj).__name__}.__cuda_stream__ uses protocol version {version}; cudaevents "
            "understands version 0 (upgrade cudaevents or the library that made the stream)"
        )
    return handle


def _device_attribute_of(obj) -> int | None:
    """The device ordinal a stream object states about itself, if it states one."""
    # CuPy states device_id (-1 on its device-agnostic null stream); torch and cuda.core
    # state a device object with index / device_id.
    candidates = [getattr(obj, "device_id", None)]
    dev = getattr(obj, "device", None)
    if dev is not None:
        candidates += [getattr(dev, "index", None), getattr(dev, "device_id", None)]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _is_module(obj, prefix: str) -> bool:
    module = type(obj).__module__ or ""
    return module == prefix or module.startswith(prefix + ".")


def _torch_identity(obj) -> tuple[int, int | None]:
    return obj.cuda_stream, obj.device_index


def _torch_identity_slow(obj) -> tuple[int, int | None]:
    return obj.cuda_stream, _device_attribute_of(obj)


def _cupy_identity(obj) -> tuple[int, int | None]:
    return obj.ptr, _device_attribute_of(obj)  # device_id: -1 on CuPy's device-agnostic null stream


def _protocol_identity(obj) -> tuple[int, int | None]:
    return _protocol_handle(obj), _device_attribute_of(obj)


_identities: dict[type, object] = {}  # stream type -> the function that reads its identity


def stream_identity(obj) -> tuple[int, int | None] | None:
    """``(raw handle, device ordinal or None)`` of another library's stream object, read
    without creating anything; ``None`` when ``obj`` is no stream object (a raw handle, None,
    or something else). The device is ``None`` when the object does not state one."""
    kind = type(obj)
    read = _identities.get(kind)
    if read is None:
        if _is_module(obj, "torch") and isinstance(getattr(obj, "cuda_stream", None), int):
            has_index = isinstance(getattr(obj, "device_index", None), int)
            read = _torch_identity if has_index else _torch_identity_slow
        elif _is_module(obj, "cupy") and isinstance(getattr(obj, "ptr", None), int):
            read = _cupy_identity
        elif hasattr(kind, "__cuda_stream__"):
            read = _protocol_identity
        elif hasattr(obj, "__cuda_stream__"):  # set on the instance: decided per object
            return _protocol_identity(obj)
        else:
            return None
        _identities[kind] = read
    return read(obj)


def as_stream(obj, device=None) -> GpuStream:
    """Turn anything that is a CUDA stream into a :class:`GpuStream`.

    Accepts a :class:`GpuStream` (returned as is), an object implementing the
    ``__cuda_stream__`` protocol (cuda.core, recent CuPy/PyTorch/Numba), ``torch.cuda.Stream``,
    ``cupy.cuda.Stream``, a raw handle (an int or ``CUstream``) together with ``device=``, or
    ``None`` for the legacy default stream of ``device`` (the current device when omitted).
    A borrowed stream keeps ``obj`` alive as long as the returned object lives.

    Raises:
        TypeError: ``obj`` is not a stream, or a raw handle came without ``device``.
        DeviceMismatchError: ``device`` disagrees with the stream's own device.
    """
    if type(obj) is GpuStream:
        if device is not None and resolve_device_index(device) != obj._device:
            raise DeviceMismatchError(
                f"the stream belongs to device {obj._device}, not device {resolve_device_index(device)}; "
                f"pass device={obj._device}, or leave device= out"
            )
        obj._live()
        return obj
    if obj is None:
        return GpuStream._borrow(0, resolve_device_index(device), None)
    if isinstance(obj, bool):
        raise TypeError("as_stream() got a bool; pass a stream object or a raw handle with device=")
    identity = stream_identity(obj)
    if identity is None:
        if not (isinstance(obj, int) or type(obj).__name__ == "CUstream"):
            raise TypeError(
                f"as_stream() cannot use a {type(obj).__module__}.{type(obj).__qualname__}: expected a "
                "GpuStream, an object with __cuda_stream__ (cuda.core), a torch.cuda.Stream, a "
                "cupy.cuda.Stream, or a raw handle with device="
            )
        handle = int(obj)
        if handle < 0:
            raise ValueError(f"a stream handle is a non-negative pointer value, got {handle}")
        if device is None:
            raise TypeError(
                "as_stream() needs device= with a raw stream handle (a bare pointer does not say "
                "which device it belongs to)"
            )
        return _borrow_checked(handle, resolve_device_index(device), obj)
    handle, stated = identity
    if device is not None:
        wanted = resolve_device_index(device)
        if stated is not None and stated != wanted:
            raise DeviceMismatchError(f"the stream belongs to device {stated}, not device {wanted}; "
                                      f"pass device={stated}, or leave device= out")
        return _borrow_checked(handle, wanted, obj)
    if stated is not None:
        return GpuStream._borrow(handle, stated, obj)
    if handle in _SPECIAL_HANDLES:
        return GpuStream._borrow(handle, resolve_device_index(None), obj)
    return GpuStream._borrow(handle, driver.stream_device(handle), obj)


def _borrow_checked(handle: int, device: int, owner) -> GpuStream:
    if handle not in _SPECIAL_HANDLES:
        actual = driver.stream_device(handle)
        if actual != device:
            raise DeviceMismatchError(f"the stream belongs to device {actual}, not device {device}; "
                                      f"pass device={actual}, or leave device= out")
    return GpuStream._borrow(handle, device, owner)


_helpers: dict[int, GpuStream] = {}
_helpers_lock = threading.Lock()


def helper_stream(device: int) -> GpuStream:
    """The library's own stream on ``device``, for work that must follow a CUDA event and
    nothing else: an Event carrying its CUDA event over to a counter, a counter letting
    stranded GPU waits go after its last signal. Only event waits and their writes go there
    (never a memory wait), so nothing queued there can hold it."""
    s = _helpers.get(device)
    if s is None:
        with _helpers_lock:
            s = _helpers.get(device)
            if s is None:
                s = _helpers[device] = GpuStream(device)
    return s


_torch_now = None  # (torch, its current-device getter, its current-raw-stream getter) once its CUDA runs


def torch_current_stream() -> tuple[int, int] | None:
    """(raw handle, device) of torch's current CUDA stream on its current device when this
    program uses CUDA through torch (torch imported and its CUDA initialized), else None.
    Imports nothing and initializes nothing: a program that has not started torch's CUDA
    has not made another stream current either. (Once it has, two calls into torch's C
    extension answer: this runs at every region that names no stream.)"""
    global _torch_now
    torch = sys.modules.get("torch")
    now = _torch_now
    if now is None or now[0] is not torch:
        cuda = getattr(torch, "cuda", None)
        if cuda is None:
            return None
        try:
            if not cuda.is_initialized():
                return None
            now = _torch_now = (torch, torch._C._cuda_getDevice, torch._C._cuda_getCurrentRawStream)
        except Exception:  # a torch without CUDA, or one in a bad state: not in use
            return None
    try:
        device = now[1]()
        return int(now[2](device)), device
    except Exception:  # e.g. a forked child, where torch's CUDA refuses
        return None


@after_fork_in_child
def _forget_torch_after_fork() -> None:
    # torch's own checks run again in a child (its CUDA refuses a forked child of a parent
    # that used it): never its raw getters there
    global _torch_now
    _torch_now = None
