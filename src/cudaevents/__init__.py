"""cudaevents: the event machinery of a GPU runtime, for Python.

Recycled CUDA events (:class:`CudaEvent` drawing on an :class:`EventPool`), GPU and CPU
streams that take part in the same synchronization, and the devices they run on.
``import cudaevents`` works without a driver or GPU; :func:`is_available` says whether one
can be used.
"""

from ._core.cuda_event import CudaEvent
from ._core.devices import Device, DeviceCapabilities, device_count, is_available
from ._core.errors import (
    ClosedError,
    CreatorClosedError,
    CudaError,
    CudaUnavailableError,
    DeviceMismatchError,
    NotReadyError,
    NotRecordedError,
    NotShareableError,
    PeerError,
)
from ._core.interprocess import IpcEvent
from ._core.pool import EventPool, PoolStats, default_pool
from ._core.streams import GpuStream, as_stream
from ._core.wait import WaitPolicy
from ._profiler.benchmark import BenchmarkResult, benchmark
from ._profiler.profile import profile_timer
from ._profiler.ranks import RankReport, RankReporter, all_gather_results, gather_results
from ._profiler.results import Results, Sample, Stats
from ._profiler.timer import Timer
from ._profiler.torch_layers import LayerTimer
from ._sync.atomic_event import AtomicEvent, atomic_backend
from ._sync.counter_storage import ATOMIC_BACKENDS
from ._sync.cpu_stream import CpuStream
from ._sync.event import Event
from ._sync.fence import Fence
from ._sync.worker import Worker

__version__ = "0.1.0"


__all__ = [
    "ATOMIC_BACKENDS",
    "AtomicEvent",
    "BenchmarkResult",
    "ClosedError",
    "CpuStream",
    "CreatorClosedError",
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
    "IpcEvent",
    "LayerTimer",
    "NotReadyError",
    "NotRecordedError",
    "NotShareableError",
    "PeerError",
    "PoolStats",
    "RankReport",
    "RankReporter",
    "Results",
    "Sample",
    "Stats",
    "Timer",
    "WaitPolicy",
    "Worker",
    "as_stream",
    "all_gather_results",
    "atomic_backend",
    "benchmark",
    "default_pool",
    "device_count",
    "gather_results",
    "is_available",
    "profile_timer",
]
