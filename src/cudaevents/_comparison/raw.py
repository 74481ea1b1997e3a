"""The raw cuda-bindings baselines of the comparison suite: the only code of the suite that
calls ``cuda.bindings`` itself.

Everything else in :mod:`cudaevents._comparison` goes through the public API and the named
wrappers of :mod:`cudaevents._core.driver`. These baselines measure what the bindings' entry
points cost with nothing of ours around them (no wrapper function, no pool, no object), so
they must call those entry points directly: :func:`_bindings` hands them the module, and
nothing outside this module uses it. Errors are checked as the driver's hot wrappers check
them: a non-zero code raises through :func:`cudaevents._core.driver.raise_error`, naming the
call. Each function returns the callables a measurement times.
"""

from __future__ import annotations

from .._core import driver

__all__ = ["create_record_destroy", "host_func_launcher", "mapped_allocations", "pooled_pairs", "record_one"]


def _bindings():
    # The one place the suite takes cuda.bindings.driver: what these baselines measure is the
    # cost of its entry points themselves, which a wrapper of ours would add to.
    return driver.bindings()


def create_record_destroy(device: int, flags: int, stream):
    """``run(n)``: ``n`` times cuEventCreate(flags) + cuEventRecord on ``stream`` (a
    ``CUstream``) + cuEventDestroy, with device ``device``'s context current."""
    d = _bindings()
    create, record, destroy = d.cuEventCreate, d.cuEventRecord, d.cuEventDestroy

    def run(n):
        with driver.pushed(device):
            for _ in range(n):
                err, h = create(flags)
                if err:
                    driver.raise_error(err, "cuEventCreate")
                (err,) = record(h, stream)
                if err:
                    driver.raise_error(err, "cuEventRecord")
                (err,) = destroy(h)
                if err:
                    driver.raise_error(err, "cuEventDestroy")

    return run


def record_one(event, stream):
    """``run(n)``: ``n`` times cuEventRecord of the one pre-created ``event`` on ``stream``."""
    record = _bindings().cuEventRecord

    def run(n):
        for _ in range(n):
            (err,) = record(event, stream)
            if err:
                driver.raise_error(err, "cuEventRecord")

    return run


def pooled_pairs(free: list, stream):
    """``(enqueue, read)`` of raw pooled timing pairs: ``enqueue(n)`` takes two timing
    handles from the list ``free`` per region and records both on ``stream``, returning the
    pairs; ``read(pairs)`` reads every cuEventElapsedTime (NOT_READY until both completed:
    the completion check too) and puts the handles back, returning how many it read."""
    d = _bindings()
    record, elapsed = d.cuEventRecord, d.cuEventElapsedTime

    def enqueue(n):
        pop = free.pop
        pending = []
        for _ in range(n):
            start, end = pop(), pop()
            (err,) = record(start, stream)
            if err:
                driver.raise_error(err, "cuEventRecord")
            (err,) = record(end, stream)
            if err:
                driver.raise_error(err, "cuEventRecord")
            pending.append((start, end))
        return pending

    def read(pending):
        push = free.append
        times = []
        for start, end in pending:
            err, ms = elapsed(start, end)
            if err:
                driver.raise_error(err, "cuEventElapsedTime")
            times.append(ms)
            push(start)
            push(end)
        return len(times)

    return enqueue, read


def mapped_allocations():
    """``(allocate, release)``: ``allocate(n)`` makes ``n`` pinned, device-mapped 8-byte
    allocations, cuMemHostAlloc(8, portable | devicemap) + cuMemHostGetDevicePointer each,
    and returns their host addresses; ``release(hosts)`` frees them (cuMemFreeHost). Call
    them with a context current."""
    d = _bindings()
    alloc, device_pointer, free = d.cuMemHostAlloc, d.cuMemHostGetDevicePointer, d.cuMemFreeHost
    flags = d.CU_MEMHOSTALLOC_PORTABLE | d.CU_MEMHOSTALLOC_DEVICEMAP

    def allocate(n) -> list[int]:
        hosts = []
        for _ in range(n):
            err, host = alloc(8, flags)
            if err:
                driver.raise_error(err, "cuMemHostAlloc")
            hosts.append(host)
            err, _dptr = device_pointer(host, 0)
            if err:
                driver.raise_error(err, "cuMemHostGetDevicePointer")
        return hosts

    def release(hosts: list[int]) -> None:
        for host in hosts:
            (err,) = free(host)
            if err:
                driver.raise_error(err, "cuMemFreeHost")

    return allocate, release


def host_func_launcher():
    """``launch(stream, function_address, argument)`` through the bindings' own
    cuLaunchHostFunc, which wraps the C function in a trampoline of theirs (the wake-up
    measurement probes whether it takes the GIL). The library itself launches through
    ctypes (:func:`cudaevents._core.driver.launch_host_func`)."""
    d = _bindings()
    launch_host_func, host_fn = d.cuLaunchHostFunc, d.CUhostFn

    def launch(stream, function_address: int, argument: int) -> None:
        (err,) = launch_host_func(stream, host_fn(function_address), argument)
        if err:
            driver.raise_error(err, "cuLaunchHostFunc")

    return launch
