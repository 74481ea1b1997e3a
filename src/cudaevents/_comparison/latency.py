"""Latencies for the comparison suite: the CPU -> GPU -> CPU round trip of :class:`AtomicEvent`
and the wake-up of :class:`Worker` tasks after GPU work, each next to its raw floor.

Both measure single events in microseconds, so they sample one event at a time and report
percentiles (the library's rule, :func:`cudaevents._comparison.plumbing.us_stats`) rather
than timing batches. Methods take turns in blocks of samples after a warm-up, starting from a
different one each round (the suite's one loop,
:func:`cudaevents._comparison.plumbing.interleave`), so drifts of the machine hit them alike.
Each function returns a section of the suite's result (see
:mod:`cudaevents._comparison.suite`): plain dicts and lists, ready for JSON.

Round trip (:func:`round_trip`): a GPU stream already waits (``cuStreamWaitValue64``) for the
host's "ping" value and will then write a "pong" value; the clock runs from the host's ping
store until the host sees the pong. The floor does exactly that with the driver's stream
memory operations on 16 bytes of its own pinned memory, read and written through ctypes;
ours does it with ``ping.signal(i)`` and ``pong.wait(i)`` on two AtomicEvents of one backend
(enqueued the same way before the clock starts). ``settle_us`` busy-waits between enqueuing
and the store, so that the GPU has fetched its wait before the clock starts; without it the
host's store can beat the GPU's first look at the wait, and the floor measures a race rather
than a latency.

Wake-up (:func:`worker_wakeup`): each sample holds a stream on a latch, a 32-bit counter slot
of pinned, device-mapped host memory (``MemCell``: ``cuStreamWaitValue32``, GEQ 1), puts the
waiter behind that wait, lets the waiting thread fall asleep (``settle_ms``), then takes
``time.perf_counter_ns()`` immediately before the host store that releases the GPU. The
woken side takes ``perf_counter_ns()`` first thing; the difference is the wake-up latency.
Methods: (a) ``Worker.add_task`` + ``commit``; (b) the floor, a plain Python thread blocked
in ``cuEventSynchronize`` on a ``CU_EVENT_BLOCKING_SYNC`` event recorded behind the wait;
(c) ``cuLaunchHostFunc`` with libc's ``sem_post`` (no Python in the callback) and a thread
blocked in ``sem_wait``, launched through cuda-bindings' own wrapper (a raw-bindings
baseline, :mod:`cudaevents._comparison.raw`) and, as (c'), through ctypes into libcuda (the
library's way). Before measuring (c) and (c'), a probe tells whether that path takes the GIL
on the driver's callback thread: the main thread holds the GIL in ``sem_timedwait`` for 0.3 s
after releasing the GPU, and a callback that needs the GIL cannot post in that time. (d) is a
reference, not a wake-up: the GPU writes a second counter slot right after the wait and the
main thread spins on it, the time for the GPU to see the release and report back with no
thread asleep.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading
import time

from .. import AtomicEvent, GpuStream, Worker, atomic_backend
from .._core import driver
from .._core.cuda_event import BLOCKING_SYNC, DISABLE_TIMING
from .._sync.counter_storage import MemCell
from . import raw
from .plumbing import (
    Cleanup,
    Method,
    add_ratio,
    describe_error,
    interleave,
    section,
    stat_rows,
)

__all__ = ["round_trip", "worker_wakeup"]

perf_ns = time.perf_counter_ns
_WAIT_S = 10.0  # every wait inside a sample gives up after this long
_WAIT_NS = int(_WAIT_S * 1e9)

_LATENCY_COLUMNS = [
    ["label", "method"],
    ["median_us", "median us"],
    ["p90_us", "p90 us"],
    ["p99_us", "p99 us"],
    ["min_us", "min us"],
    ["x_floor", "median / floor"],
]
_LATENCY_FIELDS = ("n", "median_us", "p90_us", "p99_us", "min_us", "mean_us")


def _blocks(samples: int, block: int) -> list[int]:
    """The rounds of :func:`interleave` that take ``samples`` per method, ``block`` at a time."""
    return [min(block, samples - taken) for taken in range(0, samples, block)]


def _sample(methods: list[Method], samples: int, warmup: int, block: int, errors: dict) -> dict[str, list[int]]:
    """Every method's samples (ns): ``warmup`` dropped first, then ``samples`` in blocks."""
    got = interleave(methods, _blocks(samples, block), warmup, errors)
    return {key: [ns for part in parts for ns in part] for key, parts in got.items()}


def _rows(methods: list[Method], samples: dict, keep_samples: bool) -> list[dict]:
    """Median, p90, p99, min and mean per method (us), and both over the floor's."""
    rows = stat_rows(methods, samples, _LATENCY_FIELDS)
    if keep_samples:
        for r in rows:
            r["samples_ns"] = samples[r["key"]]
    add_ratio(rows, "x_floor", "floor")
    return add_ratio(rows, "p90_x_floor", "floor", field="p90_us")


# -- CPU -> GPU -> CPU round trip -------------------------------------------------------------
def _settle(us: float) -> None:
    """Busy-wait ``us`` microseconds (so the GPU has fetched its wait before the clock starts)."""
    end = perf_ns() + int(us * 1000)
    while perf_ns() < end:
        pass


@contextlib.contextmanager
def _forced_backend(backend: str):
    """Set ``CUDAEVENTS_ATOMIC_BACKEND`` for the block (AtomicEvent reads it when created)."""
    name = "CUDAEVENTS_ATOMIC_BACKEND"
    before = os.environ.get(name)
    os.environ[name] = backend
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _round_trips(settle_us: float, enqueue, answer):
    """``run(n)`` of a round-trip method, ``n`` samples (ns): for each next value ``i``,
    ``enqueue(i)`` puts on the GPU its wait for ping >= i and its store of pong = i (untimed),
    ``settle_us`` passes, then the clock runs around ``answer(i)``, the host's ping store and
    its wait for the pong."""
    values = itertools.count(1)

    def run(n: int) -> list[int]:
        out = []
        for i in itertools.islice(values, n):
            enqueue(i)
            _settle(settle_us)
            t0 = perf_ns()
            answer(i)
            out.append(perf_ns() - t0)
        return out

    return run


def _raw_round_trip(device: int, settle_us: float, cleanup: Cleanup):
    """``run(n)`` of the floor: cuStreamWaitValue64 and cuStreamWriteValue64 (the driver's
    named wrappers: the enqueuing is not timed) on 16 bytes of pinned, device-mapped memory
    of its own, a host store and a host spin."""
    stream = GpuStream(device)
    cleanup.add(stream.close)
    h = driver.as_stream_handle(stream.handle)
    host, dev = driver.mem_host_alloc(16, mapped=True)
    ping = ctypes.c_uint64.from_address(host)
    pong = ctypes.c_uint64.from_address(host + 8)
    ping.value = pong.value = 0

    def release() -> None:
        ping.value = 1 << 62  # satisfies any wait still enqueued
        stream.synchronize(timeout=_WAIT_S)  # raises if stuck: then the memory is leaked, not freed in use
        driver.mem_host_free(host)

    cleanup.add(release)

    def enqueue(i: int) -> None:
        driver.stream_wait_value(h, dev, i, 64)  # GEQ
        driver.stream_write_value(h, dev + 8, i, 64)

    def answer(i: int) -> None:
        ping.value = i
        start, k = perf_ns(), 0
        while pong.value < i:
            k += 1
            if not k & 0xFFFF and perf_ns() - start > _WAIT_NS:
                raise TimeoutError(f"the GPU did not answer within {_WAIT_S:g} s")

    return _round_trips(settle_us, enqueue, answer)


def _atomic_round_trip(device: int, backend: str, policy: str, settle_us: float, cleanup: Cleanup):
    """``run(n)`` of the same round trip through two AtomicEvents of ``backend``, the host
    waiting with ``policy``."""
    stream = GpuStream(device)
    cleanup.add(stream.close)
    cleanup.add(stream.synchronize, timeout=_WAIT_S)
    with _forced_backend(backend):
        ping = AtomicEvent(device)
        cleanup.add(ping.close)  # lets GPU waits still pending go
        pong = AtomicEvent(device)
        cleanup.add(pong.close)

    def enqueue(i: int) -> None:
        ping.wait(i, stream)
        pong.signal(i, stream)

    def answer(i: int) -> None:
        ping.signal(i)
        pong.wait(i, timeout=_WAIT_S, policy=policy)

    return _round_trips(settle_us, enqueue, answer)


def round_trip(samples: int = 2000, warmup: int = 200, block: int = 50, settle_us: float = 50.0,
               device: int = 0, backends=None, policies=("spin", "sleep"),
               keep_samples: bool = False) -> dict:
    """The CPU -> GPU -> CPU round trip of AtomicEvent against the raw floor (see module doc).

    Args:
        samples: samples per method; ``warmup`` more are taken first and dropped.
        block: samples per method before switching to the next.
        settle_us: busy-wait between enqueuing and the host's store.
        device: the device ordinal.
        backends: AtomicEvent backends to measure (default: every GPU backend the device
            supports: ``mem64``, ``mem32``, ``hostfn``); unsupported ones are skipped.
        policies: host wait policies for ``pong.wait``.
        keep_samples: keep every sample (ns) in the rows as ``samples_ns``.

    Returns:
        A suite section: ``title``, ``what``, ``columns``, ``rows`` (one per method, with
        median, p90, p99, min and mean in us and their ratios to the floor), ``notes``,
        ``skipped``, ``errors``, ``info``.
    """
    default = atomic_backend(device)
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    methods: list[Method] = []
    with Cleanup(errors) as cleanup:
        try:
            methods.append(Method("floor", "raw floor: cuStreamWaitValue64 + cuStreamWriteValue64, host store and spin",
                                  _raw_round_trip(device, settle_us, cleanup)))
        except Exception as exc:  # noqa: BLE001 - reported; ours still runs
            errors["floor"] = describe_error(exc)
        for backend in backends or ("mem64", "mem32", "hostfn"):
            for policy in policies:
                key = f"atomic_{backend}_{policy}"
                label = f"AtomicEvent {backend}{' (default)' if backend == default else ''}, policy {policy}"
                try:
                    methods.append(Method(key, label, _atomic_round_trip(device, backend, policy, settle_us, cleanup),
                                          ours=True))
                except Exception as exc:  # noqa: BLE001 - e.g. a backend this device cannot use
                    skipped[key] = describe_error(exc)
        got = _sample(methods, samples, warmup, block, errors)
    return section(
        "CPU -> GPU -> CPU round trip",
        ("time from the host's store of a value a GPU stream waits for, until the host sees the value that stream "
         "writes next; single samples in us"),
        _LATENCY_COLUMNS, _rows(methods, got, keep_samples),
        notes=[(f"{samples} samples per method after {warmup} warm-up, interleaved in blocks of {block}; "
                f"{settle_us:g} us settle between enqueuing and the host's store"),
               f"AtomicEvent's default backend on device {device}: {default}"],
        skipped=skipped, errors=errors,
        info={"samples": samples, "warmup": warmup, "block": block, "settle_us": settle_us,
              "default_backend": default, "device": device})


# -- GPU completion -> Python wake-up ----------------------------------------------------------
class _Gate:
    """What the wake-up samples' stream waits on: a latch, a 32-bit counter slot
    (:class:`MemCell`) that the GPU waits on until the host opens it, and a second slot the
    GPU writes for the spin reference."""

    def __init__(self, device: int):
        self.latch = MemCell(device, 32)
        self.flag = MemCell(device, 32)

    def hold(self, stream) -> None:
        """Close the latch and make ``stream`` wait until the host opens it."""
        self.latch.store(0)
        self.latch.gpu_wait(stream, 1)

    def open(self) -> None:
        """Let every wait on the latch go (the host store the samples time)."""
        self.latch.store(1)

    def retire(self) -> None:
        """Give both slots back (only once no stream can still reach them)."""
        self.latch.retire([])
        self.flag.retire([])


def _drain(gate: _Gate, stream: GpuStream) -> None:
    """Let the GPU go and wait until the stream has finished everything it was given."""
    gate.open()
    stream.synchronize(timeout=_WAIT_S)


def _free_when_idle(gate: _Gate, stream: GpuStream) -> None:
    """Close the stream and give the gate's slots back, once the stream is idle."""
    _drain(gate, stream)  # raises when the stream is stuck: then stream and slots are leaked, not freed in use
    stream.close()
    gate.retire()


class _SpinReference:
    key, label, ours, spin = "spin", "(d) reference: host spins on a GPU-written word", False, True

    def __init__(self, gate: _Gate, stream):
        self.gate, self.stream = gate, stream

    def arm(self) -> None:
        self.gate.flag.store(0)
        self.gate.flag.gpu_signal(self.stream, 1)

    def close(self) -> None:
        pass


class _WorkerWakeup:
    key, label, ours, spin = "worker", "(a) cudaevents.Worker", True, False

    def __init__(self, stream: GpuStream):
        self.stream = stream
        self.worker = Worker(name="cudaevents-bench-worker")
        self.done = threading.Event()
        self.t1 = 0

    def _task(self) -> None:
        self.t1 = perf_ns()
        self.done.set()

    def arm(self) -> None:
        self.done.clear()
        self.worker.add_task(self._task)
        self.worker.commit(self.stream)

    def close(self) -> None:
        self.worker.close(timeout=_WAIT_S)
        if self.worker.errors:
            raise RuntimeError(f"worker tasks failed: {self.worker.errors!r}")


class _BlockedThread:
    key, label, ours, spin = "floor", "(b) floor: thread in cuEventSynchronize (blocking sync)", False, False

    def __init__(self, device: int, stream):
        self.stream = stream
        self.event = driver.event_create(device, BLOCKING_SYNC | DISABLE_TIMING)
        self.go = threading.Semaphore(0)
        self.done = threading.Event()
        self.t1 = 0
        self.stop = False
        self.error = None
        self.thread = threading.Thread(target=self._loop, name="cudaevents-bench-floor", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        sync, event = driver.event_synchronize, self.event
        while True:
            self.go.acquire()
            if self.stop:
                return
            try:
                sync(event)  # the bindings release the GIL for the call
            except Exception as exc:  # noqa: BLE001 - raised by close()
                self.error = exc
            self.t1 = perf_ns()
            self.done.set()

    def arm(self) -> None:
        self.done.clear()
        driver.event_record(self.event, self.stream)
        self.go.release()

    def close(self) -> None:
        self.stop = True
        self.go.release()
        self.thread.join(_WAIT_S)
        driver.event_destroy(self.event)
        if self.error is not None:
            raise self.error


class _Libc:
    """libc's semaphores, through ctypes.CDLL (calls release the GIL) and ctypes.PyDLL
    (calls keep it)."""

    def __init__(self):
        self.cdll = ctypes.CDLL(None, use_errno=True)
        self.pydll = ctypes.PyDLL(None, use_errno=True)
        for lib in (self.cdll, self.pydll):
            for name in ("sem_init", "sem_wait", "sem_post", "sem_destroy", "sem_timedwait"):
                getattr(lib, name).restype = ctypes.c_int
            lib.sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
            lib.sem_wait.argtypes = lib.sem_post.argtypes = lib.sem_destroy.argtypes = [ctypes.c_void_p]
            lib.sem_timedwait.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.sem_post_address = ctypes.cast(self.cdll.sem_post, ctypes.c_void_p).value

    def new_semaphore(self):
        sem = (ctypes.c_long * 8)()  # 64 bytes, 8-byte aligned: larger than any sem_t
        if self.cdll.sem_init(sem, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "sem_init failed")
        return sem


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _HostFuncWakeup:
    ours, spin = False, False

    def __init__(self, libc: _Libc, launch, stream, key: str, label: str):
        self.key, self.label = key, label
        self.libc = libc
        self.launch = launch
        self.stream = stream
        self.sem = libc.new_semaphore()
        self.sem_address = ctypes.addressof(self.sem)
        self.go = threading.Semaphore(0)
        self.done = threading.Event()
        self.t1 = 0
        self.stop = False
        self.thread = threading.Thread(target=self._loop, name=f"cudaevents-bench-{key}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        sem_wait, sem = self.libc.cdll.sem_wait, self.sem
        while True:
            self.go.acquire()
            if self.stop:
                return
            sem_wait(sem)  # a ctypes.CDLL call: the GIL is released while it blocks
            self.t1 = perf_ns()
            self.done.set()

    def arm(self) -> None:
        self.done.clear()
        self.launch(self.stream, self.libc.sem_post_address, self.sem_address)
        self.go.release()

    def close(self) -> None:
        self.stop = True
        self.go.release()
        self.thread.join(_WAIT_S)
        self.libc.cdll.sem_destroy(self.sem)


def _callback_needs_gil(libc: _Libc, launch, gate: _Gate, stream, hold_s: float = 0.3) -> bool:
    """True when the host function launched by ``launch`` cannot run while another thread
    holds the GIL, i.e. the launch path wraps the C function in a GIL-taking trampoline."""
    sem = libc.new_semaphore()
    try:
        gate.hold(stream)
        launch(stream, libc.sem_post_address, ctypes.addressof(sem))
        time.sleep(0.002)
        deadline = time.time() + hold_s
        ts = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        gate.open()
        if libc.pydll.sem_timedwait(sem, ctypes.byref(ts)) == 0:  # holds the GIL all along
            return False
        deadline = time.time() + _WAIT_S
        ts = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        if libc.cdll.sem_timedwait(sem, ctypes.byref(ts)) != 0:  # GIL released: the callback can finish
            raise TimeoutError(f"the host function did not run within {_WAIT_S:g} s")
        return True
    finally:
        gate.open()  # never leave the stream held, whatever failed
        try:
            driver.stream_synchronize(stream)  # the host function has run: the semaphore may go
        finally:
            libc.cdll.sem_destroy(sem)


def _sampler(waiter, gate: _Gate, stream, settle_s: float):
    """``run(n)``: ``n`` wake-up samples (ns) of ``waiter`` (see the module doc)."""

    def one() -> int:
        gate.hold(stream)
        waiter.arm()
        time.sleep(settle_s)  # the waiter falls asleep in its wait
        if waiter.spin:
            read = gate.flag.read
            t0 = perf_ns()
            gate.open()
            k = 0
            while not read():
                k += 1
                if not k & 0xFFFF and perf_ns() - t0 > _WAIT_NS:
                    raise TimeoutError(f"{waiter.label}: the GPU did not write within {_WAIT_S:g} s")
            return perf_ns() - t0
        t0 = perf_ns()
        gate.open()  # releases the GPU
        if not waiter.done.wait(_WAIT_S):
            raise TimeoutError(f"{waiter.label}: no wake-up within {_WAIT_S:g} s")
        return waiter.t1 - t0

    def run(n: int) -> list[int]:
        return [one() for _ in range(n)]

    return run


def worker_wakeup(samples: int = 1000, warmup: int = 100, block: int = 100, settle_ms: float = 1.0,
                  device: int = 0, keep_samples: bool = False) -> dict:
    """Wake-up latency from GPU completion to Python code: Worker against a thread blocked
    in a blocking-sync ``cuEventSynchronize``, host functions and a spinning host (see
    module doc).

    Args:
        samples: samples per method; ``warmup`` more are taken first and dropped.
        block: samples per method before switching to the next.
        settle_ms: sleep between arming a waiter and releasing the GPU.
        device: the device ordinal.
        keep_samples: keep every sample (ns) in the rows as ``samples_ns``.

    Returns:
        A suite section, as :func:`round_trip` returns.
    """
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    notes = [(f"{samples} samples per method after {warmup} warm-up, interleaved in blocks of {block}; "
              f"the waiter sleeps {settle_ms:g} ms before the GPU is released")]
    info: dict = {"samples": samples, "warmup": warmup, "block": block, "settle_ms": settle_ms, "device": device}
    methods: list[Method] = []
    got: dict[str, list[int]] = {}
    with driver.pushed(device), Cleanup(errors) as cleanup:
        gate = _Gate(device)
        stream = GpuStream(device)
        cleanup.add(_free_when_idle, gate, stream)  # last of all
        raw_stream = driver.as_stream_handle(stream.handle)
        settle = settle_ms / 1e3

        def add(key: str, make) -> None:
            try:
                waiter = make()
            except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
                errors[key] = describe_error(exc)
                return
            cleanup.add(waiter.close)
            methods.append(Method(waiter.key, waiter.label, _sampler(waiter, gate, raw_stream, settle),
                                  ours=waiter.ours))

        add("worker", lambda: _WorkerWakeup(stream))
        add("floor", lambda: _BlockedThread(device, raw_stream))
        for key, label, launcher in (
            ("hostfn_bindings", "(c) cuLaunchHostFunc(sem_post), cuda-bindings", raw.host_func_launcher),
            ("hostfn_ctypes", "(c') cuLaunchHostFunc(sem_post), ctypes -> libcuda", lambda: driver.launch_host_func),
        ):  # the ctypes path is the library's own: straight into libcuda, no trampoline, no GIL
            try:
                libc = _Libc()
                launch = launcher()
                gil = _callback_needs_gil(libc, launch, gate, raw_stream)
            except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
                skipped[key] = describe_error(exc)
                continue
            info[f"{key}_callback_takes_gil"] = gil
            if gil:
                notes.append(f"{label}: the callback thread takes the GIL before calling the C function "
                             "(a trampoline in the bindings), so it also carries the GIL/driver-lock "
                             "deadlock risk")
                label += " [takes GIL]"
            add(key, lambda libc=libc, launch=launch, key=key, label=label:
                _HostFuncWakeup(libc, launch, raw_stream, key, label))
        add("spin", lambda: _SpinReference(gate, raw_stream))
        cleanup.add(_drain, gate, stream)  # first: the GPU goes before any waiter closes
        got = _sample(methods, samples, warmup, block, errors)
    rows = _rows(methods, got, keep_samples)
    spin = next((r for r in rows if r["key"] == "spin"), None)
    if spin is not None:
        notes.append("median wake-up cost beyond the spin reference: "
                     + ", ".join(f"{r['key']} {r['median_us'] - spin['median_us']:.1f} us"
                                 for r in rows if r["key"] != "spin"))
    return section(
        "GPU completion -> Python wake-up",
        ("time from the host store that lets the GPU finish a stream's work until Python code waiting for that work "
         "runs; single samples in us"),
        _LATENCY_COLUMNS, rows, notes=notes, skipped=skipped, errors=errors, info=info)
