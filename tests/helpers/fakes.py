"""Stand-ins below and beside the simulated driver (helpers.fake_driver): native event handles
for an EventPool, GPU counter cells, and stream objects as other libraries (or broken ones)
make them."""

from __future__ import annotations

import itertools
import threading


# -- native event handles for EventPool(create=..., destroy=...) ------------------------------
class FakeHandles:
    """A stand-in for native events: numbered handles, with a record of who holds what."""

    def __init__(self):
        self._ids = itertools.count(1)
        self.lock = threading.Lock()
        self.created: list[tuple[int, int, int]] = []
        self.destroyed: list[int] = []
        self.fail_next_create = False

    def create(self, device, flags):
        with self.lock:
            if self.fail_next_create:
                self.fail_next_create = False
                raise RuntimeError("create failed")
            h = next(self._ids)
            self.created.append((h, device, flags))
            return h

    def destroy(self, handle):
        with self.lock:
            self.destroyed.append(handle)


# -- GPU streams of the simulated GPU ------------------------------------------------------------
def fake_stream(handle: int, device: int = 0):
    """A GpuStream of ``handle`` on ``device`` that cudaevents does not own: nothing creates or
    destroys it. With the simulated driver bound, a stream of the simulated GPU."""
    from cudaevents._core.streams import GpuStream

    return GpuStream._borrow(handle, device, None)


# -- GPU counter cells without a GPU -------------------------------------------------------------
class FakeGpuCell:
    """A GPU counter cell (the interface of ``cudaevents._sync.counter_storage``'s cells) whose
    value is a plain int and whose stream operations take effect at once, as if the stream ran
    them immediately; ``ops`` lists the stream operations, releases and retirements.

    ``signals_land=False``: a cell behind failed GPU work, whose stream signals never land.
    ``recycled_value``: what :meth:`retire` stores, as the next owner of a recycled slot would.
    """

    name = "fake"
    limit = 1 << 63
    gpu = True
    shared = False

    def __init__(self, *, signals_land: bool = True, recycled_value: int | None = None):
        self.word = 0
        self.ops: list[tuple] = []
        self._signals_land = signals_land
        self._recycled_value = recycled_value

    def read(self):
        return self.word

    def store(self, value):
        self.word = value

    def gpu_signal(self, stream, value):
        self.ops.append(("signal", value))
        if self._signals_land:
            self.word = value

    def gpu_wait(self, stream, value):
        self.ops.append(("wait", value))

    def release_waiters(self):
        self.ops.append(("release",))
        self.word = self.limit - 1

    def retire(self, fences):
        self.ops.append(("retire", len(fences) if fences is not None else None))
        if self._recycled_value is not None:
            self.word = self._recycled_value  # the slot went back: another counter took it


class FenceStub:
    """Stands in for the CudaEvent fences a counter's close() records on its streams."""

    def __init__(self, device):
        pass

    def record(self, stream):
        return self


def use_fake_gpu_cells(monkeypatch, make_cell=FakeGpuCell):
    """For the rest of the test, ``AtomicEvent(0)`` (and what builds on it) gets a cell from
    ``make_cell()`` and records :class:`FenceStub` fences. Bind the simulated driver too (the
    ``fake_driver`` fixture), so that streams from :func:`fake_stream` never reach a real one.
    Returns :func:`fake_stream`."""
    from cudaevents._core import cuda_event
    from cudaevents._sync import atomic_event, counter_storage

    monkeypatch.setattr(atomic_event, "resolve_device_index", lambda d: int(d))
    monkeypatch.setattr(counter_storage, "choose_backend", lambda index: "fake")
    monkeypatch.setattr(counter_storage, "make_cell", lambda backend, device: make_cell())
    monkeypatch.setattr(cuda_event, "CudaEvent", FenceStub)
    return fake_stream


# -- objects that are (or are not quite) streams -------------------------------------------------
class NotAStream:
    pass


class StreamProtocol:
    """An object with ``__cuda_stream__`` giving ``value`` (or raising it)."""

    def __init__(self, value):
        self.value = value

    def __cuda_stream__(self):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class UnreadableProtocol:
    """An object whose ``__cuda_stream__`` attribute cannot even be read."""

    @property
    def __cuda_stream__(self):
        raise AttributeError("no stream here")


class TorchLikeStream:
    """What cudaevents sees of a torch.cuda.Stream: a handle and a device index."""

    def __init__(self, handle, device_index=0):
        self.cuda_stream, self.device_index = handle, device_index


TorchLikeStream.__module__ = "torch.cuda.streams"


class ProtocolStream:
    """A stream of a library that speaks the ``__cuda_stream__`` protocol, with a device id."""

    def __init__(self, handle, device_id=None):
        self.handle, self.device_id = handle, device_id

    def __cuda_stream__(self):
        return (0, self.handle)
