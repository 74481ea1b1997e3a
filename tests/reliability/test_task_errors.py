"""A CPU task that raises: its error reaches every waiter of what its stream signals afterwards.

The semantics under test (CpuStream keeps its first error "sticky"; an AtomicEvent carries a
producer's error):

- Signals a CpuStream gives *after* one of its tasks raised (AtomicEvent.signal, Event.signal,
  Fence.update on that stream) fail the counter with that very exception object.
- Every host wait on a failed counter raises it: waits already blocked (any number of threads,
  any policy) wake with it, waits made later raise it at once. A CpuStream waiting on it
  fails with it too, and so passes it on to what that stream signals next.
- Signals given *before* the failure are unaffected.
- Once failed, a counter stays failed: later signals (host, CPU or GPU stream) change nothing.
- A GPU stream cannot raise. A GPU wait already enqueued on a failed counter is let go, so the
  stream does not hang (and the host waits that depend on it do not either); GPU waits
  enqueued after the failure raise at once on the host. Work behind a let-go GPU wait does
  run, and what that GPU stream signals afterwards is *not* failed: GPU streams do not carry
  errors, so a consumer that must not see a failed producer's output waits on the host or a
  CpuStream, where the error surfaces.
- A Worker commit on a failed CpuStream still runs its tasks (clean-up must not be lost); a
  task that waits on an Event the stream signalled gets the error, which the worker keeps.
"""

from __future__ import annotations

import time

import pytest
from helpers.fakes import use_fake_gpu_cells
from helpers.threads import join_all, spawn_waiters

import cudaevents
from cudaevents import (
    AtomicEvent,
    CudaEvent,
    Event,
    Fence,
    WaitPolicy,
    Worker,
)

pytestmark = pytest.mark.timeout(120)

POLICIES = ["spin", "yield", "sleep", "block", WaitPolicy(spin=0.0, yield_for=0.0, max_sleep=2e-4, block=True)]
GPU_BACKENDS = ["mem64", "mem32", "hostfn"]


class Boom(Exception):
    """The producer's failure (a class of its own, so nothing else can match it)."""


class Fatal(BaseException):
    """A failure that is not an Exception (as KeyboardInterrupt or SystemExit are not)."""


def failing_task(error: BaseException):
    def task():
        raise error

    return task


def expect_error(error: BaseException, call) -> None:
    """``call()`` raises exactly ``error``: the producer's own exception object."""
    with pytest.raises(type(error)) as info:
        call()
    assert info.value is error


# -- the host backend (CI) -------------------------------------------------------------------
@pytest.mark.parametrize("error", [Boom("input file is corrupt"), Fatal("worker killed")], ids=["Exception", "BaseException"])
def test_every_waiter_kind_gets_the_original_error(host_backend, cpu, gates, error):
    producer = cpu("producer")
    gate = gates()
    before = AtomicEvent()
    before.signal(1, producer)  # ahead of the failure: unaffected
    producer.enqueue(gate.wait, 30)
    producer.enqueue(failing_task(error))
    a, ev, f = AtomicEvent(), Event(value=2), Fence()
    a.signal(5, producer)
    ev.signal(producer)
    f.update()  # the host's own update: done
    f.update(producer)  # the failed one

    # blocked before the failure: threads with every policy, on each kind
    calls = []
    for p in POLICIES:
        calls += [lambda p=p: a.wait(5, timeout=30, policy=p), lambda p=p: ev.wait(timeout=30, policy=p),
                  lambda p=p: f.wait(timeout=30, policy=p)]
    threads, outcomes = spawn_waiters(calls)
    # CPU streams waiting on each, and what they signal next
    relays = {}
    for name, wait in (("a", lambda s: a.wait(5, s)), ("ev", lambda s: ev.wait(s)), ("f", lambda s: f.wait(s))):
        s = cpu(f"relay-{name}")
        wait(s)
        onward = AtomicEvent()
        onward.signal(1, s)
        relays[name] = (s, onward)
    time.sleep(0.02)
    assert all(o is None for o in outcomes)  # all still waiting
    gate.set()
    join_all(threads)
    assert all(o is error for o in outcomes), outcomes

    # waits made after the failure raise at once
    for call in (lambda: a.wait(5, timeout=0), lambda: ev.wait(timeout=0), lambda: f.wait(timeout=0),
                 lambda: a.wait(1, timeout=0),  # a value it had reached: still the error
                 lambda: a.value, lambda: a.is_signaled(0), lambda: ev.is_signaled(),
                 lambda: a.wait(5, cpu("late")), lambda: ev.wait(cpu("late")), lambda: f.wait(cpu("late"))):
        expect_error(error, call)
    assert a.error is error and ev.error is error
    # each relay stream failed with the same error and passed it on
    for s, onward in relays.values():
        expect_error(error, lambda: s.synchronize(timeout=10))
        expect_error(error, lambda: onward.wait(1, timeout=10))
    # the producer keeps its first error; what it signalled before is fine
    expect_error(error, lambda: producer.synchronize(timeout=10))
    before.wait(1, timeout=10)
    assert before.error is None and before.value == 1


def test_only_the_first_error_travels(host_backend, cpu):
    producer = cpu()
    first, second = Boom("first"), Boom("second")
    producer.enqueue(failing_task(first))
    a = AtomicEvent()
    a.signal(1, producer)
    producer.enqueue(failing_task(second))
    b = AtomicEvent()
    b.signal(1, producer)
    expect_error(first, lambda: a.wait(1, timeout=10))
    expect_error(first, lambda: b.wait(1, timeout=10))
    expect_error(first, lambda: producer.synchronize(timeout=10))


def test_an_error_travels_down_a_chain_of_cpu_streams(host_backend, cpu):
    error = Boom("stage 0 failed")
    stages = [cpu(f"stage-{i}") for i in range(6)]
    events = [Event() for _ in stages]
    stages[0].enqueue(failing_task(error))
    events[0].signal(stages[0])
    for i in range(1, len(stages)):
        events[i - 1].wait(stages[i])
        events[i].signal(stages[i])
    expect_error(error, lambda: events[-1].wait(timeout=10))
    for s in stages:
        expect_error(error, lambda: s.synchronize(timeout=10))


def test_many_threads_wait_on_one_failing_counter(host_backend, cpu, gates):
    producer, gate = cpu(), gates()
    error = Boom("many")
    producer.enqueue(gate.wait, 30)
    producer.enqueue(failing_task(error))
    a = AtomicEvent()
    a.signal(1, producer)
    calls = [lambda i=i: a.wait(1, timeout=30, policy=POLICIES[i % len(POLICIES)]) for i in range(48)]
    threads, outcomes = spawn_waiters(calls)
    time.sleep(0.02)
    gate.set()
    join_all(threads)
    assert all(o is error for o in outcomes)


def test_signals_after_the_failure_change_nothing(host_backend, cpu):
    """Regression: a later signal stored its value over a failed counter (on GPU backends
    that re-armed GPU waits the failure had let go). Now a failed counter stays failed, and
    the signalling streams do not fail themselves."""
    producer, healthy = cpu(), cpu()
    error = Boom("gone")
    producer.enqueue(failing_task(error))
    a = AtomicEvent()
    a.signal(1, producer)
    expect_error(error, lambda: a.wait(1, timeout=10))
    a.signal(2)  # host: accepted, changes nothing
    a.signal(3, healthy)  # a healthy stream: accepted, changes nothing
    f = Fence()
    f.update(producer)
    expect_error(error, lambda: f.wait(timeout=10))
    assert f.update() == 2
    healthy.synchronize(timeout=10)  # the healthy stream did not fail
    expect_error(error, lambda: a.wait(3, timeout=10))
    expect_error(error, lambda: f.wait(timeout=10))
    with pytest.raises(ValueError, match="never decrease"):
        a.signal(1)  # values are still checked


def test_a_healthy_stream_signalling_after_a_failing_one_does_not_fail(host_backend, cpu, gates):
    """Regression: a signal ordered behind another stream's pending signal waited for it with
    the error raised on the healthy stream's thread, failing that stream (and everything it
    signalled next) though none of its tasks raised."""
    failing, healthy = cpu(), cpu()
    gate, error = gates(), Boom("failing stream")
    failing.enqueue(gate.wait, 30)
    failing.enqueue(failing_task(error))
    a, other = AtomicEvent(), AtomicEvent()
    a.signal(1, failing)
    a.signal(2, healthy)  # lands after the 1: waits for it on healthy's thread
    other.signal(1, healthy)
    gate.set()
    expect_error(error, lambda: a.wait(2, timeout=10))
    healthy.synchronize(timeout=10)
    other.wait(1, timeout=10)
    assert other.error is None


def test_closing_a_counter_with_an_ordered_signal_pending_does_not_fail_the_stream(host_backend, cpu, gates):
    """Regression: the same wait raised ClosedError on the signalling stream when the counter
    was closed meanwhile, failing a stream none of whose tasks raised."""
    first, second = cpu(), cpu()
    gate = gates()
    first.enqueue(gate.wait, 30)
    a, other = AtomicEvent(), AtomicEvent()
    a.signal(1, first)
    a.signal(2, second)  # waits for the 1 on second's thread
    other.signal(1, second)
    time.sleep(0.02)
    a.close()
    gate.set()
    second.synchronize(timeout=10)
    first.synchronize(timeout=10)
    other.wait(1, timeout=10)


def test_a_worker_commit_behind_a_failed_stream_still_runs_and_the_event_carries_the_error(host_backend, cpu):
    producer = cpu()
    error = Boom("no data")
    producer.enqueue(failing_task(error))
    ready = Event()
    ready.signal(producer)
    w = Worker()
    ran = []
    w.add_task(ran.append, "clean-up")
    w.add_task(lambda: ready.wait(timeout=10))  # the consumer that must not see bad data
    w.add_task(ran.append, "after")
    w.commit(producer)
    w.close(timeout=10)
    assert ran == ["clean-up", "after"]
    assert len(w.errors) == 1 and w.errors[0] is error


def test_a_waiter_does_not_fail_its_own_stream_before_the_failure(host_backend, cpu, gates):
    """Signals before the failing task stay clean even while waiters are blocked on later ones."""
    producer, consumer, gate = cpu(), cpu(), gates()
    ok, bad = AtomicEvent(), AtomicEvent()
    producer.enqueue(gate.wait, 30)
    ok.signal(1, producer)
    producer.enqueue(failing_task(Boom("late")))
    bad.signal(1, producer)
    ok.wait(1, consumer)
    got = []
    consumer.enqueue(got.append, "after ok")
    gate.set()
    consumer.synchronize(timeout=10)
    assert got == ["after ok"]
    with pytest.raises(Boom):
        bad.wait(1, timeout=10)


# -- GPU-cell logic without a GPU: a stand-in cell --------------------------------------------
@pytest.fixture
def fake_gpu(monkeypatch, fake_driver):
    """AtomicEvent(0) gets a helpers.fakes.FakeGpuCell, whose stream operations take effect at
    once; fake_gpu(h) is a GpuStream of the simulated GPU."""
    return use_fake_gpu_cells(monkeypatch)


def test_a_failed_counter_keeps_gpu_waits_released(fake_gpu, cpu):
    """Regression: after a failure let GPU waits go (the word raised to its limit), a later
    host or GPU-stream signal stored a lower value over it, so a GPU wait that had not yet
    been evaluated would block again, for good."""
    s1, s2 = fake_gpu(0x10), fake_gpu(0x20)
    a = AtomicEvent(0)
    cell = a._cell
    a.wait(9, s1)  # a GPU wait for a value nobody gave yet
    producer = cpu()
    error = Boom("producer")
    producer.enqueue(failing_task(error))
    a.signal(5, producer)
    expect_error(error, lambda: a.wait(5, timeout=10))
    assert cell.word == cell.limit - 1 and ("release",) in cell.ops
    a.signal(7, s2)  # a GPU stream signal after the failure
    a.signal(8)  # a host signal after it
    a.signal(9, cpu())  # a CPU stream signal after it
    time.sleep(0.02)
    assert cell.word == cell.limit - 1  # still released
    assert ("signal", 7) not in cell.ops
    expect_error(error, lambda: a.wait(10, s2))  # GPU waits enqueued now raise at once
    a.close()
    assert cell.ops[-1][0] == "retire"


def test_gpu_waits_are_released_once_not_per_signal(fake_gpu, cpu):
    s = fake_gpu(0x10)
    a = AtomicEvent(0)
    a.wait(1, s)
    producer = cpu()
    producer.enqueue(failing_task(Boom()))
    a.signal(1, producer)
    a.signal(2, producer)
    with pytest.raises(Boom):
        a.wait(2, timeout=10)
    with pytest.raises(Boom):
        producer.synchronize(timeout=10)
    assert a._cell.ops.count(("release",)) == 1
    a.close()


# -- GPU ---------------------------------------------------------------------------------------
def after(stream) -> CudaEvent:
    """A CUDA event behind everything enqueued on ``stream`` so far."""
    return CudaEvent(0).record(stream)


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
def test_gpu_waits_on_a_failed_producer_are_let_go_and_host_waits_raise(gpu_backend, cpu, gates, gpu_streams):
    producer, gate = cpu(), gates()
    error = Boom("gpu consumers")
    producer.enqueue(gate.wait, 30)
    producer.enqueue(failing_task(error))
    a, ev, f = AtomicEvent(0), Event(value=2), Fence(0)
    assert a.backend == gpu_backend
    a.signal(1, producer)
    ev.signal(producer)
    f.update(producer)
    s_a, s_ev, s_f = gpu_streams(3)
    a.wait(1, s_a)
    ev.wait(s_ev)
    f.wait(s_f)
    behind = [after(s) for s in (s_a, s_ev, s_f)]
    # host threads waiting too, several policies
    calls = []
    for p in POLICIES:
        calls += [lambda p=p: a.wait(1, timeout=30, policy=p), lambda p=p: ev.wait(timeout=30, policy=p),
                  lambda p=p: f.wait(timeout=30, policy=p)]
    threads, outcomes = spawn_waiters(calls)
    time.sleep(0.02)
    assert not any(e.query() for e in behind)  # the GPU streams are waiting
    gate.set()
    join_all(threads)
    assert all(o is error for o in outcomes), outcomes
    for e in behind:
        e.synchronize(timeout=10)  # let go, not hung
    # GPU waits enqueued after the failure raise on the host at once
    s_late = gpu_streams()[0]
    expect_error(error, lambda: a.wait(1, s_late))
    expect_error(error, lambda: ev.wait(s_late))
    expect_error(error, lambda: f.wait(s_late))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
def test_gpu_streams_do_not_carry_errors(gpu_backend, cpu, gpu_streams):
    """The documented limit: work behind a let-go GPU wait runs, and what that GPU stream
    signals afterwards completes without the error. Consumers that must see the failure wait
    on the host or on a CpuStream."""
    producer = cpu()
    error = Boom("limit")
    a = AtomicEvent(0)
    (s,) = gpu_streams()
    a.wait(1, s)
    downstream = Event(value=3)  # a counter signalled by the GPU stream after its wait
    downstream.signal(s)
    producer.enqueue(failing_task(error))
    a.signal(1, producer)
    downstream.wait(timeout=10)  # completes: no error crossed the GPU stream
    assert downstream.error is None
    expect_error(error, lambda: a.wait(1, timeout=10))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
def test_a_failed_counter_keeps_gpu_waits_released_on_gpu(gpu_backend, cpu, gpu_streams, latch, stream):
    """Regression (real GPU): a signal after the failure no longer lowers the released value
    under a GPU wait that has not been evaluated yet (its stream held by a latch)."""
    a = AtomicEvent(0)
    waiting = stream
    (s2,) = gpu_streams()
    latch.block(waiting)
    a.wait(9, waiting)  # evaluated only once the latch opens
    behind = after(waiting)
    producer = cpu()
    error = Boom("released")
    producer.enqueue(failing_task(error))
    a.signal(5, producer)
    try:
        expect_error(error, lambda: a.wait(5, timeout=10))
        a.signal(7, s2)
        s2.synchronize(timeout=10)
        a.signal(8)
        latch.release()
        behind.synchronize(timeout=10)
    finally:
        latch.release()
        if not behind.query():  # the test failed: let the wait go, or the stream hangs for good
            a._cell.release_waiters()
        a.close()


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
def test_a_cpu_stream_waiting_on_a_gpu_signal_then_failing_passes_it_on(gpu_backend, cpu, gates, gpu_streams):
    """A CpuStream that fails after waiting for a GPU signal: what it signals next fails, and a
    GPU stream waiting on that is let go."""
    (s, s2) = gpu_streams(2)
    relay, gate = cpu(), gates()
    gpu_done, relayed = AtomicEvent(0), AtomicEvent(0)
    error = Boom("relay failed")
    relay.enqueue(gate.wait, 30)
    gpu_done.signal(1, s)
    gpu_done.wait(1, relay)
    relay.enqueue(failing_task(error))
    relayed.signal(1, relay)
    relayed.wait(1, s2)  # enqueued before the failure
    behind = after(s2)
    gate.set()
    behind.synchronize(timeout=10)
    expect_error(error, lambda: relayed.wait(1, timeout=10))
    gpu_done.wait(1, timeout=10)  # the GPU's own signal is fine


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS, indirect=True)
def test_a_gpu_wait_for_a_value_that_never_comes_does_not_hang_the_host(gpu_backend, gpu_streams):
    """A producer that fails before it ever signals cannot fail the counter: the GPU wait
    just waits. Host waits on it, or on work behind it, raise TimeoutError when given a
    timeout, and closing the counter lets the GPU wait go."""
    (s,) = gpu_streams()
    a = AtomicEvent(0)
    a.wait(5, s)
    behind = after(s)
    try:
        for call in (lambda: behind.synchronize(timeout=0.2), lambda: s.synchronize(timeout=0.2),
                     lambda: a.wait(5, timeout=0.2)):
            with pytest.raises(TimeoutError):
                call()
        assert not behind.query()
    finally:
        a.close()  # releases the GPU wait (with a warning)
    behind.synchronize(timeout=10)
    with pytest.raises(cudaevents.ClosedError, match="will never reach 5"):
        a.wait(5, timeout=1)
