"""Latencies for the comparison suite: the CPU -> GPU -> CPU round trip of :class:`AtomicEvent`
and the wake-up of :class:`Worker` tasks after GPU work, each next to its raw floor.

Both measure single events in microseconds, so they sample one event at a time and report
percentiles rather than timing batches. Methods run in interleaved blocks after a warm-up,
so drifts of the machine hit them alike. Each function returns a section of the suite's
result (see :mod:`cudaevents._suite`): plain dicts and lists, ready for JSON.

Round trip (:func:`round_trip`): a GPU stream already waits (``cuStreamWaitValue64``) for the
host's "ping" value and will then write a "pong" value; the clock runs from the host's ping
store until the host sees the pong. The floor does exactly that with cuda-bindings and
ctypes; ours does it with ``ping.signal(i)`` and ``pong.wait(i)`` on two AtomicEvents of
one backend (enqueued the same way before the clock starts). ``settle_us`` busy-waits
between enqueuing and the store, so that the GPU has fetched its wait before the clock
starts; without it the host's store can beat the GPU's first look at the wait, and the
floor measures a race rather than a latency.

Wake-up (:func:`worker_wakeup`): each sample holds a stream on a 32-bit word of pinned,
device-mapped host memory (``cuStreamWaitValue32``, GEQ 1), puts the waiter behind that
wait, lets the waiting thread fall asleep (``settle_ms``), then takes
``time.perf_counter_ns()`` immediately before the host store that releases the GPU. The
woken side takes ``perf_counter_ns()`` first thing; the difference is the wake-up latency.
Methods: (a) ``Worker.add_task`` + ``commit``; (b) the floor, a plain Python thread blocked
in ``cuEventSynchronize`` on a ``CU_EVENT_BLOCKING_SYNC`` event recorded behind the wait;
(c) ``cuLaunchHostFunc`` with libc's ``sem_post`` (no Python in the callback) and a thread
blocked in ``sem_wait``, launched through cuda-bindings and, as (c'), through ctypes into
libcuda. Before measuring (c) and (c'), a probe tells whether that path takes the GIL on the
driver's callback thread: the main thread holds the GIL in ``sem_timedwait`` for 0.3 s after
releasing the GPU, and a callback that needs the GIL cannot post in that time. (d) is a
reference, not a wake-up: the GPU writes a second host word right after the wait and the
main thread spins on it, the time for the GPU to see the release and report back with no
thread asleep.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import time

from .._core import driver
from .._core.streams import GpuStream
from .._sync.atomic_event import AtomicEvent, atomic_backend
from .._sync.worker import Worker

__all__ = ["describe_error", "round_trip", "summarize", "worker_wakeup"]

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


def describe_error(exc: BaseException) -> str:
    """One line naming an exception, for the suite's ``errors`` and ``skipped`` entries."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def summarize(ns: list[int]) -> dict:
    """Nearest-rank percentiles of samples in nanoseconds, reported in microseconds."""
    s = sorted(ns)
    n = len(s)

    def q(p):
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {"n": n, "median_us": q(0.5) / 1e3, "p90_us": q(0.9) / 1e3, "p99_us": q(0.99) / 1e3,
            "min_us": s[0] / 1e3, "mean_us": sum(s) / n / 1e3}


def _check(err, call: str) -> None:
    if err:
        driver.raise_error(err, call)


def _interleave(methods: list, samples: int, warmup: int, block: int, errors: dict) -> dict[str, list[int]]:
    """Warm every method up, then take blocks of samples from each in turn until each has
    ``samples``. A method that raises is dropped (its error kept in ``errors``)."""
    out: dict[str, list[int]] = {}
    live = []
    for m in methods:
        try:
            m.run(warmup)
        except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
            errors[m.key] = describe_error(exc)
            continue
        out[m.key] = []
        live.append(m)
    while live:
        for m in list(live):
            got = out[m.key]
            try:
                got.extend(m.run(min(block, samples - len(got))))
            except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
                errors[m.key] = describe_error(exc)
                live.remove(m)
                del out[m.key]
                continue
            if len(got) >= samples:
                live.remove(m)
    return out


def _rows(methods: list, samples: dict, floor_key: str, keep_samples: bool) -> list[dict]:
    rows = []
    for m in methods:
        ns = samples.get(m.key)
        if not ns:
            continue
        row = {"key": m.key, "label": m.label, "ours": m.ours, **summarize(ns)}
        if keep_samples:
            row["samples_ns"] = ns
        rows.append(row)
    floor = next((r for r in rows if r["key"] == floor_key and r["median_us"] > 0 and r["p90_us"] > 0), None)
    for r in rows:
        r["x_floor"] = r["median_us"] / floor["median_us"] if floor else None
        r["p90_x_floor"] = r["p90_us"] / floor["p90_us"] if floor else None
    return rows


def _close_all(methods: list, errors: dict) -> None:
    for m in reversed(methods):
        try:
            m.close()
        except Exception as exc:  # noqa: BLE001 - reported; the others still close
            errors.setdefault(m.key, f"close: {describe_error(exc)}")


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


class _RawRoundTrip:
    """The floor: host store, cuStreamWaitValue64, cuStreamWriteValue64, host spin."""

    key = "floor"
    label = "raw floor: cuStreamWaitValue64 + cuStreamWriteValue64, host store and spin"
    ours = False

    def __init__(self, device: int, settle_us: float):
        self.settle_us = settle_us
        self.d = driver.bindings()
        self.stream = GpuStream(device)
        self.h = driver.as_stream_handle(self.stream.handle)
        self.host, self.dev = driver.mem_host_alloc_mapped(16)
        self.ping = ctypes.c_uint64.from_address(self.host)
        self.pong = ctypes.c_uint64.from_address(self.host + 8)
        self.ping.value = self.pong.value = 0
        self.i = 0

    def run(self, n: int) -> list[int]:
        out, h, dev, ping, pong = [], self.h, self.dev, self.ping, self.pong
        wait, write, settle_us = self.d.cuStreamWaitValue64, self.d.cuStreamWriteValue64, self.settle_us
        for _ in range(n):
            self.i += 1
            i = self.i
            (err,) = wait(h, dev, i, 0)  # flags 0: CU_STREAM_WAIT_VALUE_GEQ
            _check(err, "cuStreamWaitValue64")
            (err,) = write(h, dev + 8, i, 0)
            _check(err, "cuStreamWriteValue64")
            _settle(settle_us)
            t0 = perf_ns()
            ping.value = i
            k = 0
            while pong.value < i:
                k += 1
                if not k & 0xFFFF and perf_ns() - t0 > _WAIT_NS:
                    raise TimeoutError(f"the GPU did not answer within {_WAIT_S:g} s")
            out.append(perf_ns() - t0)
        return out

    def close(self) -> None:
        self.ping.value = 1 << 62  # satisfies any wait still enqueued
        self.stream.synchronize(timeout=_WAIT_S)  # raises (and leaks the memory) if stuck
        self.stream.close()
        driver.mem_host_free(self.host)


class _AtomicRoundTrip:
    """The same round trip through two AtomicEvents of one backend."""

    ours = True

    def __init__(self, device: int, backend: str, policy: str, settle_us: float, default: bool):
        self.key = f"atomic_{backend}_{policy}"
        self.label = f"AtomicEvent {backend}{' (default)' if default else ''}, policy {policy}"
        self.settle_us = settle_us
        self.policy = policy
        self.stream = GpuStream(device)
        self.ping = self.pong = None
        with _forced_backend(backend):
            self.ping = AtomicEvent(device)
            self.pong = AtomicEvent(device)
        self.i = 0

    def run(self, n: int) -> list[int]:
        out, s, ping, pong, policy, settle_us = [], self.stream, self.ping, self.pong, self.policy, self.settle_us
        for _ in range(n):
            self.i += 1
            i = self.i
            ping.wait(i, s)
            pong.signal(i, s)
            _settle(settle_us)
            t0 = perf_ns()
            ping.signal(i)
            pong.wait(i, timeout=_WAIT_S, policy=policy)
            out.append(perf_ns() - t0)
        return out

    def close(self) -> None:
        for ev in (self.ping, self.pong):
            if ev is not None:
                ev.close()  # lets GPU waits still pending go
        self.stream.synchronize(timeout=_WAIT_S)
        self.stream.close()


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
        A suite section: ``title``, ``columns``, ``rows`` (one per method, with median, p90,
        p99, min and mean in us and their ratios to the floor), ``notes``, ``skipped``,
        ``errors``, ``info``.
    """
    default = atomic_backend(device)
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    methods: list = []
    try:
        try:
            methods.append(_RawRoundTrip(device, settle_us))
        except Exception as exc:  # noqa: BLE001 - reported; ours still runs
            errors["floor"] = describe_error(exc)
        for backend in backends or ("mem64", "mem32", "hostfn"):
            for policy in policies:
                try:
                    methods.append(_AtomicRoundTrip(device, backend, policy, settle_us, backend == default))
                except Exception as exc:  # noqa: BLE001 - e.g. a backend this device cannot use
                    skipped[f"atomic_{backend}_{policy}"] = describe_error(exc)
        got = _interleave(methods, samples, warmup, block, errors)
    finally:
        _close_all(methods, errors)
    return {
        "title": "CPU -> GPU -> CPU round trip",
        "columns": _LATENCY_COLUMNS,
        "rows": _rows(methods, got, "floor", keep_samples),
        "notes": [(f"{samples} samples per method after {warmup} warm-up, interleaved in blocks of {block}; "
                   f"{settle_us:g} us settle between enqueuing and the host's store"),
                  f"AtomicEvent's default backend on device {device}: {default}"],
        "skipped": skipped,
        "errors": errors,
        "info": {"samples": samples, "warmup": warmup, "block": block, "settle_us": settle_us,
                 "default_backend": default, "device": device},
    }


# -- GPU completion -> Python wake-up ----------------------------------------------------------
class _Gate:
    """A 32-bit word in pinned, device-mapped host memory that streams wait on."""

    def __init__(self, d):
        self.d = d
        flags = d.CU_MEMHOSTALLOC_PORTABLE | d.CU_MEMHOSTALLOC_DEVICEMAP
        self.host = driver.check(d.cuMemHostAlloc(8, flags), "cuMemHostAlloc")
        self.dptr = driver.check(d.cuMemHostGetDevicePointer(self.host, 0), "cuMemHostGetDevicePointer")
        self.word = ctypes.c_uint32.from_address(int(self.host))
        self.word.value = 0
        self.flag = ctypes.c_uint32.from_address(int(self.host) + 4)  # for the spin reference
        self.flag_dptr = int(self.dptr) + 4
        self.geq = d.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ

    def hold(self, stream) -> None:
        """Reset the word and make ``stream`` wait until the host stores 1."""
        self.word.value = 0
        (err,) = self.d.cuStreamWaitValue32(stream, self.dptr, 1, self.geq)
        _check(err, "cuStreamWaitValue32")

    def close(self) -> None:
        self.word.value = 1
        driver.check(self.d.cuMemFreeHost(self.host), "cuMemFreeHost")


class _SpinReference:
    key, label, ours, spin = "spin", "(d) reference: host spins on a GPU-written word", False, True

    def __init__(self, d, gate, stream):
        self.d, self.gate, self.stream = d, gate, stream

    def arm(self) -> None:
        self.gate.flag.value = 0
        (err,) = self.d.cuStreamWriteValue32(self.stream, self.gate.flag_dptr, 1, 0)
        _check(err, "cuStreamWriteValue32")

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

    def __init__(self, d, stream):
        self.d = d
        self.stream = stream
        flags = d.CUevent_flags.CU_EVENT_BLOCKING_SYNC | d.CUevent_flags.CU_EVENT_DISABLE_TIMING
        self.event = driver.check(d.cuEventCreate(flags), "cuEventCreate")
        self.go = threading.Semaphore(0)
        self.done = threading.Event()
        self.t1 = 0
        self.stop = False
        self.error = None
        self.thread = threading.Thread(target=self._loop, name="cudaevents-bench-floor", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        sync, event = self.d.cuEventSynchronize, self.event
        while True:
            self.go.acquire()
            if self.stop:
                return
            (err,) = sync(event)  # cuda-bindings releases the GIL for the call
            self.t1 = perf_ns()
            if err:
                self.error = err
            self.done.set()

    def arm(self) -> None:
        self.done.clear()
        (err,) = self.d.cuEventRecord(self.event, self.stream)
        _check(err, "cuEventRecord")
        self.go.release()

    def close(self) -> None:
        self.stop = True
        self.go.release()
        self.thread.join(_WAIT_S)
        driver.check(self.d.cuEventDestroy(self.event), "cuEventDestroy")
        if self.error is not None:
            raise RuntimeError(f"cuEventSynchronize failed: {self.error}")


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


def _launch_via_bindings(d):
    def launch(stream, fn_address, user_address):
        (err,) = d.cuLaunchHostFunc(stream, d.CUhostFn(fn_address), user_address)
        _check(err, "cuLaunchHostFunc")

    return launch


def _launch_via_ctypes(d):
    return driver.launch_host_func  # straight into libcuda through ctypes: no trampoline, no GIL


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


def _callback_needs_gil(d, libc: _Libc, launch, gate: _Gate, stream, hold_s: float = 0.3) -> bool:
    """True when the host function launched by ``launch`` cannot run while another thread
    holds the GIL, i.e. the launch path wraps the C function in a GIL-taking trampoline."""
    sem = libc.new_semaphore()
    try:
        gate.hold(stream)
        launch(stream, libc.sem_post_address, ctypes.addressof(sem))
        time.sleep(0.002)
        deadline = time.time() + hold_s
        ts = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        gate.word.value = 1
        if libc.pydll.sem_timedwait(sem, ctypes.byref(ts)) == 0:  # holds the GIL all along
            return False
        deadline = time.time() + _WAIT_S
        ts = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        if libc.cdll.sem_timedwait(sem, ctypes.byref(ts)) != 0:  # GIL released: the callback can finish
            raise TimeoutError(f"the host function did not run within {_WAIT_S:g} s")
        return True
    finally:
        gate.word.value = 1  # never leave the stream held, whatever failed
        (err,) = d.cuStreamSynchronize(stream)
        libc.cdll.sem_destroy(sem)
        _check(err, "cuStreamSynchronize")


class _Sampler:
    """Takes wake-up samples of one method (``run(n)`` as :func:`_interleave` expects)."""

    def __init__(self, method, gate: _Gate, stream, settle_s: float):
        self.method, self.gate, self.stream, self.settle_s = method, gate, stream, settle_s
        self.key, self.label, self.ours = method.key, method.label, method.ours

    def run(self, n: int) -> list[int]:
        return [self._one() for _ in range(n)]

    def _one(self) -> int:
        m, gate = self.method, self.gate
        gate.hold(self.stream)
        m.arm()
        time.sleep(self.settle_s)  # the waiter falls asleep in its wait
        if m.spin:
            flag = gate.flag
            t0 = perf_ns()
            gate.word.value = 1
            k = 0
            while not flag.value:
                k += 1
                if not k & 0xFFFF and perf_ns() - t0 > _WAIT_NS:
                    raise TimeoutError(f"{m.label}: the GPU did not write within {_WAIT_S:g} s")
            return perf_ns() - t0
        t0 = perf_ns()
        gate.word.value = 1  # releases the GPU
        if not m.done.wait(_WAIT_S):
            raise TimeoutError(f"{m.label}: no wake-up within {_WAIT_S:g} s")
        return m.t1 - t0

    def close(self) -> None:
        self.method.close()


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
    d = driver.bindings()
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    notes = [(f"{samples} samples per method after {warmup} warm-up, interleaved in blocks of {block}; "
              f"the waiter sleeps {settle_ms:g} ms before the GPU is released")]
    info: dict = {"samples": samples, "warmup": warmup, "block": block, "settle_ms": settle_ms, "device": device}
    samplers: list[_Sampler] = []
    got: dict[str, list[int]] = {}
    with driver.pushed(device):
        gate = _Gate(d)
        gpu_stream = GpuStream(device)
        raw = driver.as_stream_handle(gpu_stream.handle)
        settle = settle_ms / 1e3

        def add(make, key: str) -> None:
            try:
                samplers.append(_Sampler(make(), gate, raw, settle))
            except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
                errors[key] = describe_error(exc)

        try:
            add(lambda: _WorkerWakeup(gpu_stream), "worker")
            add(lambda: _BlockedThread(d, raw), "floor")
            libc = _Libc()
            for key, label, make in (
                ("hostfn_bindings", "(c) cuLaunchHostFunc(sem_post), cuda-bindings", _launch_via_bindings),
                ("hostfn_ctypes", "(c') cuLaunchHostFunc(sem_post), ctypes -> libcuda", _launch_via_ctypes),
            ):
                try:
                    launch = make(d)
                    gil = _callback_needs_gil(d, libc, launch, gate, raw)
                except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
                    skipped[key] = describe_error(exc)
                    continue
                info[f"{key}_callback_takes_gil"] = gil
                if gil:
                    notes.append(f"{label}: the callback thread takes the GIL before calling the C function "
                                 "(a trampoline in the bindings), so it also carries the GIL/driver-lock "
                                 "deadlock risk")
                    label += " [takes GIL]"
                add(lambda libc=libc, launch=launch, key=key, label=label:
                    _HostFuncWakeup(libc, launch, raw, key, label), key)
            add(lambda: _SpinReference(d, gate, raw), "spin")
            got = _interleave(samplers, samples, warmup, block, errors)
        finally:
            gate.word.value = 1
            try:
                gpu_stream.synchronize(timeout=_WAIT_S)
                idle = True
            except Exception as exc:  # noqa: BLE001 - a stuck stream: leak rather than free memory in use
                errors.setdefault("cleanup", describe_error(exc))
                idle = False
            _close_all(samplers, errors)
            if idle:
                gpu_stream.close()
                gate.close()
    rows = _rows(samplers, got, "floor", keep_samples)
    spin = next((r for r in rows if r["key"] == "spin"), None)
    if spin is not None:
        notes.append("median wake-up cost beyond the spin reference: "
                     + ", ".join(f"{r['key']} {r['median_us'] - spin['median_us']:.1f} us"
                                 for r in rows if r["key"] != "spin"))
    return {
        "title": "GPU completion -> Python wake-up",
        "columns": _LATENCY_COLUMNS,
        "rows": rows,
        "notes": notes,
        "skipped": skipped,
        "errors": errors,
        "info": info,
    }
