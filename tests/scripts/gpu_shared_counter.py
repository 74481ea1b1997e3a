"""A shared AtomicEvent between GPU streams of processes started with multiprocessing's 'spawn'
method, on GPU 0: ``gpu_shared_counter.py consumers N`` or ``gpu_shared_counter.py killed``.
Prints ``ok ...`` and exits 0 when every check held; every wait has a timeout, every child is
joined with one (killed past it).

Run by tests/test_gpu_shared_counter.py. Needs torch (``torch.cuda._sleep``, the GPU spin that
keeps a signal from landing for a while). ``ready`` counters are how consumers tell the
producer that their GPU waits are enqueued."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

from helpers.spawning import T, expect, joined, spawn

import cudaevents as ce
from cudaevents._core import driver

ROUNDS = 3
SPIN = 200_000_000  # GPU cycles, about 0.1 s: a copy that did not wait would read long before the data lands


def torch_stream():
    """A torch stream of GPU 0 (torch runs the spin kernel), warmed up, and that stream as a
    cudaevents stream."""
    import torch

    ts = torch.cuda.Stream(0)
    with torch.cuda.stream(ts):
        torch.cuda._sleep(1000)            # loads the kernel
    s = ce.as_stream(ts)
    s.synchronize(timeout=T)
    return ts, s


def pinned_word():
    host = driver.mem_host_alloc(8)
    word = ctypes.c_uint64.from_address(host)
    word.value = 0
    return host, word


def page_reader(counter, s):
    """``read()`` enqueues on ``s`` a copy of ``counter``'s value word (in its shared page)
    into a pinned word, returned with the device buffer it goes through.

    Through device memory, never page to pinned memory directly: a copy between two host
    ranges is synchronous with respect to the host even as ``cuMemcpy*Async`` (CUDA's "API
    synchronization behavior"), so behind ``s``'s unsatisfied GPU wait it blocks the calling
    thread until that wait passes; the consumer, which gives ``ready`` only after enqueuing
    the copy, then deadlocks with the producer waiting for ``ready`` (seen on the H200).
    Page to device memory (the page is registered: pinned) and device to pinned memory are
    both asynchronous, in ``s``'s order."""
    host, word = pinned_word()
    dev = driver.mem_alloc(0, 8)
    page = ctypes.addressof(counter._cell._page)  # the value word is the page's first 8 bytes

    def read():
        driver.memcpy_htod_async(dev, page, 8, s.handle)
        driver.memcpy_dtoh_async(host, dev, 8, s.handle)

    return read, word, host, dev


# -- producer and consumers on one GPU -------------------------------------------------------------
def producer(a, data, ready):
    import torch

    ts, s = torch_stream()
    warm = ce.AtomicEvent(0)
    warm.signal(1, s)                      # stream memory operations, once
    warm.wait(1, timeout=T)
    warm.close()
    for r in range(1, ROUNDS + 1):
        for counter in ready:
            counter.wait(r, timeout=T)     # every consumer's GPU wait for r is enqueued
        with torch.cuda.stream(ts):
            torch.cuda._sleep(SPIN)
        data.signal(1000 * r, s)           # the data, then the value the consumers wait for
        a.signal(r, s)
    s.synchronize(timeout=T)
    for counter in (a, data, *ready):
        counter.close()


def consumer(a, data, ready):
    assert a.device is not None and a.device.index == 0 and a.backend in ("mem64", "mem32")
    s = ce.GpuStream(0)
    read, word, host, dev = page_reader(data, s)
    read()                                 # warm-up of the copies
    s.synchronize(timeout=T)
    for r in range(1, ROUNDS + 1):
        a.wait(r, s)
        read()                             # reads the data once r landed (returns at once)
        ready.signal(r)
        s.synchronize(timeout=T)
        assert word.value == 1000 * r, f"round {r}: the copy read {word.value}: it did not wait for the producer"
        a.wait(r, timeout=T)
    for counter in (a, data, ready):
        counter.close()
    s.close()
    driver.mem_free(dev)
    driver.mem_host_free(host)


def consumers(n: str):
    a, data = ce.AtomicEvent(0, shared=True), ce.AtomicEvent(0, shared=True)
    ready = [ce.AtomicEvent(0, shared=True) for _ in range(int(n))]
    procs = [spawn(consumer, a, data, counter) for counter in ready]
    procs.append(spawn(producer, a, data, ready))
    for p in procs:
        joined(p)
    assert a.value == ROUNDS and data.value == 1000 * ROUNDS


# -- a signaller killed while this process's GPU stream waits for it -----------------------------
def signaller(a, ctl):
    _, s = torch_stream()
    a.signal(1, s)
    ctl.signal(1)
    time.sleep(T)                          # killed long before


def killed():
    a, ctl = ce.AtomicEvent(0, shared=True), ce.AtomicEvent(0, shared=True)
    s = ce.GpuStream(0)
    read, _, host, dev = page_reader(a, s)
    read()                                 # warm-up of the copies
    s.synchronize(timeout=T)
    p = spawn(signaller, a, ctl)
    ctl.wait(1, timeout=T)
    a.wait(1, timeout=T)
    a.wait(5, s)                           # only the signaller could give 5
    read()                                 # held behind the wait (returns at once)
    assert not s.query()
    os.kill(p.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    s.synchronize(timeout=T)               # let go by the watcher: no host wait of `a` runs
    assert time.monotonic() - killed_at < 3, "the GPU stream was not let go within 3 s of the death"
    exc = expect(ce.PeerError, a.wait, 5, timeout=T, match=f"process {p.pid}, which shared this AtomicEvent")
    assert exc.died and exc.value == 1, exc
    assert time.monotonic() - killed_at < 3
    a.wait(1, timeout=1)                   # reached before the death
    expect(ce.PeerError, a.wait, 6, s)     # GPU waits enqueued after the death raise at once
    s.synchronize(timeout=T)
    joined(p, -signal.SIGKILL)
    a.close()
    ctl.close()
    s.close()
    driver.mem_free(dev)
    driver.mem_host_free(host)


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    globals()[scenario](*args)
    print("ok", scenario, *args, flush=True)
