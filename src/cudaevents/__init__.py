"""cudaevents: the event machinery of a GPU runtime, for Python.

Recycled CUDA events (:class:`CudaEvent` drawing on an :class:`EventPool`), GPU and CPU
streams that take part in the same synchronization, and the devices they run on.
``import cudaevents`` works without a driver or GPU; :func:`is_available` says whether one
can be used.
"""

from ._atomic import AtomicEvent, atomic_backend
from ._bench import BenchmarkResult, benchmark
from ._cells import BACKENDS as ATOMIC_BACKENDS
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
from ._fence import Fence
from ._pool import EventPool, PoolStats, default_pool
from ._profile import profile_timer
from ._results import Results, Sample, Stats
from ._stream import GpuStream, as_stream
from ._timer import Timer
from ._torch_layers import LayerTimer
from ._value_event import Event
from ._wait import WaitPolicy
from ._worker import Worker

__version__ = "0.1.0"


__all__ = [
    "ATOMIC_BACKENDS",
    "AtomicEvent",
    "BenchmarkResult",
    "ClosedError",
    "CpuStream",
    "CudaError",
    "CudaEvent",
    "CudaUnavailableError",
    "Device",
    "DeviceCapabilities",
    "DeviceMismatchError",
    "Event",
    "EventPool",
    "Fence",
    "GpuStream",
    "LayerTimer",
    "NotReadyError",
    "NotRecordedError",
    "PoolStats",
    "Results",
    "Sample",
    "Stats",
    "Timer",
    "WaitPolicy",
    "Worker",
    "as_stream",
    "atomic_backend",
    "benchmark",
    "default_pool",
    "device_count",
    "is_available",
    "profile_timer",
]
