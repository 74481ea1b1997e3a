"""Interpreter exit with work in flight: a process that ends while events are live, Timer regions
pending, records queued behind a GPU stream that never gets going, Worker tasks queued behind
GPU and CPU streams, or CpuStream tasks still running, exits with code 0, prints nothing on
stderr, and does not hang. Pending GPU work is abandoned by the exit; cudaevents destroys no
handle then (the driver may be going away) and reports nothing.

Each scenario runs many times in a fresh interpreter (tests/reliability/_subproc.py), since
exit races show up only now and then: ``RUNS`` times on a GPU, ``CPU_RUNS`` times for the
CPU-only ones (``CUDAEVENTS_EXIT_RUNS`` overrides both), and the GPU ones ``SANITIZER_RUNS``
times more under NVIDIA's compute-sanitizer (``CUDAEVENTS_SANITIZER_RUNS``), whose summary must
report 0 errors.
"""

from __future__ import annotations

import os
import shutil

import pytest
from _subproc import run_python

RUNS = int(os.environ.get("CUDAEVENTS_EXIT_RUNS", "20"))
CPU_RUNS = int(os.environ.get("CUDAEVENTS_EXIT_RUNS", "20"))
SANITIZER_RUNS = int(os.environ.get("CUDAEVENTS_SANITIZER_RUNS", "2"))
TIMEOUT = 60.0
SANITIZER_TIMEOUT = 300.0

# -- CPU-only scenarios (run everywhere) -------------------------------------------------
CPU_SCENARIOS = {
    # (d) CpuStreams still running tasks: sleeping, spinning in Python, blocked on a lock
    # nobody releases, with more tasks queued behind them; one stream is dropped while busy.
    "cpu_streams_running": r'''
import threading, time
import cudaevents as ce

never = threading.Event()
streams = [ce.CpuStream() for _ in range(4)]
started = threading.Barrier(5, timeout=30)

def spin():
    started.wait()
    x = 0
    while True:
        x += 1

def sleep_long():
    started.wait()
    time.sleep(3600)

def block():
    started.wait()
    never.wait()

def busy_small():
    started.wait()
    while True:
        sum(range(100))
        time.sleep(0)

for s, fn in zip(streams, (spin, sleep_long, block, busy_small)):
    s.enqueue(fn)
    for i in range(100):
        s.enqueue(sum, range(i))
started.wait()
dropped = ce.CpuStream()
dropped.enqueue(time.sleep, 3600)
dropped.enqueue(print, "must not run")
del dropped
print("ready", flush=True)
''',
    # (c, CPU) a Worker with tasks committed behind a CpuStream that never gets there, and
    # tasks added but never committed; a second Worker busy in a task at exit.
    "cpu_worker_queued": r'''
import threading, time
import cudaevents as ce

never = threading.Event()
blocked = ce.CpuStream()
blocked.enqueue(never.wait)
w = ce.Worker()
ran = []
for i in range(200):
    w.add_task(ran.append, i)
    if i % 10 == 9:
        w.commit(blocked)
w.add_task(print, "uncommitted: must not run before exit")
busy = ce.Worker()
inside = threading.Event()
def long_task():
    inside.set()
    time.sleep(3600)
busy.add_task(long_task)
busy.commit(ce.CpuStream())
assert inside.wait(30)
time.sleep(0.01)
assert ran == []
print("ready", flush=True)
''',
    # Host-backend counters with waits that are never satisfied: a CpuStream blocked in a
    # wait with signals queued behind it, a daemon thread blocked in a host wait, a Fence and
    # an Event waited on by CPU streams.
    "host_atomic_pending": r'''
import threading, time
import cudaevents as ce

a = ce.AtomicEvent()
assert a.backend == "host"
cs = ce.CpuStream()
a.signal(1, cs)
a.wait(10, cs)            # never signalled: cs blocks here
a.signal(11, cs)          # queued behind the wait
other = ce.CpuStream()
a.wait(11, other)
t = threading.Thread(target=a.wait, args=(20,), daemon=True)
t.start()
f = ce.Fence()
f.update(other)
f.wait(ce.CpuStream())
e = ce.Event()
e.signal(cs)              # behind the blocked wait: never happens
e.wait(ce.CpuStream())
a.wait(1, timeout=30)
time.sleep(0.01)
print("ready", flush=True)
''',
}

# -- GPU scenarios --------------------------------------------------------------------------
# A latch: a word of pinned, device-mapped host memory that streams wait on (GEQ 1) with
# cuStreamWaitValue32 and that nobody ever sets, so work behind it stays pending until the
# process exit abandons it. Only a little work is queued behind it: about a thousand
# operations behind an unsatisfied wait would block the enqueuing thread.
#
# compute-sanitizer waits for the device when the process ends, so under it a latch that is
# never set would keep the process alive forever. There (LATCH_RELEASE_SECONDS set) the device
# sets the word itself, later: a stream of its own runs libc's sleep() as a host function (C, no
# Python, so it does not care that the interpreter is gone) and then writes the word. The
# scenario has exited with its work pending long before that.
LATCH = r'''
import ctypes, os
from cuda.bindings import driver as _d
from cudaevents._core import driver

_flags = _d.CU_MEMHOSTALLOC_PORTABLE | _d.CU_MEMHOSTALLOC_DEVICEMAP
with driver.pushed(0):
    _latch_host = driver.check(_d.cuMemHostAlloc(8, _flags), "cuMemHostAlloc")
    _latch_dev = driver.check(_d.cuMemHostGetDevicePointer(_latch_host, 0), "cuMemHostGetDevicePointer")
ctypes.c_uint32.from_address(int(_latch_host)).value = 0
_release_seconds = int(os.environ.get("LATCH_RELEASE_SECONDS", "0"))
_releaser = None


def block(stream):
    """Make ``stream`` wait for a word that is never set (or, under compute-sanitizer, that the
    device sets ``LATCH_RELEASE_SECONDS`` from now)."""
    global _releaser
    if _release_seconds and _releaser is None:
        import cudaevents as ce
        _releaser = ce.GpuStream(0)
        libc_sleep = ctypes.cast(ctypes.CDLL(None).sleep, ctypes.c_void_p).value
        driver.launch_host_func(_releaser._handle, libc_sleep, _release_seconds)
        driver.check(_d.cuStreamWriteValue32(_releaser._handle, _latch_dev, 1, 0), "cuStreamWriteValue32")
    geq = _d.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ
    driver.check(_d.cuStreamWaitValue32(stream._handle, _latch_dev, 1, geq), "cuStreamWaitValue32")
'''

GPU_SCENARIOS = {
    # (a) live CudaEvents (recorded, some never synchronized), cached and in-flight handles,
    # a Timer with regions not yet harvested on several streams, a GPU counter, real work.
    "gpu_events_and_timer": r'''
import cudaevents as ce
from cudaevents._core import driver

assert ce.is_available(), driver.unavailable_reason()
streams = [ce.GpuStream(0) for _ in range(4)]
buf = driver.mem_alloc(0, 4 << 20)
timer = ce.Timer()
events = []
for i in range(200):
    s = streams[i % 4]
    with timer.region(f"memset{i % 4}", s):
        driver.memset_d32_async(buf, i, 1 << 20, s._handle)
    events.append(ce.CudaEvent(timing=True).record(s))
for e in events[:50]:
    e.close()
with ce.CudaEvent(0) as cached:
    cached.record(streams[0])
pool = ce.EventPool(max_cached=1)
mine = [ce.CudaEvent(pool=pool).record(s) for s in streams]
a = ce.AtomicEvent(0)
a.signal(1, streams[0])
a.wait(1, streams[1])
v = ce.Event(0)
v.signal(streams[2])
f = ce.Fence(0)
f.update(streams[3])
f.wait(streams[0])
print("ready", flush=True)
''',
    # (b) records, Timer regions, counter signals and a value event queued behind a stream
    # that never gets going; a CudaEvent dropped while its record is pending.
    "gpu_blocked_stream_records": LATCH + r'''
import cudaevents as ce

s = ce.GpuStream(0)
t = ce.GpuStream(0)
block(s)
timer = ce.Timer()
events = []
for i in range(50):
    with timer.region("behind the latch", s):
        pass
    events.append(ce.CudaEvent(timing=True).record(s))
assert not events[-1].query()
ce.CudaEvent(0).record(s)            # dropped at once, record still pending
a = ce.AtomicEvent(0)
a.signal(1, s)                       # behind the latch
a.wait(1, t)                         # t waits for s on the device
v = ce.Event(0)
v.signal(s)
v.wait(t)
after = ce.CudaEvent(blocking_sync=True).record(t)
print("ready", flush=True)
''',
    # (c) Worker tasks queued behind a blocked GPU stream (the worker's thread waits in the
    # driver at exit), behind a blocked CPU stream, and added but never committed.
    "gpu_worker_queued": LATCH + r'''
import threading, time
import cudaevents as ce

s = ce.GpuStream(0)
block(s)
w = ce.Worker()
ran = []
for i in range(100):
    w.add_task(ran.append, i)
    if i % 10 == 9:
        w.commit(s)
never = threading.Event()
cs = ce.CpuStream()
cs.enqueue(never.wait)
w2 = ce.Worker()
for i in range(100):
    w2.add_task(ran.append, -i)
    if i % 10 == 9:
        w2.commit(cs)
w3 = ce.Worker()
w3.add_task(ran.append, "gpu then cpu")
w3.commit(s)
w3.add_task(ran.append, "cpu")
w3.commit(cs)
w.add_task(print, "uncommitted: must not run before exit")
time.sleep(0.05)
assert ran == [], ran
print("ready", flush=True)
''',
    # (d, GPU) CpuStreams still running tasks that call CUDA in a loop (some thread is inside
    # the driver when the interpreter finalizes), and CPU-stream Timer regions in flight.
    "gpu_cpu_streams_running": r'''
import threading, time
import cudaevents as ce
from cudaevents._core import driver

buf = driver.mem_alloc(0, 1 << 20)
started = threading.Barrier(4, timeout=30)

def hammer(stream):
    ev = ce.CudaEvent(0)
    started.wait()
    i = 0
    while True:
        driver.memset_d32_async(buf, i, 1 << 16, stream._handle)
        ev.record(stream)
        ev.query()
        stream.query()
        if i % 16 == 0:
            stream.synchronize()
        i += 1

def churn(stream):
    started.wait()
    while True:
        with ce.CudaEvent(0) as e:
            e.record(stream)

gpu = [ce.GpuStream(0) for _ in range(3)]
cpus = [ce.CpuStream() for _ in range(3)]
cpus[0].enqueue(hammer, gpu[0])
cpus[1].enqueue(hammer, gpu[1])
cpus[2].enqueue(churn, gpu[2])
timer = ce.Timer()
c = ce.CpuStream()
with timer.region("cpu", c):
    c.enqueue(time.sleep, 3600)
started.wait()
time.sleep(0.05)
print("ready", flush=True)
''',
}


def _check_clean_exit(out) -> None:
    assert out.returncode == 0, out
    assert "ready" in out.stdout, out
    assert "must not run" not in out.stdout, out
    assert out.stderr == "", out


@pytest.mark.parametrize("run", range(CPU_RUNS))
@pytest.mark.parametrize("scenario", sorted(CPU_SCENARIOS))
def test_exit_cpu(scenario, run):
    """CPU-only work in flight at exit: exit code 0, nothing on stderr, no hang."""
    out = run_python(CPU_SCENARIOS[scenario], timeout=TIMEOUT, env={"CUDAEVENTS_ATOMIC_BACKEND": "host"})
    _check_clean_exit(out)


@pytest.mark.gpu
@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("scenario", sorted(GPU_SCENARIOS))
def test_exit_gpu(scenario, run):
    """GPU work in flight at exit: exit code 0, nothing on stderr, no hang."""
    out = run_python(GPU_SCENARIOS[scenario], timeout=TIMEOUT)
    _check_clean_exit(out)


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    default = "/usr/local/cuda/bin/compute-sanitizer"
    return default if os.access(default, os.X_OK) else None


# The latch's release under the tool: long after the scenario has printed "ready" and exited.
SANITIZER_LATCH_SECONDS = 5


@pytest.mark.gpu
@pytest.mark.parametrize("run", range(SANITIZER_RUNS))
@pytest.mark.parametrize("scenario", sorted(GPU_SCENARIOS))
def test_exit_gpu_under_compute_sanitizer(scenario, run):
    """The GPU scenarios under compute-sanitizer (memcheck): exit code 0, its summary reports
    0 errors, and nothing else on stderr."""
    tool = _sanitizer()
    if tool is None:
        pytest.skip("compute-sanitizer not found (on PATH or at /usr/local/cuda/bin); install the CUDA toolkit")
    out = run_python(GPU_SCENARIOS[scenario], timeout=SANITIZER_TIMEOUT,
                     env={"LATCH_RELEASE_SECONDS": str(SANITIZER_LATCH_SECONDS)},
                     prefix=(tool, "--tool", "memcheck", "--error-exitcode", "99"))
    assert out.returncode == 0, out
    assert "ready" in out.stdout, out
    report = out.stdout + out.stderr
    assert "ERROR SUMMARY: 0 errors" in report, out
    stray = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("=========")]
    assert stray == [], out
