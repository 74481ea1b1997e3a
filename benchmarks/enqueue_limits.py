"""How many operations of each kind queue up behind unfinished work before the enqueuing call blocks.

    PYTHONPATH=src python3 benchmarks/enqueue_limits.py [--max 6000] [--out limits.json]

For each kind, a fresh stream is held on the device by a latch (a ``cuStreamWaitValue32`` on a
word of pinned host memory that the host sets later), then operations of that kind are enqueued
one by one behind it. A watchdog thread looks every millisecond: when one enqueue call has been
running for 0.5 s, that call blocked (the driver waits for the GPU to catch up), and the
watchdog opens the latch so the call returns. The garbage collector is off while a kind is
measured, so its pauses do not count as the driver's. The result per kind is the index (1-based) of
the first call that blocked, or "none up to --max", and the longest call that did not block.

Kinds: driver calls one by one (records of blocking-sync, timing and plain events, each a
distinct pooled event; ``cuMemsetD32Async``; ``cuStreamWriteValue64``; ``cuStreamWaitValue64``
for a value already there; ``cuStreamWaitEvent`` on a completed event; ``cuLaunchHostFunc`` of
libc's ``sem_post``), a torch kernel launch where torch is installed, and the library's own
enqueue paths (``Worker.commit``, a Timer region, ``AtomicEvent.signal``/``wait`` on a GPU
stream, a first ``Event.signal``), so the README's limits and the library's use of them come
from one run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import threading
import time

import cudaevents as ce
from cudaevents._core import driver
from common import write_report
from cudaevents._core.cuda_event import BLOCKING_SYNC, DISABLE_TIMING, TIMING_FLAGS
from cudaevents._sync.counter_storage import MemCell

BLOCKED_AFTER_S = 0.5  # far beyond any pause of the interpreter; a blocked call waits for the latch


class _Held:
    """A stream held by a latch, and a watchdog that opens the latch once a call blocks."""

    def __init__(self, device: int):
        self.stream = ce.GpuStream(device)
        self.cell = MemCell(device, 32)
        self.cell.gpu_wait(self.stream.handle, 1)
        self.started = None  # perf_counter of the call in progress
        self.blocked = threading.Event()
        self.done = threading.Event()
        self.watchdog = threading.Thread(target=self._watch, daemon=True)
        self.watchdog.start()

    def _watch(self) -> None:
        while not self.done.is_set():
            t = self.started
            if t is not None and time.perf_counter() - t > BLOCKED_AFTER_S:
                self.blocked.set()
                self.cell.store(1)
                return
            time.sleep(0.001)

    def close(self) -> None:
        self.done.set()
        self.cell.store(1)
        self.stream.synchronize(timeout=60)
        self.watchdog.join(5)
        self.cell.retire([])
        self.stream.close()


def _measure(name: str, enqueue, maximum: int, device: int, after=None) -> dict:
    """Enqueue ``enqueue(stream, i)`` behind a held stream until a call blocks or ``maximum``;
    then ``after()`` (what lets the enqueued work finish besides the latch)."""
    held = _Held(device)
    longest = 0.0
    blocked_at = None
    gc.disable()
    try:
        for i in range(1, maximum + 1):
            held.started = t0 = time.perf_counter()
            enqueue(held.stream, i)
            dt = time.perf_counter() - t0
            held.started = None
            if held.blocked.is_set():
                blocked_at = i
                break
            longest = max(longest, dt)
    finally:
        gc.enable()
        if after is not None:
            after()
        held.close()
    return {"kind": name, "blocked_at": blocked_at, "tried": maximum,
            "longest_unblocked_call_us": round(longest * 1e6, 1)}


def _kinds(device: int, maximum: int):
    pool = ce.EventPool()
    events = {flags: [pool.acquire(device, flags) for _ in range(maximum)]
              for flags in (BLOCKING_SYNC | DISABLE_TIMING, TIMING_FLAGS, DISABLE_TIMING)}
    dev = driver.mem_alloc(device, 1 << 20)
    host_word, word = driver.mem_host_alloc(64, mapped=True)
    ctypes.memset(host_word, 0, 64)
    done = ce.CudaEvent(device)
    done.record(ce.GpuStream(device)).synchronize()
    libc = ctypes.CDLL(None)
    sem = ctypes.create_string_buffer(64)
    libc.sem_init(sem, 0, 0)
    sem_post = ctypes.cast(libc.sem_post, ctypes.c_void_p).value

    def record(flags):
        return lambda s, i: driver.event_record(events[flags][i - 1], s.handle)

    kinds = [
        ("record, blocking-sync event", record(BLOCKING_SYNC | DISABLE_TIMING)),
        ("record, timing event", record(TIMING_FLAGS)),
        ("record, plain event (no timing, not blocking-sync)", record(DISABLE_TIMING)),
        ("cuMemsetD32Async (4 bytes)", lambda s, i: driver.memset_d32_async(dev, i, 1, s.handle)),
        ("cuStreamWriteValue64", lambda s, i: driver.stream_write_value(s.handle, word, i, 64)),
        ("cuStreamWaitValue64 (value already there)", lambda s, i: driver.stream_wait_value(s.handle, word, 0, 64)),
        ("cuStreamWaitEvent (completed event)", lambda s, i: driver.stream_wait_event(s.handle, done.handle)),
        ("cuLaunchHostFunc (libc sem_post)", lambda s, i: driver.launch_host_func(s.handle, sem_post, ctypes.addressof(sem))),
    ]
    created = []

    def destroy_created():
        for h in created:
            driver.event_destroy(h)
        created.clear()

    try:
        import torch

        if torch.cuda.is_available():
            x = torch.zeros(16, device=f"cuda:{device}")

            def launch(s, i, x=x):
                with torch.cuda.stream(torch.cuda.ExternalStream(s.handle, device=x.device)):
                    x.add_(1)

            launch(ce.GpuStream(device), 0)  # loads the kernel before any stream is held
            torch.cuda.synchronize()
            kinds.append(("torch kernel launch (x.add_(1))", launch))
    except ImportError:
        pass

    worker = ce.Worker()
    timer = ce.Timer(harvest_every=1 << 30)
    signalled = ce.AtomicEvent(device)
    waited = ce.AtomicEvent(device)
    kinds = [(name, enqueue, None) for name, enqueue in kinds] + [
        ("cuEventCreate (no timing), while the stream is held",
         lambda s, i: created.append(driver.event_create(device, DISABLE_TIMING)), destroy_created),
        ("cudaevents: Worker.commit (default pool cold)", lambda s, i: (worker.add_task(int), worker.commit(s)), None),
        ("cudaevents: Worker.commit (default pool holds enough events)", lambda s, i: (worker.add_task(int), worker.commit(s)),
         None),
        ("cudaevents: Timer region", lambda s, i: timer.end(timer.begin("r", s)), None),
        ("cudaevents: AtomicEvent.signal(i, stream)", lambda s, i: signalled.signal(i, s), None),
        ("cudaevents: AtomicEvent.wait(i, stream) for a host value", lambda s, i: waited.wait(i, s),
         lambda: waited.signal(maximum)),
        ("cudaevents: Event().signal(stream)", lambda s, i: ce.Event().signal(s), None),
    ]

    def cleanup():
        worker.close(timeout=60)
        signalled.close()
        waited.close()
        timer.results(timeout=60)
        driver.mem_free(dev)
        driver.mem_host_free(host_word)
        for flags, handles in events.items():
            pool.release_many(device, flags, handles)

    return kinds, cleanup


def _ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max", type=int, default=6000, help="operations tried per kind (default 6000)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    ce.Device(args.device).make_current()
    kinds, cleanup = _kinds(args.device, args.max)
    rows = []
    for name, enqueue, after in kinds:
        row = _measure(name, enqueue, args.max, args.device, after)
        rows.append(row)
        at = f"the {_ordinal(row['blocked_at'])}" if row["blocked_at"] else f"none up to {args.max:,}"
        print(f"{name:<72} blocks at {at:<18} longest unblocked call {row['longest_unblocked_call_us']:>8.1f} us",
              flush=True)
    cleanup()
    info = {"device": ce.Device(args.device).name, "driver": driver.driver_version(), "rows": rows}
    write_report(info, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
