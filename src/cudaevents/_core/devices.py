"""Devices: ordinal validation, make-current, names and capabilities read once."""

from __future__ import annotations

import dataclasses
import functools
import threading

from . import driver
from .errors import CudaUnavailableError

__all__ = ["Device", "DeviceCapabilities", "device_count", "is_available"]


def is_available() -> bool:
    """True when a CUDA driver and at least one GPU can be used; never raises."""
    return driver.is_usable()


def device_count() -> int:
    """Number of visible CUDA devices; 0 when CUDA is unavailable (never raises)."""
    try:
        return driver.device_count()
    except CudaUnavailableError:
        return 0


@dataclasses.dataclass(frozen=True)
class DeviceCapabilities:
    """What a device supports that event machinery cares about (read once per device).

    Attributes:
        stream_mem_ops_32: ``cuStreamWaitValue32``/``cuStreamWriteValue32`` (on by default
            since CUDA 12.0).
        stream_mem_ops_64: the 64-bit variants (``CAN_USE_64_BIT_STREAM_MEM_OPS``).
        stream_wait_value_nor: the ``CU_STREAM_WAIT_VALUE_NOR`` flag.
        concurrent_managed_access: CPU and GPU may touch managed memory at once.
        host_native_atomics: atomics between host and device are native (e.g. NVLink-C2C).
        can_map_host_memory: pinned host memory can be mapped into the device address space.
        ipc_events: events can be shared between processes.
    """

    stream_mem_ops_32: bool
    stream_mem_ops_64: bool
    stream_wait_value_nor: bool
    concurrent_managed_access: bool
    host_native_atomics: bool
    can_map_host_memory: bool
    ipc_events: bool


_devices: dict[int, "Device"] = {}
_devices_lock = threading.Lock()


class Device:
    """A CUDA device by ordinal. ``Device(i)`` returns the same object for the same ``i``.

    Raises:
        CudaUnavailableError: no driver or no GPU.
        ValueError: ``index`` is outside ``range(device_count())``.
    """

    __slots__ = ("_index", "__dict__", "__weakref__")

    def __new__(cls, index: int = 0):
        if isinstance(index, Device):
            return index
        dev = _devices.get(index) if type(index) is int else None
        if dev is not None:
            return dev
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"Device() takes an integer ordinal, got {type(index).__name__}")
        count = driver.device_count()
        if not 0 <= index < count:
            valid = "there are no devices" if count == 0 else f"valid ordinals are 0..{count - 1}"
            raise ValueError(f"Device({index}) does not exist: {valid}")
        with _devices_lock:
            dev = _devices.get(index)
            if dev is None:
                dev = object.__new__(cls)
                dev._index = index
                _devices[index] = dev
        return dev

    @property
    def index(self) -> int:
        """The device ordinal."""
        return self._index

    def __int__(self) -> int:
        return self._index

    def __index__(self) -> int:
        return self._index

    def __repr__(self) -> str:
        return f"Device({self._index})"

    def __reduce__(self):
        return (Device, (self._index,))

    @functools.cached_property
    def name(self) -> str:
        """Name reported by the driver, e.g. ``"NVIDIA H100 80GB HBM3"``."""
        return driver.device_name(self._index)

    @functools.cached_property
    def compute_capability(self) -> tuple[int, int]:
        """``(major, minor)``."""
        return (
            driver.device_attribute(self._index, "COMPUTE_CAPABILITY_MAJOR"),
            driver.device_attribute(self._index, "COMPUTE_CAPABILITY_MINOR"),
        )

    @functools.cached_property
    def total_memory(self) -> int:
        """Total device memory in bytes."""
        return driver.device_total_memory(self._index)

    @functools.cached_property
    def capabilities(self) -> DeviceCapabilities:
        """The device's :class:`DeviceCapabilities`, read from the driver once."""
        attr = functools.partial(driver.device_attribute, self._index)
        return DeviceCapabilities(
            # Since CUDA 12.0 the 32-bit operations are always enabled; the old attribute is gone.
            stream_mem_ops_32=driver.driver_version() >= 12000,
            stream_mem_ops_64=bool(attr("CAN_USE_64_BIT_STREAM_MEM_OPS")),
            stream_wait_value_nor=bool(attr("CAN_USE_STREAM_WAIT_VALUE_NOR")),
            concurrent_managed_access=bool(attr("CONCURRENT_MANAGED_ACCESS")),
            host_native_atomics=bool(attr("HOST_NATIVE_ATOMIC_SUPPORTED")),
            can_map_host_memory=bool(attr("CAN_MAP_HOST_MEMORY")),
            ipc_events=bool(attr("IPC_EVENT_SUPPORTED")),
        )

    def make_current(self) -> "Device":
        """Make this device's primary context current on the calling thread (as
        ``cudaSetDevice`` does); returns ``self``."""
        driver.make_current(self._index)
        return self

    def synchronize(self) -> None:
        """Wait on the host until all work on this device has finished."""
        driver.device_synchronize(self._index)


def resolve_device_index(device) -> int:
    """Ordinal for ``device`` (a :class:`Device`, an int, or ``None`` for the current one)."""
    if device is None:
        current = driver.current_device_index()
        return 0 if current is None else current
    if type(device) is Device:
        return device._index
    return Device(device)._index
