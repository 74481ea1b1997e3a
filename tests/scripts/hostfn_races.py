"""Two races of the hostfn counter backend, forced on the simulated GPU (helpers.stress_sim):

- fold: the GPU signal that covers a GPU wait lands, and a host read folds it in, between
  AtomicEvent.wait's check and the cell's lookup of a covering event;
- store: a host signal lands while the cell is making the semaphore of a GPU wait;
- close: close() lets stranded GPU waits go while a GPU wait is decided but not yet registered.

Either way the GPU wait must pass; before the fix it waited on a semaphore nobody posts.
Prints "ok <scenario>" per scenario; run by tests/test_counter_ordering.py."""

import os
import sys
import threading
import time

os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = "hostfn"
from helpers import stress_sim  # noqa: E402

stress_sim.install(seed=0)
import cudaevents as ce  # noqa: E402


def passes(stream, what):
    done = ce.CudaEvent().record(stream)
    try:
        done.synchronize(timeout=3)
    except TimeoutError:
        print(f"HANG {what}")
        sys.exit(1)
    print(f"ok {what}")


def fold():
    p, q = ce.GpuStream(0), ce.GpuStream(0)
    a = ce.AtomicEvent(0)
    cell, real = a._cell, a._cell.gpu_wait

    def gpu_wait_after_a_fold(stream, value):
        deadline = time.monotonic() + 5
        while cell.read() < value and time.monotonic() < deadline:  # what another thread's read does
            time.sleep(0.001)
        return real(stream, value)

    a.signal(5, p)
    cell.gpu_wait = gpu_wait_after_a_fold
    a.wait(5, q)
    passes(q, "fold")
    a.close()


def store():
    q = ce.GpuStream(0)
    a = ce.AtomicEvent(0)
    cell = a._cell
    libc = cell._libc

    class SignalWhileMakingTheSemaphore:
        def __getattr__(self, name):
            return getattr(libc, name)

        def new_semaphore(self):
            t = threading.Thread(target=a.signal, args=(5,))
            t.start()
            t.join(5)
            return libc.new_semaphore()

    cell._libc = SignalWhileMakingTheSemaphore()
    a.wait(5, q)
    cell._libc = libc
    passes(q, "store")
    a.close()


def close():
    q = ce.GpuStream(0)
    a = ce.AtomicEvent(0)
    cell, real = a._cell, a._cell.gpu_wait

    def gpu_wait_after_a_close(stream, value):
        t = threading.Thread(target=a.close)
        t.start()
        t.join(5)
        real(stream, value)
        # before wait() returns and close()'s last step (retiring the cell) runs: on a GPU the
        # driver calls left in wait() may block until this host function has returned
        passes(q, "close")

    cell.gpu_wait = gpu_wait_after_a_close
    a.wait(5, q)  # never signalled: the close() meanwhile lets it go


fold()
store()
close()
