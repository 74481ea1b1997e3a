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
    "PeerDiedError",
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


class PeerDiedError(RuntimeError):
    """Another process that an interprocess event or a shared counter depends on has ended
    without closing what it shared: what it would have signalled will not come."""
