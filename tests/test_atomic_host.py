"""AtomicEvent, Event and Fence on the host path (no GPU): values, waits, policies,
ordering across CPU streams, error poisoning and bad input."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.subproc import NO_GPU, run_code, run_script
from helpers.threads import join_all, spawn_waiters

import cudaevents
from cudaevents import (
    AtomicEvent,
    ClosedError,
    CpuStream,
    Event,
    Fence,
    NotRecordedError,
    WaitPolicy,
)

needs_host_backend = pytest.mark.skipif(cudaevents.is_available(), reason="the host backend is the no-GPU path")

POLICIES = ["spin", "yield", "sleep", "block", WaitPolicy(spin=0, yield_for=0, max_sleep=2e-4)]


@pytest.fixture
def streams(cpu_streams):
    return cpu_streams(3, name="test")


def test_host_backend_without_a_gpu():
    a = AtomicEvent()
    if not cudaevents.is_available():
        assert a.backend == "host" and a.device is None
        assert cudaevents.atomic_backend() == "host"
    assert a.value == 0 and a.is_signaled(0) and not a.is_signaled(1)
    a.signal(5)
    assert a.value == 5 and a.is_signaled(5) and not a.is_signaled(6)
    a.signal(5)  # equal is fine
    a.wait(3, timeout=1)
    a.close()


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_wait_times_out_promptly_with_every_policy(policy):
    a = AtomicEvent(policy=policy)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"AtomicEvent.wait\(1\) did not complete within 0.1 s"):
        a.wait(1, timeout=0.1)
    assert time.monotonic() - t0 < 0.1 + 0.05


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_host_signal_wakes_a_waiting_thread(policy):
    a = AtomicEvent()
    woke = []

    def waiter():
        a.wait(7, timeout=10, policy=policy)
        woke.append(time.monotonic())

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.02)
    assert not woke
    for v in range(1, 8):
        a.signal(v)
    sent = time.monotonic()
    t.join(timeout=10)
    assert woke and woke[0] - sent < 0.05


@pytest.mark.parametrize(
    "value,exc,msg",
    [(-1, ValueError, ">= 0"), (1 << 63, ValueError, "below 2\\*\\*63"), (True, TypeError, "ints"),
     (1.0, TypeError, "ints"), ("3", TypeError, "ints")],
)
def test_bad_values(value, exc, msg):
    a = AtomicEvent()
    with pytest.raises(exc, match=msg):
        a.signal(value)
    with pytest.raises(exc, match=msg):
        a.wait(value, timeout=0)
    with pytest.raises(exc, match=msg):
        a.is_signaled(value)


def test_values_never_decrease():
    a = AtomicEvent()
    a.signal(10)
    with pytest.raises(ValueError, match=r"signal\(9\) is below 10"):
        a.signal(9)
    s = CpuStream()
    with pytest.raises(ValueError, match="never decrease"):
        a.signal(3, s)
    s.close(timeout=10)
    assert a.value == 10


def test_bad_policies_and_timeouts():
    with pytest.raises(ValueError, match="unknown wait policy"):
        AtomicEvent(policy="nap")
    with pytest.raises(ValueError, match="spin must be"):
        WaitPolicy(spin=-1)
    with pytest.raises(ValueError, match="max_sleep must be > 0"):
        WaitPolicy(max_sleep=0)
    a = AtomicEvent()
    with pytest.raises(ValueError, match="timeout"):
        a.wait(1, timeout=-1)
    with pytest.raises(TypeError, match="host waits only"):
        a.wait(1, CpuStream(), timeout=1)


def test_closed_event():
    a = AtomicEvent()
    a.signal(2)
    threads, outcomes = spawn_waiters([lambda: a.wait(5, timeout=10)])
    time.sleep(0.02)
    a.close()
    join_all(threads, timeout=10)
    assert isinstance(outcomes[0], ClosedError) and "will never reach 5" in str(outcomes[0])
    a.close()
    a.wait(2, timeout=0)  # already reached: fine
    with pytest.raises(ClosedError, match="never reach 3"):
        a.wait(3, timeout=1)
    with pytest.raises(ClosedError, match="create a new one"):
        a.signal(3)
    with AtomicEvent() as b:
        b.signal(1)
    assert b.closed


def test_concurrent_host_signallers_never_move_backwards():
    a = AtomicEvent()
    seen = []
    stop = threading.Event()
    counter = iter(range(1, 10**9))
    lock = threading.Lock()
    accepted = []

    def reader():
        while not stop.is_set():
            seen.append(a.value)

    def signaller():
        for _ in range(2000):
            with lock:
                v = next(counter)
            try:
                a.signal(v)
                accepted.append(v)
            except ValueError:
                pass  # a higher value got there first

    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=signaller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    r.join(timeout=10)
    assert all(x <= y for x, y in zip(seen, seen[1:]))
    assert a.value == max(accepted)


def test_cpu_streams_signal_and_wait(streams):
    producer, consumer, _ = streams
    a = AtomicEvent()
    data = []
    out = []
    for i in range(1, 51):
        producer.enqueue(data.append, i)
        a.signal(i, producer)
        a.wait(i, consumer)
        consumer.enqueue(lambda i=i: out.append((i, len(data) >= i)))
    consumer.synchronize(timeout=10)
    assert out == [(i, True) for i in range(1, 51)]
    assert a.value == 50


def test_signals_complete_in_call_order_across_streams(streams):
    a, b, _ = streams
    gate = threading.Event()
    ev = AtomicEvent()
    a.enqueue(gate.wait, 10)
    ev.signal(5, a)
    ev.signal(7, b)  # must not land before the 5
    time.sleep(0.05)
    assert ev.value == 0
    with pytest.raises(ValueError, match="has not happened yet"):
        ev.signal(9)  # a host store now would be overtaken
    seen = []
    watcher = threading.Thread(target=lambda: [seen.append(ev.value) for _ in range(20000)])
    watcher.start()
    gate.set()
    ev.wait(7, timeout=10)
    watcher.join(timeout=10)
    assert all(x <= y for x, y in zip(seen, seen[1:]))
    assert ev.value == 7


def test_a_failed_cpu_task_poisons_what_its_stream_signals_afterwards(streams):
    producer, relay, _ = streams
    first, second = AtomicEvent(), AtomicEvent()
    first.signal(1, producer)  # before the failure: a clean signal
    producer.enqueue(lambda: (_ for _ in ()).throw(KeyError("bad input")))
    first.signal(2, producer)
    first.wait(2, relay)  # the relay stream waits, fails with the same error...
    second.signal(1, relay)  # ...and poisons what it signals next
    for ev, v in ((first, 2), (second, 1)):
        with pytest.raises(KeyError, match="bad input"):
            ev.wait(v, timeout=10)
    with pytest.raises(KeyError):
        first.value
    with pytest.raises(KeyError):
        first.is_signaled(1)
    with pytest.raises(KeyError, match="bad input"):
        relay.synchronize(timeout=10)
    assert isinstance(second.error, KeyError)


def test_waiters_blocked_before_the_failure_wake_with_it(streams):
    producer = streams[0]
    ev = AtomicEvent()
    threads, outcomes = spawn_waiters([lambda: ev.wait(1, timeout=10)])
    time.sleep(0.02)
    producer.enqueue(lambda: 1 / 0)
    ev.signal(1, producer)
    join_all(threads, timeout=10)
    assert isinstance(outcomes[0], ZeroDivisionError)


def test_event_host_path(streams):
    ev = Event()
    assert ev.backing is None and not ev.is_signaled()
    with pytest.raises(NotRecordedError, match="signal"):
        ev.wait(timeout=1)
    ev.signal(streams[0])
    ev.wait(timeout=10)
    assert ev.is_signaled() and ev.backing == "atomic"
    ev.value = 2
    assert not ev.is_signaled()
    ev.signal()
    ev.wait(streams[1])
    streams[1].synchronize(timeout=10)
    with pytest.raises(ValueError, match="never decreases"):
        ev.value = 1
    with pytest.raises(ValueError, match=r"\[1, 2\*\*63\)"):
        Event(value=0)
    with pytest.raises(TypeError, match="int"):
        Event(value="1")
    ev.close()
    ev.close()
    with pytest.raises(ClosedError, match="create a new Event"):
        ev.signal()


def test_event_wait_times_out():
    ev = Event(value=3)
    ev.signal(CpuStream())  # runs soon; value 3
    ev.wait(timeout=10)
    ev.value = 4
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ev.wait(timeout=0.05)
    assert time.monotonic() - t0 < 0.05 + 0.05


def test_event_carries_errors(streams):
    producer, consumer, _ = streams
    ev = Event()
    producer.enqueue(lambda: (_ for _ in ()).throw(RuntimeError("producer died")))
    ev.signal(producer)
    ev.wait(consumer)
    with pytest.raises(RuntimeError, match="producer died"):
        ev.wait(timeout=10)
    with pytest.raises(RuntimeError, match="producer died"):
        consumer.synchronize(timeout=10)
    assert isinstance(ev.error, RuntimeError)


def test_fence_across_cpu_streams(streams):
    f = Fence()
    log = []
    assert f.count == 0
    f.wait(timeout=0)  # nothing to wait for
    for i, s in enumerate(streams):
        s.enqueue(time.sleep, 0.01 * (3 - i))
        s.enqueue(log.append, i)
        assert f.update(s) == i + 1
    f.wait(timeout=10)
    assert sorted(log) == [0, 1, 2] and f.completed == 3
    waiter = CpuStream()
    f.update()  # the host
    f.wait(waiter)
    waiter.enqueue(log.append, "after")
    waiter.synchronize(timeout=10)
    assert log[-1] == "after"
    f.update(streams[0])
    streams[0].enqueue(lambda: None)
    with Fence() as g:
        g.update(streams[1])
        g.wait(timeout=10)
    waiter.close(timeout=10)


def test_fence_wait_times_out(streams):
    f = Fence()
    gate = threading.Event()
    streams[0].enqueue(gate.wait, 10)
    f.update(streams[0])
    with pytest.raises(TimeoutError):
        f.wait(timeout=0.05)
    gate.set()
    f.wait(timeout=10)


def test_backend_variable_is_checked():
    r = run_code("import cudaevents as c; print(c.AtomicEvent().backend)", env={**NO_GPU, "CUDAEVENTS_ATOMIC_BACKEND": "host"})
    assert r.returncode == 0 and r.stdout.strip() == "host"
    r = run_code("import cudaevents as c; c.AtomicEvent()", env={**NO_GPU, "CUDAEVENTS_ATOMIC_BACKEND": "fast"})
    assert r.returncode == 1 and "CUDAEVENTS_ATOMIC_BACKEND='fast' is not one of auto" in r.stderr
    r = run_code("import cudaevents as c; c.AtomicEvent()", env={**NO_GPU, "CUDAEVENTS_ATOMIC_BACKEND": "mem64"})
    assert r.returncode == 1 and "needs a GPU" in r.stderr


def test_exit_with_pending_counter_waits_is_silent():
    r = run_script("pending_counter_waits_exit.py", timeout=60, env=NO_GPU)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
