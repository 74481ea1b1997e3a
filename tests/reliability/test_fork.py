"""fork() and CUDA: a child forked after its parent initialized CUDA gets a clear error (use the
'spawn' start method) from every cudaevents CUDA use, never a hang or a crash, and objects it
inherited from the parent are leaked, never destroyed through the driver, when it drops them.
A child forked before the parent's first CUDA use, and a 'spawn' child, use CUDA normally.
CPU-only parts created in the child (CpuStream, host-backend AtomicEvent, a Worker on CPU
streams) keep working there. After any fork (CUDA or not), a CpuStream or Worker created
before it has no thread in the child and refuses work and waits there with ClosedError; the
parent's counters (pinned memory) are never read or written by the child.

Each scenario runs in a fresh interpreter (tests/reliability/_subproc.py) that forks; the
parent waits for the child with a deadline and kills it if it hangs. The CI tests simulate an
initialized driver (``driver._bind`` with a fake driver module that records every call); the
``gpu`` tests do the same with the real driver.
"""

from __future__ import annotations

import pytest
from _subproc import run_python

TIMEOUT = 120.0

# What every scenario starts with: fork_and_wait() runs child() in a forked process and
# returns its exit code. The child leaves through the interpreter's normal exit (SystemExit),
# so atexit hooks and the finalizers of everything it inherited run there too.
PRELUDE = r'''
import gc, os, sys, time, traceback, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)  # fork() of a multi-threaded process

import cudaevents as ce
from cudaevents._core import driver
from cudaevents._core.errors import CudaUnavailableError


def expect_fork_error(what, fn, *args, **kwargs):
    """fn(*args) must raise CudaUnavailableError explaining fork and 'spawn'."""
    try:
        fn(*args, **kwargs)
    except CudaUnavailableError as exc:
        msg = str(exc)
        assert "fork" in msg and "'spawn'" in msg, f"{what}: unclear message {msg!r}"
        print("child: refused:", what, flush=True)
        return
    raise AssertionError(f"{what}: no CudaUnavailableError in the forked child")


def expect_closed_by_fork(what, fn, *args, **kwargs):
    """fn(*args) on an object created before the fork must raise ClosedError saying so, at once."""
    start = time.monotonic()
    try:
        fn(*args, **kwargs)
    except ce.ClosedError as exc:
        msg = str(exc)
        assert "before os.fork()" in msg and "create a new" in msg, f"{what}: unclear message {msg!r}"
        assert time.monotonic() - start < 5, f"{what}: took {time.monotonic() - start:.1f} s"
        print("child: closed:", what, flush=True)
        return msg
    raise AssertionError(f"{what}: no ClosedError in the forked child")


def fork_and_wait(child, timeout=60.0):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)  # the child's normal interpreter exit
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            print("parent: child exit code", code, flush=True)
            return code
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child hung: killed after {timeout} s")
        time.sleep(0.005)
'''

# A simulated driver module: enough of cuda.bindings.driver for events, streams, the pool, the
# Timer and the Worker. Every call made in a process other than the one that built it (a
# forked child) is recorded in `child_calls`: the child must make none.
FAKE_DRIVER = r'''
import itertools, threading


class _Attrs:
    def __getattr__(self, name):
        return name


class FakeDriver:
    class CUresult:
        CUDA_ERROR_NOT_READY = 600

    CUdevice_attribute = _Attrs()

    def __init__(self):
        self.pid = os.getpid()
        self.calls = []
        self.child_calls = []
        self.ids = itertools.count(0x1000)
        self.gate = threading.Event()  # cuEventSynchronize blocks until set: pending GPU work

    def __getattribute__(self, name):
        get = object.__getattribute__
        if name.startswith("cu"):
            get(self, "calls").append(name)
            if os.getpid() != get(self, "pid"):
                get(self, "child_calls").append(name)
        return get(self, name)

    def CUstream(self, value):
        return value

    def cuDeviceGetCount(self):
        return (0, 1)

    def cuDeviceGet(self, index):
        return (0, index)

    def cuDevicePrimaryCtxRetain(self, dev):
        return (0, 0x100 + dev)

    def cuCtxGetCurrent(self):
        return (0, 0)

    def cuCtxGetDevice(self):
        return (0, 0)

    def cuCtxPushCurrent(self, ctx):
        return (0,)

    def cuCtxPopCurrent(self):
        return (0, 0x100)

    def cuCtxGetStreamPriorityRange(self):
        return (0, 0, -5)

    def cuDriverGetVersion(self):
        return (0, 13000)

    def cuDeviceGetAttribute(self, attr, dev):
        return (0, 1)

    def cuStreamCreateWithPriority(self, flags, priority):
        return (0, next(self.ids))

    def cuStreamDestroy(self, handle):
        return (0,)

    def cuStreamQuery(self, handle):
        return (0,)

    def cuStreamSynchronize(self, handle):
        return (0,)

    def cuEventCreate(self, flags):
        return (0, next(self.ids))

    def cuEventDestroy(self, handle):
        return (0,)

    def cuEventRecord(self, event, stream):
        return (0,)

    def cuEventQuery(self, event):
        return (0,)

    def cuEventSynchronize(self, event):
        self.gate.wait(60)
        return (0,)

    def cuEventElapsedTime(self, start, end):
        return (600, 0.0)  # never ready: Timer regions stay pending

    def cuStreamWaitEvent(self, stream, event, flags):
        return (0,)


fake = FakeDriver()
driver._bind(fake)
'''


def _check(out, children: int = 1) -> None:
    assert out.returncode == 0, out
    assert out.stdout.count("parent: child exit code 0") == children, out
    assert out.stderr == "", out


def test_fork_after_init_refuses_cuda_and_leaks_inherited_objects():
    """The simulated parent initialized the driver and holds events (pooled and live), a
    stream, a Timer with pending regions and a Worker whose thread waits in the driver; the
    child gets the fork error from each CUDA use, drops everything without a driver call,
    and exits cleanly. The parent goes on using CUDA afterwards."""
    out = run_python(PRELUDE + FAKE_DRIVER + r'''
assert ce.is_available()
pool = ce.EventPool(max_cached=0)            # every release would destroy a handle
s = ce.GpuStream(0)
ev = ce.CudaEvent(0, timing=True).record(s)
cached = ce.CudaEvent(0)
cached.close()                               # one handle cached in the default pool
live = [ce.CudaEvent(pool=pool).record(s) for _ in range(3)]
timer = ce.Timer()
for _ in range(5):
    with timer.region("step", s):
        pass
w = ce.Worker()
w.add_task(print, "parent: worker task ran", flush=True)
w.commit(s)                                  # its thread now waits in cuEventSynchronize
idle = ce.CpuStream()


def child():
    global live, timer
    assert driver.state.forked and driver.state.exiting
    assert not ce.is_available()
    reason = driver.unavailable_reason()
    assert "fork" in reason and "'spawn'" in reason, reason
    assert ce.device_count() == 0
    expect_fork_error("driver()", driver.bindings)
    expect_fork_error("GpuStream()", ce.GpuStream)
    expect_fork_error("GpuStream(0)", ce.GpuStream, 0)
    expect_fork_error("CudaEvent().record(s)", lambda: ce.CudaEvent().record(s))
    expect_fork_error("CudaEvent(0) from the pool, record", lambda: ce.CudaEvent(0).record(s))
    expect_fork_error("new pool", lambda: ce.CudaEvent(pool=ce.EventPool()).record(s))
    expect_fork_error("ev.query()", ev.query)
    expect_fork_error("ev.synchronize(timeout)", ev.synchronize, timeout=5)
    expect_fork_error("ev.synchronize()", ev.synchronize)
    expect_fork_error("ev.record(s)", ev.record, s)
    expect_fork_error("ev.wait(s)", ev.wait, s)
    expect_fork_error("elapsed_time", ev.elapsed_time, ev)
    expect_fork_error("s.query()", s.query)
    expect_fork_error("s.synchronize()", s.synchronize)
    expect_fork_error("s.synchronize(timeout)", s.synchronize, timeout=5)
    expect_fork_error("as_stream(raw handle)", ce.as_stream, 1234, device=0)
    expect_fork_error("Device(0).synchronize()", ce.Device(0).synchronize)
    expect_fork_error("stream memory operation", driver.stream_write_value, s._handle, 0, 1, 64)
    expect_fork_error("host function", driver.launch_host_func, s._handle, 0, 0)
    expect_fork_error("pushed(0)", lambda: driver.pushed(0).__enter__())
    expect_fork_error("in_context(0)", driver.in_context, 0, print)
    expect_fork_error("timer.region", lambda: timer.region("child", s).__enter__())
    expect_fork_error("timer.harvest()", timer.harvest)
    expect_fork_error("timer.results()", timer.results, timeout=5)
    # the parent's worker has no thread here (and a commit in flight): refused, never queued
    assert w.closed and idle.closed
    expect_closed_by_fork("worker.add_task", w.add_task, print, "child: must not run behind a stream")
    expect_closed_by_fork("worker.commit(s)", w.commit, s)
    expect_closed_by_fork("worker.synchronize()", w.synchronize)
    assert "1 commit(s) unfinished" in expect_closed_by_fork("worker.close()", w.close)
    idle.close()                             # nothing was left to run on it: closes quietly
    w2 = ce.Worker()
    w2.add_task(gc.collect)
    expect_fork_error("new worker.commit(s)", w2.commit, s)
    # dropping what the parent made: leaked, never destroyed through the driver
    assert pool.trim() == 0 and ce.default_pool().trim() == 0
    ev.close()
    for e in live:
        e.close()
    s.close()
    del live, timer
    gc.collect()
    assert fake.child_calls == [], fake.child_calls
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0
# the parent is unaffected
assert fake.child_calls == []
assert ce.is_available() and not driver.state.forked and not driver.state.exiting
fake.gate.set()
w.synchronize(timeout=30)
assert ev.query()
ce.CudaEvent(pool=pool).record(s).close()
assert pool.stats().destroys >= 1
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: ok" in out.stdout, out
    assert out.stdout.count("parent: worker task ran") == 1, out
    assert "child: must not run" not in out.stdout, out


def test_fork_error_is_clear_at_the_top_level():
    """An unhandled use in the child shows the reason in its traceback."""
    out = run_python(PRELUDE + FAKE_DRIVER + r'''
s = ce.GpuStream(0)
def child():
    ce.CudaEvent(0).record(s)
code = fork_and_wait(child)
assert code == 1, code
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    assert out.returncode == 0, out
    assert "CudaUnavailableError" in out.stderr and "'spawn' start method" in out.stderr, out
    assert "CUDA does not survive fork" in out.stderr, out


def test_fork_before_cuda_init_child_may_use_cuda():
    """The parent never initialized CUDA: the child is not refused and initializes it itself
    (here: binds the simulated driver and uses it)."""
    out = run_python(PRELUDE + r'''
def child():
    assert not driver.state.forked and not driver.state.exiting
    assert driver.cuEventRecord is None        # still unbound: nothing was refused
''' + "\n".join("    " + line for line in FAKE_DRIVER.splitlines()) + r'''
    assert ce.is_available()
    s = ce.GpuStream(0)
    e = ce.CudaEvent(0).record(s)
    assert e.query()
    e.close()
    s.close()
    assert "cuEventRecord" in fake.calls and fake.child_calls == []  # its own driver
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout, out


def test_fork_after_failed_init_keeps_the_original_reason():
    """A parent that looked for CUDA and found none: the child reports that, not fork."""
    out = run_python(PRELUDE + r'''
driver._init_started = True
driver._reason = "no CUDA driver (simulated)"
assert not ce.is_available()
def child():
    assert not driver.state.forked
    assert driver.unavailable_reason() == "no CUDA driver (simulated)"
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
''', timeout=TIMEOUT)
    _check(out)


def test_fork_while_init_in_progress_is_refused():
    """A fork while another thread is inside cuInit: the child's driver state is half made,
    so it is refused too, and the lock that thread held does not hang the child."""
    out = run_python(PRELUDE + r'''
import threading
driver._lock.acquire()           # as held by a thread inside _init()
driver._init_started = True
def child():
    assert driver.state.forked
    expect_fork_error("driver()", driver.bindings)
    assert not ce.is_available()
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
''', timeout=TIMEOUT)
    _check(out)


def test_cpu_parts_work_in_a_forked_child():
    """After fork from a CUDA-initialized (simulated) parent, what the child creates on the
    CPU works: CpuStreams, host-backend AtomicEvents (CUDAEVENTS_ATOMIC_BACKEND=host, or no
    device given, since CUDA is unavailable there), Workers committing on CPU streams, CPU-stream
    Timer regions. A parent's idle CpuStream can be closed there."""
    out = run_python(PRELUDE + FAKE_DRIVER + r'''
parent_idle = ce.CpuStream()
def child():
    assert driver.state.forked
    cs = ce.CpuStream()
    done = []
    for i in range(100):
        cs.enqueue(done.append, i)
    cs.synchronize(timeout=30)
    assert done == list(range(100))
    a = ce.AtomicEvent()
    assert a.backend == "host"
    a.signal(3, cs)
    a.wait(3, timeout=30)
    a.wait(4, cs)
    a.signal(4)
    cs.synchronize(timeout=30)
    w = ce.Worker()
    ran = []
    for i in range(50):
        w.add_task(ran.append, i)
        w.commit(cs)
    w.synchronize(timeout=30)
    assert ran == list(range(50)) and w.errors == []
    t = ce.Timer()
    with t.region("cpu", cs):
        cs.enqueue(time.sleep, 0.001)
    assert len(t.results(timeout=30).durations("cpu")) == 1
    w.close(timeout=30)
    cs.close(timeout=30)
    a.close()
    parent_idle.close(timeout=30)
    assert fake.child_calls == [], fake.child_calls
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
''', timeout=TIMEOUT, env={"CUDAEVENTS_ATOMIC_BACKEND": "host"})
    _check(out)
    assert "child: ok" in out.stdout, out


def test_parent_cpu_stream_used_in_forked_child_is_refused():
    """A CpuStream or Worker made before fork has no thread in the child: using it there must
    raise rather than queue work that never runs."""
    out = run_python(PRELUDE + r'''
from cudaevents import ClosedError
cs = ce.CpuStream()
w = ce.Worker()
def child():
    try:
        cs.enqueue(print, "child: ran")
        cs.synchronize(timeout=1)
    except ClosedError:
        pass
    else:
        raise AssertionError("a parent's CpuStream accepted work in the forked child")
    try:
        w.add_task(print, "child: ran")
        w.commit(cs)
        w.synchronize(timeout=5)
    except ClosedError:
        pass
    else:
        raise AssertionError("a parent's Worker accepted work in the forked child")
code = fork_and_wait(child)
assert code == 0
''', timeout=TIMEOUT)
    _check(out)


def test_parent_threads_refused_in_child_of_any_fork():
    """Threads never survive fork, whether or not CUDA was initialized (here it never was):
    every CpuStream and Worker made before the fork is closed in the child and refuses work
    and waits with a ClosedError naming the fork, at once; close() does nothing for one that
    had nothing left to run and raises for one that had. A stream closed before the fork is
    just closed. New ones made in the child work, and the parent's go on in the parent."""
    out = run_python(PRELUDE + r'''
import threading
from cudaevents import ClosedError
assert not driver.state.forked
gate = threading.Event()
ran = []                                     # appended by the parent's tasks, in any process
idle = ce.CpuStream()
busy = ce.CpuStream()
busy.enqueue(gate.wait, 60)                  # holds busy's thread until the parent lets go
busy.enqueue(ran.append, "busy")
done = ce.CpuStream()
done.enqueue(ran.append, "done")
done.close(timeout=30)                       # closed, nothing left: not the fork's business
w_idle = ce.Worker()
w_busy = ce.Worker()
w_busy.add_task(ran.append, "w_busy committed")
w_busy.commit(busy)                          # waits behind busy
w_busy.add_task(ran.append, "w_busy uncommitted")
w_pending = ce.Worker()
w_pending.add_task(ran.append, "w_pending uncommitted")
before = list(ran)


def child():
    assert not driver.state.forked            # CUDA plays no part in this
    for s in (idle, busy):
        assert s.closed
        expect_closed_by_fork("enqueue", s.enqueue, ran.append, "child")
        expect_closed_by_fork("synchronize()", s.synchronize)
        expect_closed_by_fork("synchronize(timeout)", s.synchronize, timeout=30)
        expect_closed_by_fork("with", s.__enter__)
    idle.close()
    idle.close(timeout=1)
    msg = expect_closed_by_fork("close() with tasks unfinished", busy.close)
    assert "3 task(s) unfinished" in msg and "never run here" in msg, msg  # with the commit marker
    assert done.closed
    try:
        done.enqueue(ran.append, "child")
    except ClosedError as exc:
        assert "was closed" in str(exc), exc
    else:
        raise AssertionError("a closed stream accepted work")
    done.close()
    for w in (w_idle, w_busy, w_pending):
        assert w.closed
        expect_closed_by_fork("add_task", w.add_task, ran.append, "child")
        expect_closed_by_fork("commit", w.commit, idle)
        expect_closed_by_fork("synchronize()", w.synchronize)
        expect_closed_by_fork("with", w.__enter__)
    w_idle.close()
    msg = expect_closed_by_fork("worker close() with work unfinished", w_busy.close)
    assert "1 commit(s) unfinished and 1 task(s) uncommitted" in msg, msg
    msg = expect_closed_by_fork("worker close() with tasks uncommitted", w_pending.close)
    assert "0 commit(s) unfinished and 1 task(s) uncommitted" in msg, msg
    # what the child makes works
    cs = ce.CpuStream()
    w = ce.Worker()
    mine = []
    for i in range(20):
        cs.enqueue(mine.append, i)
        w.add_task(mine.append, -i)
        w.commit(cs)
    w.synchronize(timeout=30)
    cs.synchronize(timeout=30)
    assert sorted(mine) == sorted(list(range(20)) + [-i for i in range(20)]), mine
    w.close(timeout=30)
    cs.close(timeout=30)
    gc.collect()
    assert ran == before, ran                # nothing of the parent's ran in the child
    print("child: ok", flush=True)


code = fork_and_wait(child, timeout=60)
assert code == 0
# the parent's streams and workers are untouched
gate.set()
busy.synchronize(timeout=30)
w_busy.synchronize(timeout=30)
idle.enqueue(ran.append, "idle")
idle.synchronize(timeout=30)
w_busy.close(timeout=30)
w_pending.close(timeout=30)
w_idle.close(timeout=30)
busy.close(timeout=30)
idle.close(timeout=30)
assert ran == ["done", "busy", "w_busy committed", "idle", "w_busy uncommitted", "w_pending uncommitted"], ran
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: ok" in out.stdout, out


def test_locks_held_by_parent_threads_at_fork_do_not_hang_the_child():
    """Another thread of the parent holds the locks of a CpuStream, a Worker and the counter
    slab and quarantine across the fork: that thread does not exist in the child, which gets
    fresh locks and no hang."""
    out = run_python(PRELUDE + r'''
import threading
from cudaevents._sync import counter_storage
cs = ce.CpuStream()
w = ce.Worker()
counter_storage.slab_stats()                          # makes the slab (no memory without CUDA)
locks = [cs._runner.cond, w._cond, counter_storage._slab_lock, counter_storage._slab._lock, counter_storage._quarantine._lock]
holding, release = threading.Event(), threading.Event()


def hold():
    for lock in locks:
        lock.acquire()
    holding.set()
    release.wait(60)
    for lock in reversed(locks):
        lock.release()


holder = threading.Thread(target=hold, daemon=True)
holder.start()
assert holding.wait(30)


def child():
    expect_closed_by_fork("enqueue", cs.enqueue, print)
    expect_closed_by_fork("synchronize", cs.synchronize)
    cs.close()
    expect_closed_by_fork("add_task", w.add_task, print)
    expect_closed_by_fork("synchronize", w.synchronize)
    w.close()
    assert counter_storage.slab_stats()["bytes"] == 0
    assert counter_storage._quarantine.reclaim() == 0
    counter_storage._quarantine.add([], lambda: None)
    print("child: ok", flush=True)


try:
    code = fork_and_wait(child, timeout=30)
finally:
    release.set()
    holder.join(30)
assert code == 0
cs.enqueue(print, "parent: stream ok", flush=True)
cs.close(timeout=30)
w.close(timeout=30)
''', timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: stream ok" in out.stdout, out


def test_fork_from_a_stream_task_does_not_run_the_parents_queue_in_the_child():
    """A task of a CpuStream forks and the child returns from it: in the child that thread
    goes on, but it must stop rather than run the tasks queued behind (they are the parent's,
    which runs them once). The child then ends as its last thread does."""
    out = run_python(PRELUDE + r'''
import threading
r, wfd = os.pipe()
gate = threading.Event()
pids = []


def fork_task():
    gate.wait(30)
    pid = os.fork()
    if pid == 0:
        try:
            expect_closed_by_fork("synchronize", cs.synchronize)
            expect_closed_by_fork("enqueue", cs.enqueue, print)
            os.write(wfd, b"child returned from the task\n")
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        return                               # back into the stream's loop, in the child
    pids.append(pid)


def later():
    os.write(wfd, f"later task ran in {os.getpid()}\n".encode())


cs = ce.CpuStream()
cs.enqueue(fork_task)
cs.enqueue(later)
gate.set()
cs.synchronize(timeout=30)
(pid,) = pids
deadline = time.monotonic() + 30
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the child forked from a stream task hung")
    time.sleep(0.005)
assert os.waitstatus_to_exitcode(status) == 0, status
os.close(wfd)
lines = os.read(r, 4096).decode().splitlines()
assert sorted(lines) == sorted(["child returned from the task", f"later task ran in {os.getpid()}"]), lines
cs.close(timeout=30)
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    assert out.returncode == 0, out
    assert "parent: ok" in out.stdout, out


# Pinned, device-mapped counter memory for the simulated driver: a MAP_SHARED mapping, so a
# forked child's store into a parent's counter would show in the parent, as it can with real
# pinned memory. Simulated stream memory operations store into it as the GPU would.
FAKE_PINNED = r'''
import ctypes, mmap
shared = mmap.mmap(-1, 1 << 16)
shared_base = ctypes.addressof(ctypes.c_char.from_buffer(shared))
shared_used = [0]


def _host_alloc(self, nbytes, flags):
    address = shared_base + shared_used[0]
    shared_used[0] += nbytes
    return (0, address)


def _write_value64(self, stream, address, value, flags):
    ctypes.c_uint64.from_address(address).value = value
    return (0,)


FakeDriver.CU_MEMHOSTALLOC_PORTABLE = 1
FakeDriver.CU_MEMHOSTALLOC_DEVICEMAP = 2
FakeDriver.cuMemHostAlloc = _host_alloc
FakeDriver.cuMemHostGetDevicePointer = lambda self, host, flags: (0, host)
FakeDriver.cuStreamWriteValue64 = _write_value64
FakeDriver.cuStreamWaitValue64 = lambda self, stream, address, value, flags: (0,)
FakeDriver.cuEventSynchronize = lambda self, event: (0,)
'''


def test_fork_counter_cells_refused_and_parent_counter_untouched():
    """The simulated CUDA parent holds mem64 counters (slots of shared pinned memory, one
    back on the slab's free list) and a hostfn counter. In the child every read, store and
    stream operation of them is refused with the fork error and releasing or retiring them
    does nothing, so the parent's memory is never written; the slab is gone, so a new device
    counter needs the driver and is refused; host counters made there work."""
    out = run_python(PRELUDE + FAKE_DRIVER + FAKE_PINNED + r'''
from cudaevents._sync import counter_storage
s = ce.GpuStream(0)
a = ce.AtomicEvent(0)
assert a.backend == "mem64", a.backend
a.signal(1, s)
a.wait(1, timeout=30)
b = ce.AtomicEvent(0)
b.close()                                    # its slot goes back to the slab's free list
assert counter_storage.slab_stats()["free"] > 0
dropped = ce.AtomicEvent(0)
dropped.signal(7)
os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = "hostfn"
h = ce.AtomicEvent(0)
del os.environ["CUDAEVENTS_ATOMIC_BACKEND"]
assert h.backend == "hostfn"
h.signal(1)
word = ctypes.c_uint64.from_address(a._cell._slot[0])
raw = a._cell._slot[0]
assert word.value == 1


def child():
    global dropped
    assert driver.state.forked and counter_storage._slab is None
    cell = a._cell
    expect_fork_error("cell.read()", cell.read)
    expect_fork_error("cell.store()", cell.store, 5)
    expect_fork_error("cell.gpu_signal()", cell.gpu_signal, s._handle, 5)
    expect_fork_error("cell.gpu_wait()", cell.gpu_wait, s._handle, 5)
    cell.release_waiters()                   # would store limit - 1: does nothing
    cell.retire([])                          # would free the slot: does nothing
    expect_fork_error("a.value", lambda: a.value)
    expect_fork_error("a.signal(2)", a.signal, 2)
    expect_fork_error("a.wait(5, s)", a.wait, 5, s)
    expect_fork_error("a.is_signaled(1)", a.is_signaled, 1)
    expect_fork_error("h.value", lambda: h.value)
    expect_fork_error("h cell store", h._cell.store, 9)
    expect_fork_error("h cell gpu_signal", h._cell.gpu_signal, s._handle, 9)
    h._cell.release_waiters()
    h._cell.retire([])
    expect_fork_error("new mem64 cell", counter_storage.make_cell, "mem64", 0)
    expect_fork_error("new mem32 cell", counter_storage.make_cell, "mem32", 0)
    expect_fork_error("AtomicEvent(0)", ce.AtomicEvent, 0)
    assert counter_storage.slab_stats()["bytes"] == 0
    assert counter_storage._quarantine.reclaim() == 0
    a.close()
    h.close()
    del dropped
    gc.collect()
    host = ce.AtomicEvent()
    assert host.backend == "host"
    host.signal(3)
    host.wait(3, timeout=5)
    host.close()
    assert ctypes.c_uint64.from_address(raw).value == 1
    assert fake.child_calls == [], fake.child_calls
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0
assert word.value == 1 and a.value == 1, word.value
assert dropped.value == 7 and h.value == 1
a.signal(2, s)
a.wait(2, timeout=30)
c = ce.AtomicEvent(0)                        # the parent's slab still serves slots
c.signal(1, s)
c.wait(1, timeout=30)
for e in (a, c, h, dropped):
    e.close()
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: ok" in out.stdout, out


# -- the real driver ---------------------------------------------------------------------
GPU_PARENT = r'''
assert ce.is_available(), driver.unavailable_reason()
s = ce.GpuStream(0)
ev = ce.CudaEvent(0, timing=True).record(s)
ev.synchronize(timeout=30)
pool = ce.EventPool(max_cached=0)
live = [ce.CudaEvent(pool=pool).record(s) for _ in range(3)]
timer = ce.Timer()
for _ in range(5):
    with timer.region("step", s):
        pass
w = ce.Worker()
w.add_task(print, "parent: worker task ran", flush=True)
w.commit(s)
w.synchronize(timeout=30)
s.synchronize(timeout=30)
'''


GPU_FORK_CHILD = r'''
def child():
    assert not ce.is_available() and driver.state.forked
    assert "'spawn'" in driver.unavailable_reason()
    expect_fork_error("CudaEvent().record(GpuStream())", lambda: ce.CudaEvent().record(ce.GpuStream()))
    expect_fork_error("CudaEvent(0).record(s)", lambda: ce.CudaEvent(0).record(s))
    expect_fork_error("ev.query()", ev.query)
    expect_fork_error("ev.synchronize()", ev.synchronize)
    expect_fork_error("ev.elapsed_time", ev.elapsed_time, ev)
    expect_fork_error("s.synchronize()", s.synchronize)
    expect_fork_error("Event(0).signal(s)", lambda: ce.Event(0).signal(s))
    expect_fork_error("Fence(0)", lambda: ce.Fence(0).update(s))
    expect_fork_error("timer.region", lambda: timer.region("child", s).__enter__())
    expect_closed_by_fork("worker.add_task", w.add_task, print, "child: must not run")
    expect_closed_by_fork("worker.commit(s)", w.commit, s)
    expect_fork_error("Device(0).synchronize()", ce.Device(0).synchronize)
    for e in live:
        e.close()
    ev.close()
    s.close()
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0


# multiprocessing's 'fork' start method: the same refusal
import multiprocessing


def mp_child():
    try:
        ce.GpuStream()
    except CudaUnavailableError as exc:
        assert "'spawn'" in str(exc)
        print("mp child: refused", flush=True)
        return
    raise SystemExit(3)


p = multiprocessing.get_context("fork").Process(target=mp_child)
p.start()
p.join(60)
if p.is_alive():
    p.kill()
    p.join(10)
    raise AssertionError("the multiprocessing 'fork' child hung")
assert p.exitcode == 0, p.exitcode
# the parent is unaffected
e2 = ce.CudaEvent(0, timing=True).record(s)
e2.synchronize(timeout=30)
assert ev.elapsed_time(e2) >= 0
w.add_task(print, "parent: second task ran", flush=True)
w.commit(s)
w.synchronize(timeout=30)
print("parent: ok", flush=True)
'''


@pytest.mark.gpu
def test_gpu_fork_after_init_child_gets_clear_error():
    """A real parent initialized CUDA and recorded events; its forked child is refused every
    CUDA use with the fork error, drops the inherited objects, and exits without hanging.
    The parent keeps using CUDA afterwards."""
    out = run_python(PRELUDE + GPU_PARENT + GPU_FORK_CHILD, timeout=TIMEOUT)
    _check(out)
    for line in ("child: ok", "mp child: refused", "parent: ok", "parent: second task ran"):
        assert line in out.stdout, out
    assert "child: must not run" not in out.stdout, out


@pytest.mark.gpu
def test_gpu_fork_atomic_event_refused_and_parent_counter_untouched():
    """Counters live in pinned host memory shared with (or unmapped in) a forked child: the
    child must be refused a new device counter and any use of the parent's, and the parent's
    counter must keep its value."""
    out = run_python(PRELUDE + r'''
s = ce.GpuStream(0)
a = ce.AtomicEvent(0)
a.signal(1, s)
a.wait(1, timeout=30)
b = ce.AtomicEvent(0)
b.close()                                      # its slot goes back to the slab's free list
s.synchronize(timeout=30)
def child():
    expect_fork_error("AtomicEvent(0)", ce.AtomicEvent, 0)
    expect_fork_error("a.signal(2)", a.signal, 2)
    expect_fork_error("a.value", lambda: a.value)
    expect_fork_error("a.wait(5, s)", a.wait, 5, s)
    a.close()
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
assert a.value == 1, a.value
a.signal(2, s)
a.wait(2, timeout=30)
print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    _check(out)


@pytest.mark.gpu
def test_gpu_spawn_child_uses_cuda():
    """multiprocessing's 'spawn' start method: a fresh interpreter that uses CUDA normally,
    while the parent has CUDA initialized."""
    out = run_python(r'''
import multiprocessing
import cudaevents as ce

CHILD = """
import cudaevents as ce
assert ce.is_available(), ce._cuda.unavailable_reason()
s = ce.GpuStream()
start = ce.CudaEvent(timing=True).record(s)
end = ce.CudaEvent(timing=True).record(s)
end.synchronize(timeout=30)
assert start.elapsed_time(end) >= 0
a = ce.AtomicEvent(0)
a.signal(1, s)
a.wait(1, timeout=30)
w = ce.Worker()
w.add_task(print, "spawn child: worker task ran", flush=True)
w.commit(s)
w.synchronize(timeout=30)
print("spawn child: ok", flush=True)
"""

if __name__ == "__main__":
    s = ce.GpuStream()
    ce.CudaEvent().record(s).synchronize(timeout=30)
    p = multiprocessing.get_context("spawn").Process(target=exec, args=(CHILD, {}))
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        raise SystemExit("the spawn child hung")
    assert p.exitcode == 0, p.exitcode
    ce.CudaEvent().record(s).synchronize(timeout=30)
    print("parent: ok", flush=True)
''', timeout=TIMEOUT)
    assert out.returncode == 0, out
    for line in ("spawn child: ok", "spawn child: worker task ran", "parent: ok"):
        assert line in out.stdout, out


def test_parent_counters_in_a_forked_child_neither_deadlock_nor_wait_for_dead_streams():
    out = run_python(
        """
        import os, threading, time
        import cudaevents as ce

        waiting = ce.AtomicEvent()  # host backend (no GPU, or CUDAEVENTS_ATOMIC_BACKEND=host)
        gate = threading.Event()
        cs = ce.CpuStream()
        cs.enqueue(gate.wait, 30)
        waiting.signal(1, cs)  # pending on the CpuStream's thread, which the child will not have
        held = ce.AtomicEvent()
        held.signal(3)
        held._lock.acquire()  # as if another thread were inside the counter at the fork
        pid = os.fork()
        if pid == 0:
            code = 0
            t0 = time.monotonic()
            try:
                waiting.wait(1, timeout=5)
                code = 3
            except ce.ClosedError as exc:
                if "os.fork()" not in str(exc) or time.monotonic() - t0 > 1:
                    code = 4
            if not held.is_signaled(3):  # the lock held at the fork does not block the child
                code = 5
            held.signal(4)
            held.wait(4, timeout=1)
            os._exit(code)
        held._lock.release()
        _, status = os.waitpid(pid, 0)
        gate.set()
        waiting.wait(1, timeout=10)  # the parent is unaffected
        cs.close(timeout=10)
        print("child exit", os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
        env={"CUDAEVENTS_ATOMIC_BACKEND": "host"},
    )
    assert out.returncode == 0 and "child exit 0" in out.stdout, out
