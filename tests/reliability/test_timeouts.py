"""Every blocking wait that takes a timeout raises ``TimeoutError`` once that timeout has
passed, and within 50 ms of it, when what it waits for never happens.

Each wait below is given something that will not complete on its own: a CPU stream held on a
gate, or a GPU stream held behind a latch (helpers.latch, the ``latch`` fixture). The bound is
checked with ``time.monotonic`` around the call: not before the timeout (less a millisecond of
clock rounding), not later than the timeout plus 50 ms (a late attempt is tried again, up to
three times, so that a machine busy with other processes does not fail the test; a wait late
by its own doing is late every time). Gates and latches are released afterwards,
so no thread is left blocked. A hang would still end the test run through pytest-timeout;
the subprocess test at the end checks that a process whose waits all gave up still exits at
once and silently.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers.subproc import run_script

import cudaevents
from cudaevents import (
    AtomicEvent,
    CpuStream,
    CudaEvent,
    Event,
    Fence,
    GpuStream,
    Timer,
    WaitPolicy,
    Worker,
)
from cudaevents._core import wait as _wait

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 0.2
SLACK = 0.05  # the bound: raise within the timeout plus 50 ms
EARLY = 1e-3  # clock rounding allowed on the early side

POLICIES = ["spin", "yield", "sleep", "block",
            WaitPolicy(spin=0.0, yield_for=0.0, max_sleep=5.0),  # long sleeps are cut at the deadline
            WaitPolicy(spin=0.0, yield_for=0.0, max_sleep=5.0, block=True)]
POLICY_IDS = ["spin", "yield", "sleep", "block", "sleep-5s", "block-5s"]
GPU_BACKENDS = ["mem64", "mem32", "hostfn"]


ATTEMPTS = 3


def times_out(call, timeout: float = TIMEOUT) -> TimeoutError:
    """Run ``call(timeout)``; check it raises TimeoutError within [timeout, timeout + 50 ms].

    Giving up early fails at once. An attempt that comes back late is tried again, up to
    three attempts: a machine too busy to run the thread on time (other processes) must not
    fail the test, while a wait that is late by its own doing is late every time.
    """
    late = []
    for _ in range(ATTEMPTS):
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            call(timeout)
        elapsed = time.monotonic() - start
        assert elapsed >= timeout - EARLY, f"gave up after {elapsed:.4f} s, before the {timeout} s timeout"
        if elapsed < timeout + SLACK:
            return info.value
        late.append(round(elapsed, 4))
    raise AssertionError(f"raised after {late} s, each more than {SLACK} s past the {timeout} s timeout")


@pytest.fixture
def held(gates):
    """A CpuStream stuck on a gate, and the gate (set at teardown, then the stream closes)."""
    made = []

    def make():
        gate = gates()
        s = CpuStream()
        s.enqueue(gate.wait, 60)
        made.append((s, gate))
        return s, gate

    yield make
    for s, gate in made:
        gate.set()
        s.close(timeout=10)


# -- the wait loop itself --------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_wait_until_gives_up_on_time(policy):
    cond = threading.Condition()
    err = times_out(lambda t: _wait.wait_until(lambda: False, t, "thing", _wait.resolve_policy(policy), cond))
    assert "thing did not complete within 0.2 s" in str(err)


@pytest.mark.parametrize("timeout", [0, 0.0, 1e-4])
def test_zero_and_tiny_timeouts_raise_at_once(timeout):
    times_out(lambda t: _wait.wait_until(lambda: False, t, "thing"), timeout)
    times_out(lambda t: AtomicEvent().wait(1, timeout=t), timeout)


def test_a_slow_condition_check_does_not_stretch_the_deadline():
    """A done() that takes a while itself (a driver query under contention) is not called
    again once the deadline has passed."""
    def slow():
        time.sleep(0.03)
        return False

    times_out(lambda t: _wait.wait_until(slow, t, "slow thing", _wait.resolve_policy("sleep")))


# -- counters, value events, fences on the host backend (CI) ----------------------------------
@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_atomic_wait_host_backend(host_backend, policy):
    a = AtomicEvent(policy=policy)
    assert a.backend == "host"
    err = times_out(lambda t: a.wait(1, timeout=t))
    assert "AtomicEvent.wait(1)" in str(err)
    times_out(lambda t: a.wait(1, timeout=t, policy=policy))  # the per-call policy too
    a.signal(1)
    a.wait(1, timeout=0)
    a.close()


@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_atomic_wait_for_a_cpu_stream_signal_that_never_comes(host_backend, held, policy):
    s, gate = held()
    a = AtomicEvent()
    a.signal(3, s)  # pending behind the gate
    times_out(lambda t: a.wait(3, timeout=t, policy=policy))
    gate.set()
    a.wait(3, timeout=10)


def test_atomic_wait_by_default_api_path_without_a_gpu():
    """Without CUDAEVENTS_ATOMIC_BACKEND: the backend the API picks (host on CI)."""
    a = AtomicEvent()
    if not cudaevents.is_available():
        assert a.backend == "host"
    times_out(lambda t: a.wait(1, timeout=t))


@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_event_wait_never_signalled_in_time(host_backend, held, policy):
    s, gate = held()
    ev = Event()
    ev.signal(s)
    times_out(lambda t: ev.wait(timeout=t, policy=policy))
    gate.set()
    ev.wait(timeout=10)
    ev.value = 2  # raised and not signalled again: waits for 2
    times_out(lambda t: ev.wait(timeout=t, policy=policy))
    ev.close()


@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_fence_wait(host_backend, held, policy):
    s, gate = held()
    f = Fence()
    f.update()
    f.update(s)
    times_out(lambda t: f.wait(timeout=t, policy=policy))
    gate.set()
    f.wait(timeout=10)
    f.close()


def test_cpu_stream_synchronize(held):
    s, gate = held()
    err = times_out(lambda t: s.synchronize(timeout=t))
    assert "1 task(s) unfinished" in str(err)
    gate.set()
    s.synchronize(timeout=10)


def test_cpu_stream_close(held):
    s, gate = held()
    s.enqueue(lambda: None)
    times_out(lambda t: s.close(timeout=t))
    assert s.closed
    gate.set()
    s.close(timeout=10)  # now the thread finishes


def test_worker_synchronize_and_close_with_a_task_that_never_becomes_ready(held):
    s, gate = held()
    w = Worker()
    ran = []
    w.add_task(ran.append, 1)
    w.commit(s)  # ready only once s passes the gate
    times_out(lambda t: w.synchronize(timeout=t))
    times_out(lambda t: w.close(timeout=t))
    assert w.closed and ran == []
    gate.set()
    w.close(timeout=10)
    assert ran == [1]


class _StuckCpuStream(CpuStream):
    """A CpuStream whose enqueue blocks until released: a commit that stays in flight (as a
    commit whose record blocks behind a full GPU stream would)."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def enqueue(self, fn, /, *args, **kwargs):
        self.entered.set()
        self.release.wait(60)
        super().enqueue(fn, *args, **kwargs)


def test_worker_close_times_out_on_a_commit_in_flight_and_loses_nothing():
    """Regression: close(timeout) waited without a timeout for commits in flight on other
    threads. Now it gives up on time, and the commit, once through, runs its tasks and stops
    the worker's thread."""
    s = _StuckCpuStream()
    w = Worker()
    ran = []

    def committer():
        w.add_task(ran.append, "committed")
        w.commit(s)

    t = threading.Thread(target=committer)
    try:
        w.add_task(ran.append, "uncommitted")  # this thread's batch: run at close
        t.start()
        assert s.entered.wait(10)
        err = times_out(lambda x: w.close(timeout=x))
        assert "commit in flight" in str(err)
        assert w.closed and w._runner.thread.is_alive()
    finally:
        s.release.set()
        t.join(10)
    w.close(timeout=10)
    assert not w._runner.thread.is_alive()
    assert sorted(ran) == ["committed", "uncommitted"] and w.errors == []
    s.close(timeout=10)


def test_timer_synchronize_and_results_on_a_cpu_stream(held):
    s, gate = held()
    timer = Timer(nvtx=False)
    with timer.region("held", s):
        pass
    times_out(lambda t: timer.synchronize(timeout=t))
    err = times_out(lambda t: timer.results(timeout=t))
    assert "1 region(s) unfinished" in str(err)
    gate.set()
    assert len(timer.results(timeout=10)) == 1


def test_several_threads_time_out_together(host_backend, held):
    """Timeouts hold when many threads wait at once with every policy. One of them spins:
    spinners hold the GIL between the interpreter's 5 ms switches, so several spinners in
    one process make each other late by design (see WaitPolicy)."""
    s, gate = held()
    a, ev, f = AtomicEvent(), Event(), Fence()
    a.signal(1, s)
    ev.signal(s)
    f.update(s)
    others = [p for p in POLICIES if p != "spin"]
    waits = [lambda t: a.wait(1, timeout=t, policy="spin")]
    waits += [lambda t, p=p: a.wait(1, timeout=t, policy=p) for p in others]
    waits += [lambda t, p=p: ev.wait(timeout=t, policy=p) for p in others]
    waits += [lambda t, p=p: f.wait(timeout=t, policy=p) for p in others]
    waits += [lambda t: s.synchronize(timeout=t)]
    failures = []

    def run(call):
        try:
            times_out(call)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in waits]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    gate.set()
    a.wait(1, timeout=10)
    ev.wait(timeout=10)
    f.wait(timeout=10)


def test_a_process_whose_waits_gave_up_exits_silently():
    """Waits that timed out leave threads blocked on things that never come (a CPU stream on
    a gate nobody sets, a worker commit behind it); the process still exits at once, quietly."""
    out = run_script("waits_gave_up_exit.py", timeout=60, env={"CUDAEVENTS_ATOMIC_BACKEND": "host"})
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out


# -- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("blocking_sync", [False, True], ids=["spin-event", "blocking-sync-event"])
def test_cuda_event_synchronize(stream, latch, pool, blocking_sync):
    latch.block(stream)
    ev = CudaEvent(0, blocking_sync=blocking_sync, pool=pool).record(stream)
    err = times_out(lambda t: ev.synchronize(timeout=t))
    assert "CudaEvent.synchronize()" in str(err)
    assert not ev.query()
    latch.release()
    ev.synchronize(timeout=10)
    ev.close()


@pytest.mark.gpu
def test_gpu_stream_synchronize(stream, latch):
    latch.block(stream)
    err = times_out(lambda t: stream.synchronize(timeout=t))
    assert "GpuStream.synchronize()" in str(err)
    latch.release()
    stream.synchronize(timeout=10)


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_atomic_wait_gpu_backends_never_signalled(gpu_backend, policy):
    a = AtomicEvent(0, policy=policy)
    assert a.backend == gpu_backend
    times_out(lambda t: a.wait(1, timeout=t))
    a.signal(1)
    a.wait(1, timeout=10)
    a.close()


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_atomic_wait_gpu_backends_for_a_gpu_signal_held_back(gpu_backend, policy, stream, latch):
    a = AtomicEvent(0)
    latch.block(stream)
    a.signal(2, stream)
    times_out(lambda t: a.wait(2, timeout=t, policy=policy))
    latch.release()
    a.wait(2, timeout=10)
    a.close()


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
def test_event_and_fence_wait_on_gpu(gpu_backend, stream, latch):
    latch.block(stream)
    on_cuda = Event()
    on_cuda.signal(stream)  # a recycled CUDA event
    assert on_cuda.backing == "cuda"
    on_counter = Event(value=3)
    on_counter.signal(stream)  # a counter of the forced backend
    assert on_counter.backing == "atomic"
    f = Fence(0)
    f.update(stream)
    for policy in POLICIES:
        times_out(lambda t: on_cuda.wait(timeout=t, policy=policy))
        times_out(lambda t: on_counter.wait(timeout=t, policy=policy))
        times_out(lambda t: f.wait(timeout=t, policy=policy))
    latch.release()
    on_cuda.wait(timeout=10)
    on_counter.wait(timeout=10)
    f.wait(timeout=10)
    for x in (on_cuda, on_counter, f):
        x.close()


@pytest.mark.gpu
def test_worker_close_with_a_gpu_commit_that_never_becomes_ready(stream, latch):
    w = Worker()
    ran = []
    latch.block(stream)
    w.add_task(ran.append, 1)
    w.commit(stream)
    times_out(lambda t: w.synchronize(timeout=t))
    times_out(lambda t: w.close(timeout=t))
    assert ran == []
    latch.release()
    w.close(timeout=10)
    assert ran == [1]


@pytest.mark.gpu
def test_timer_synchronize_and_results_on_gpu(stream, latch, pool):
    timer = Timer(pool=pool, nvtx=False)
    latch.block(stream)
    with timer.region("held", stream):
        pass
    times_out(lambda t: timer.synchronize(timeout=t))
    times_out(lambda t: timer.results(timeout=t))
    latch.release()
    assert len(timer.results(timeout=10)) == 1


@pytest.mark.gpu
def test_timer_synchronize_with_a_reference_held_on_another_stream(stream, latch, pool):
    """The region's end completes but the per-device reference (recorded on a stream that is
    held) does not: results() still gives up on time."""
    other = GpuStream(0)
    try:
        timer = Timer(pool=pool, nvtx=False)
        latch.block(stream)
        with timer.region("first", stream):  # the reference event goes on the held stream
            pass
        with timer.region("free", other):
            pass
        other.synchronize(timeout=10)
        times_out(lambda t: timer.results(timeout=t))
        latch.release()
        assert len(timer.results(timeout=10)) == 2
    finally:
        latch.release()
        other.synchronize(timeout=10)
        other.close()
