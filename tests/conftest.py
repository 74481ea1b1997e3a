"""Shared fixtures: the ``gpu``/``multigpu`` markers skip cleanly where no GPU is present."""

from __future__ import annotations

import pytest

import cudaevents


def pytest_collection_modifyitems(config, items):
    reason = None if cudaevents.is_available() else "no CUDA GPU/driver here"
    count = cudaevents.device_count()
    for item in items:
        if reason and ("gpu" in item.keywords or "multigpu" in item.keywords):
            item.add_marker(pytest.mark.skip(reason=reason))
        elif "multigpu" in item.keywords and count < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs 2 GPUs, {count} present"))


class FakeHandles:
    """A stand-in for native events: numbered handles, with a record of who holds what."""

    def __init__(self):
        import itertools
        import threading

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


@pytest.fixture
def fake():
    return FakeHandles()


@pytest.fixture
def fake_pool(fake):
    return cudaevents.EventPool(create=fake.create, destroy=fake.destroy)


class Latch:
    """Blocks GPU streams on a host-controlled word until :meth:`release`.

    A stream passed to :meth:`block` waits (``cuStreamWaitValue32``, GEQ 1) on a word of
    pinned, device-mapped host memory; work enqueued behind it stays pending, which makes
    "not ready" states deterministic. Keep the work enqueued behind a latch small: the
    driver blocks the enqueuing thread once about a thousand operations queue up behind an
    unsatisfied wait.
    """

    def __init__(self):
        import ctypes

        from cuda.bindings import driver as d

        from cudaevents._core import driver

        self._d = d
        flags = d.CU_MEMHOSTALLOC_PORTABLE | d.CU_MEMHOSTALLOC_DEVICEMAP
        with driver.pushed(0):
            self._host = driver.check(d.cuMemHostAlloc(8, flags), "cuMemHostAlloc")
            self._dptr = driver.check(d.cuMemHostGetDevicePointer(self._host, 0), "cuMemHostGetDevicePointer")
        self._word = ctypes.c_uint32.from_address(int(self._host))
        self._word.value = 0
        self._blocked = []

    def block(self, stream) -> None:
        from cudaevents._core import driver

        flags = self._d.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ
        driver.check(self._d.cuStreamWaitValue32(stream._handle, self._dptr, 1, flags), "cuStreamWaitValue32")
        self._blocked.append(stream)

    def release(self) -> None:
        self._word.value = 1

    def close(self) -> None:
        from cudaevents._core import driver

        self.release()
        for s in self._blocked:
            if not s.closed:
                s.synchronize(timeout=30)
        driver.check(self._d.cuMemFreeHost(self._host), "cuMemFreeHost")


@pytest.fixture
def latch(stream):  # depends on `stream` so that it is released before that stream is synchronized
    lt = Latch()
    yield lt
    lt.close()


@pytest.fixture
def pool():
    p = cudaevents.EventPool()
    yield p
    p.clear()


@pytest.fixture
def stream():
    s = cudaevents.GpuStream(0)
    yield s
    s.synchronize(timeout=30)
    s.close()
