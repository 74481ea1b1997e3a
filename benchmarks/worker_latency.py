"""Wake-up latency from GPU completion to Python code, for cudaevents.Worker and its floors.

    PYTHONPATH=src python3 benchmarks/worker_latency.py [--samples 2000] [--out result.json]

Each sample holds a stream on a 32-bit word of pinned, device-mapped host memory
(``cuStreamWaitValue32``, GEQ 1), puts the waiter behind that wait, lets the waiting thread
fall asleep (``--settle-ms``), then takes ``time.perf_counter_ns()`` immediately before the
host store that releases the GPU. The woken side takes ``perf_counter_ns()`` first thing; the
difference is the wake-up latency. Methods:

(a) ``cudaevents.Worker``: ``add_task`` + ``commit(stream)``; the task takes the timestamp.
(b) the floor: a plain Python thread blocked in ``cuEventSynchronize`` on a
    ``CU_EVENT_BLOCKING_SYNC`` event recorded behind the wait (cuda.bindings directly).
(c) ``cuLaunchHostFunc`` with libc's ``sem_post`` as the host function (no Python in the
    callback) and a Python thread blocked in ``sem_wait``; launched through cuda.bindings
    and, as (c'), through ctypes straight into libcuda. Before measuring each, a probe tells
    whether that path takes the GIL on the driver's callback thread: the main thread holds
    the GIL in ``sem_timedwait`` (ctypes.PyDLL) for 0.3 s after releasing the GPU; a callback
    that needs the GIL cannot post in that time.
(d) a reference, not a wake-up: the GPU writes a second host word right after the wait
    (``cuStreamWriteValue32``) and the main thread spins on it. This is the time for the GPU
    to see the release and report back with no thread asleep; the other rows minus this one
    are the cost of waking a sleeping thread.

Methods run interleaved in blocks, after a warm-up, so drift affects all alike. The table
gives median, p90 and p99 in microseconds and the ratios of median and p90 against (b).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import sys
import threading
import time

perf_ns = time.perf_counter_ns


def _check(result, call):
    err = result[0]
    if int(err):
        raise RuntimeError(f"{call} failed with {getattr(err, 'name', err)} ({int(err)})")
    return result[1] if len(result) == 2 else result[1:] if len(result) > 2 else None


class Gate:
    """A 32-bit word in pinned, device-mapped host memory that streams wait on."""

    def __init__(self, d):
        self.d = d
        flags = d.CU_MEMHOSTALLOC_PORTABLE | d.CU_MEMHOSTALLOC_DEVICEMAP
        self.host = _check(d.cuMemHostAlloc(8, flags), "cuMemHostAlloc")
        self.dptr = _check(d.cuMemHostGetDevicePointer(self.host, 0), "cuMemHostGetDevicePointer")
        self.word = ctypes.c_uint32.from_address(int(self.host))
        self.word.value = 0
        self.flag = ctypes.c_uint32.from_address(int(self.host) + 4)  # for the spin reference
        self.flag_dptr = int(self.dptr) + 4
        self.geq = d.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ

    def hold(self, stream) -> None:
        """Reset the word and make ``stream`` wait until the host stores 1."""
        self.word.value = 0
        _check(self.d.cuStreamWaitValue32(stream, self.dptr, 1, self.geq), "cuStreamWaitValue32")

    def close(self) -> None:
        self.word.value = 1
        _check(self.d.cuMemFreeHost(self.host), "cuMemFreeHost")


class SpinMethod:
    key, label = "spin", "(d) reference: host spins on a GPU-written word"
    spin = True

    def __init__(self, d, gate, stream):
        self.d, self.gate, self.stream = d, gate, stream

    def arm(self):
        self.gate.flag.value = 0
        _check(self.d.cuStreamWriteValue32(self.stream, self.gate.flag_dptr, 1, 0), "cuStreamWriteValue32")

    def close(self):
        pass


class WorkerMethod:
    key, label = "worker", "(a) cudaevents.Worker"

    def __init__(self, ce, stream):
        self.stream = stream
        self.worker = ce.Worker(name="latency-worker")
        self.done = threading.Event()
        self.t1 = 0

    def _task(self):
        self.t1 = perf_ns()
        self.done.set()

    def arm(self):
        self.done.clear()
        self.worker.add_task(self._task)
        self.worker.commit(self.stream)

    def close(self):
        self.worker.close(timeout=10)
        if self.worker.errors:
            raise RuntimeError(f"worker tasks failed: {self.worker.errors!r}")


class EventThreadMethod:
    key, label = "floor", "(b) floor: thread in cuEventSynchronize"

    def __init__(self, d, stream):
        self.d = d
        self.stream = stream
        flags = d.CUevent_flags.CU_EVENT_BLOCKING_SYNC | d.CUevent_flags.CU_EVENT_DISABLE_TIMING
        self.event = _check(d.cuEventCreate(flags), "cuEventCreate")
        self.go = threading.Semaphore(0)
        self.done = threading.Event()
        self.t1 = 0
        self.stop = False
        self.error = None
        self.thread = threading.Thread(target=self._loop, name="latency-floor", daemon=True)
        self.thread.start()

    def _loop(self):
        sync = self.d.cuEventSynchronize
        event = self.event
        while True:
            self.go.acquire()
            if self.stop:
                return
            (err,) = sync(event)  # cuda.bindings releases the GIL for the call
            self.t1 = perf_ns()
            if int(err):
                self.error = err
            self.done.set()

    def arm(self):
        self.done.clear()
        _check(self.d.cuEventRecord(self.event, self.stream), "cuEventRecord")
        self.go.release()

    def close(self):
        self.stop = True
        self.go.release()
        self.thread.join(10)
        _check(self.d.cuEventDestroy(self.event), "cuEventDestroy")
        if self.error is not None:
            raise RuntimeError(f"cuEventSynchronize failed: {self.error}")


class _Libc:
    def __init__(self):
        self.cdll = ctypes.CDLL(None, use_errno=True)  # calls release the GIL
        self.pydll = ctypes.PyDLL(None, use_errno=True)  # calls keep the GIL
        for lib in (self.cdll, self.pydll):
            for name in ("sem_init", "sem_wait", "sem_post", "sem_destroy", "sem_timedwait"):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_int
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


def launch_via_bindings(d):
    def launch(stream, fn_address, user_address):
        (err,) = d.cuLaunchHostFunc(stream, d.CUhostFn(fn_address), user_address)
        if int(err):
            raise RuntimeError(f"cuLaunchHostFunc failed with {getattr(err, 'name', err)}")

    return launch


def launch_via_ctypes():
    libcuda = ctypes.CDLL("libcuda.so.1")
    fn = libcuda.cuLaunchHostFunc
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def launch(stream, fn_address, user_address):
        err = fn(int(stream), fn_address, user_address)
        if err:
            raise RuntimeError(f"cuLaunchHostFunc failed with CUresult {err}")

    return launch


class HostFuncMethod:
    def __init__(self, libc, launch, stream, key, label):
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
        self.thread = threading.Thread(target=self._loop, name=f"latency-{key}", daemon=True)
        self.thread.start()

    def _loop(self):
        sem_wait = self.libc.cdll.sem_wait
        sem = self.sem
        while True:
            self.go.acquire()
            if self.stop:
                return
            sem_wait(sem)  # a ctypes.CDLL call: the GIL is released while it blocks
            self.t1 = perf_ns()
            self.done.set()

    def arm(self):
        self.done.clear()
        self.launch(self.stream, self.libc.sem_post_address, self.sem_address)
        self.go.release()

    def close(self):
        self.stop = True
        self.go.release()
        self.thread.join(10)
        self.libc.cdll.sem_destroy(self.sem)


def callback_needs_gil(d, libc, launch, gate, stream, hold_s=0.3) -> bool:
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
        rc = libc.pydll.sem_timedwait(sem, ctypes.byref(ts))  # holds the GIL all along
        if rc == 0:
            return False
        libc.cdll.sem_wait(sem)  # GIL released: the callback can finish now
        return True
    finally:
        gate.word.value = 1  # never leave the stream held, whatever failed
        _check(d.cuStreamSynchronize(stream), "cuStreamSynchronize")
        libc.cdll.sem_destroy(sem)


def sample(method, gate, stream, settle_s) -> int:
    gate.hold(stream)
    method.arm()
    time.sleep(settle_s)  # the waiter falls asleep in its wait
    if getattr(method, "spin", False):
        flag = gate.flag
        t0 = perf_ns()
        gate.word.value = 1
        n = 0
        while not flag.value:
            n += 1
            if n & 0xFFFF == 0 and perf_ns() - t0 > 10_000_000_000:
                raise RuntimeError(f"{method.label}: the GPU did not write within 10 s")
        return perf_ns() - t0
    t0 = perf_ns()
    gate.word.value = 1  # releases the GPU
    if not method.done.wait(10):
        raise RuntimeError(f"{method.label}: no wake-up within 10 s")
    return method.t1 - t0


def summarize(ns: list[int]) -> dict:
    s = sorted(ns)
    n = len(s)

    def q(p):  # nearest-rank percentile
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {
        "n": n,
        "median_us": q(0.5) / 1e3,
        "p90_us": q(0.9) / 1e3,
        "p99_us": q(0.99) / 1e3,
        "min_us": s[0] / 1e3,
        "mean_us": sum(s) / n / 1e3,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="samples per method (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="discarded samples per method first (default 200)")
    ap.add_argument("--block", type=int, default=100, help="samples per method before switching (default 100)")
    ap.add_argument("--settle-ms", type=float, default=1.0, help="sleep between arming and release (default 1 ms)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON to this path")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.warmup < 0 or args.block < 1 or args.settle_ms < 0:
        ap.error("--samples and --block must be >= 1, --warmup and --settle-ms >= 0")

    import cudaevents as ce
    from cudaevents import _cuda

    if not ce.is_available():
        print(f"this benchmark needs a CUDA GPU: {_cuda.unavailable_reason()}", file=sys.stderr)
        return 1
    d = _cuda.driver()
    import cuda.bindings

    info = {
        "device": ce.Device(args.device).name,
        "driver_cuda_version": _cuda.versions().get("driver CUDA version"),
        "cuda_bindings": getattr(cuda.bindings, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "samples": args.samples,
        "warmup": args.warmup,
        "settle_ms": args.settle_ms,
    }
    notes: list[str] = []
    skipped: dict[str, str] = {}
    methods = []
    with _cuda.pushed(args.device):
        gate = Gate(d)
        gpu_stream = ce.GpuStream(args.device)
        raw = gpu_stream._handle  # CUstream
        try:
            methods.append(WorkerMethod(ce, gpu_stream))
            methods.append(EventThreadMethod(d, raw))
            libc = _Libc()
            for key, label, make in (
                ("hostfn_bindings", "(c) cuLaunchHostFunc(sem_post), cuda.bindings", lambda: launch_via_bindings(d)),
                ("hostfn_ctypes", "(c') cuLaunchHostFunc(sem_post), ctypes->libcuda", launch_via_ctypes),
            ):
                try:
                    launch = make()
                    gil = callback_needs_gil(d, libc, launch, gate, raw)
                except Exception as exc:  # noqa: BLE001 - reported, the other methods still run
                    skipped[key] = f"{type(exc).__name__}: {exc}"
                    continue
                info[f"{key}_callback_takes_gil"] = gil
                if gil:
                    notes.append(f"{label}: the callback thread takes the GIL before calling the C function "
                                 "(a trampoline in the bindings), so it also carries the GIL/driver-lock deadlock risk")
                    label += " [takes GIL]"
                methods.append(HostFuncMethod(libc, launch, raw, key, label))
            methods.append(SpinMethod(d, gate, raw))

            samples = {m.key: [] for m in methods}
            settle = args.settle_ms / 1e3
            for m in methods:
                for _ in range(args.warmup):
                    sample(m, gate, raw, settle)
            while any(len(v) < args.samples for v in samples.values()):
                for m in methods:
                    out = samples[m.key]
                    for _ in range(min(args.block, args.samples - len(out))):
                        out.append(sample(m, gate, raw, settle))
        finally:
            gate.word.value = 1
            gpu_stream.synchronize(timeout=30)
            for m in methods:
                m.close()
            gpu_stream.close()
            gate.close()

    results = {}
    for m in methods:
        results[m.key] = {"label": m.label, **summarize(samples[m.key]), "samples_ns": samples[m.key]}
    floor = results["floor"]
    for r in results.values():
        r["median_vs_floor"] = r["median_us"] / floor["median_us"]
        r["p90_vs_floor"] = r["p90_us"] / floor["p90_us"]

    print(f"{info['device']}, driver CUDA {info['driver_cuda_version']}, cuda-bindings {info['cuda_bindings']}, "
          f"Python {info['python']}; {args.samples} samples per method after {args.warmup} warm-up")
    header = f"{'method':<58}{'median us':>10}{'p90 us':>9}{'p99 us':>9}{'median/floor':>14}{'p90/floor':>11}"
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(f"{r['label']:<58}{r['median_us']:>10.1f}{r['p90_us']:>9.1f}{r['p99_us']:>9.1f}"
              f"{r['median_vs_floor']:>14.2f}{r['p90_vs_floor']:>11.2f}")
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    if "spin" in results:
        spin = results["spin"]["median_us"]
        print("median wake-up cost beyond the spin reference: "
              + ", ".join(f"{k} {r['median_us'] - spin:.1f} us" for k, r in results.items() if k != "spin"))
    for note in notes:
        print(f"note: {note}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "results": results, "skipped": skipped, "notes": notes}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
