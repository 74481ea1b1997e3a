"""cudaevents: the event machinery of a GPU runtime, for Python.

Recycled CUDA events (:class:`CudaEvent` drawing on an :class:`EventPool`), GPU and CPU
streams that take part in the same synchronization, and the devices they run on.
``import cudaevents`` works without a driver or GPU; :func:`is_available` says whether one
can be used.
"""

from ._cpu_stream import CpuStream
from ._device import Device, DeviceCapabilities, device_count, is_available
from ._errors import (
    ClosedError,
    CudaError,
    CudaUnavailableError,
    DeviceMismatchError,
    NotReadyError,
    NotRecordedError,
)
from ._event import CudaEvent
from ._pool import EventPool, PoolStats, default_pool
from ._stream import GpuStream, as_stream

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "CpuStream",
    "CudaError",
    "CudaEvent",
    "CudaUnavailableError",
    "Device",
    "DeviceCapabilities",
    "DeviceMismatchError",
    "EventPool",
    "GpuStream",
    "NotReadyError",
    "NotRecordedError",
    "PoolStats",
    "as_stream",
    "default_pool",
    "device_count",
    "is_available",
]
