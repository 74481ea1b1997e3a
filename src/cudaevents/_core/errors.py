"""Exception classes raised by cudaevents.

Every misuse gets its own class so callers can catch exactly what they mean, and every
message says how to fix the problem.
"""

from __future__ import annotations

__all__ = [
    "CudaError",
    "CudaUnavailableError",
    "ClosedError",
    "NotRecordedError",
    "NotReadyError",
    "DeviceMismatchError",
    "PeerError",
    "CreatorClosedError",
    "NotShareableError",
]


class CudaError(RuntimeError):
    """A CUDA driver call returned an error.

    Attributes:
        call: name of the driver function, e.g. ``"cuEventRecord"``.
        code: the numeric ``CUresult``.
        name: the symbolic name of the code, e.g. ``"CUDA_ERROR_INVALID_HANDLE"``.
    """

    def __init__(self, call: str, code: int, name: str | None = None, detail: str | None = None):
        self.call = call
        self.code = int(code)
        self.name = name or f"CUresult {self.code}"
        self.detail = detail
        msg = f"{call} failed with {self.name} ({self.code})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.call, self.code, self.name, self.detail))


class CudaUnavailableError(RuntimeError):
    """No usable CUDA driver or GPU: the message says which part is missing."""


class ClosedError(RuntimeError):
    """An event, stream or worker was used after ``close()``."""


class NotRecordedError(RuntimeError):
    """Waiting on, querying or timing an event that was never recorded.

    CUDA treats such an event as already complete, which silently orders nothing; we raise
    instead.
    """


class NotReadyError(RuntimeError):
    """A result was asked for before the GPU work it depends on has finished."""


class DeviceMismatchError(ValueError):
    """An object of one device was used with a stream or object of another device."""


class PeerError(ClosedError):
    """Another process that shares something with this one ended without closing it, or
    failed it (a producer's exception there): what it would have signalled may never come.

    For a shared counter, every process sharing it sees the break: waits for values above
    :attr:`value` raise this error, waits for values it had reached by then still return, and
    signals change nothing; the counter stays broken: make a new one. For an interprocess
    event (:class:`~cudaevents.IpcEvent`), its exporter has ended and the event with it.

    Attributes:
        pid: the process that died or failed what it shared.
        died: True when it ended without closing; False when it failed a counter.
        value: a counter's value when the break was seen (0 for an event).
    """

    def __init__(self, message: str, pid: int = 0, died: bool = True, value: int = 0):
        super().__init__(message)
        self.pid, self.died, self.value = pid, died, value

    def __reduce__(self):
        return (type(self), (str(self), self.pid, self.died, self.value))


class CreatorClosedError(ClosedError):
    """A shared counter was received (unpickled) after the process that created it closed it,
    exited or died: its storage is gone for new processes."""


class NotShareableError(TypeError):
    """Something that cannot cross a process boundary was sent to another process: an
    AtomicEvent made without ``shared=True`` or on a backend that cannot be shared, a
    ``CudaEvent`` (send ``ipc_handle()`` of one made with ``interprocess=True``), or an
    :class:`~cudaevents.IpcEvent` received from another process."""
