"""A latch: GPU streams blocked on a host-controlled word, for deterministic "not ready" states.

Built on the library's own counter storage: a 32-bit slot of pinned, device-mapped host memory
(``counter_storage.MemCell(device, 32)``, so the device needs 32-bit stream memory
operations). A stream passed to :meth:`Latch.block` waits on the device
(``cuStreamWaitValue32``, GEQ 1) until :meth:`Latch.release` stores 1; work enqueued behind it
stays pending. Keep that work small: the driver blocks the enqueuing thread once about a
thousand operations queue up behind an unsatisfied wait.
"""

from __future__ import annotations

import ctypes
import os


class Latch:
    """Blocks GPU streams until :meth:`release` (or, with ``release_after``, until the device
    releases them itself that many seconds after the first :meth:`block`)."""

    def __init__(self, device: int = 0, *, release_after: int | None = None):
        from cudaevents._sync.counter_storage import MemCell

        self._device = device
        self._cell = MemCell(device, 32)  # its word starts at 0: every wait on it blocks
        self._blocked: list = []
        self._release_after = release_after
        self._releaser = None

    @classmethod
    def for_exit(cls, device: int = 0) -> Latch:
        """A latch for a script that exits with streams blocked on it: nobody releases it, so
        the work behind it is still pending when the process exits.

        compute-sanitizer waits for the device when the process ends, so under it a latch that
        is never released would keep the process alive forever. There
        (``LATCH_RELEASE_SECONDS`` set) the device releases it itself, that many seconds after
        the first block: see :meth:`block`. The script has exited with its work pending long
        before that."""
        seconds = int(os.environ.get("LATCH_RELEASE_SECONDS", "0"))
        return cls(device, release_after=seconds or None)

    def block(self, stream) -> None:
        """Make ``stream`` (a GpuStream) wait on the device until the latch is released."""
        if self._release_after and self._releaser is None:
            self._release_on_device(self._release_after)
        self._cell.gpu_wait(stream._handle, 1)
        self._blocked.append(stream)

    def _release_on_device(self, seconds: int) -> None:
        # A stream of its own runs libc's sleep() as a host function (C, no Python: it does
        # not care whether the interpreter is still there), then writes the word.
        import cudaevents
        from cudaevents._core import driver

        self._releaser = cudaevents.GpuStream(self._device)
        libc_sleep = ctypes.cast(ctypes.CDLL(None).sleep, ctypes.c_void_p).value
        driver.launch_host_func(self._releaser._handle, libc_sleep, seconds)
        self._cell.gpu_signal(self._releaser._handle, 1)

    def release(self) -> None:
        """Let every stream blocked on the latch go on (from any thread)."""
        self._cell.store(1)

    def close(self) -> None:
        """Release, wait (30 s at most) until every blocked stream has passed the wait, and
        hand the slot back. A stream closed meanwhile cannot be waited for: then the slot is
        never reused (a stream may still be about to read it)."""
        self.release()
        passed = True
        for s in self._blocked:
            if s.closed:
                passed = False
            else:
                s.synchronize(timeout=30)
        self._cell.retire([] if passed else None)
