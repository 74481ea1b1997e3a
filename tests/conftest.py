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
