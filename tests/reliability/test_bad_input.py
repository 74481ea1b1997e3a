"""Every misuse gets a specific exception whose message says how to fix it.

Each case names the exception class and a fragment of the fix in the message. Most checks
happen before any driver call, so they run without a GPU; the rest carry the ``gpu`` or
``multigpu`` marker. Closable objects (CudaEvent, GpuStream, AtomicEvent, Event, Fence,
Worker, CpuStream) close twice without complaint and refuse use after close with
:class:`ClosedError`; EventPool and Timer have no close (``EventPool.clear()`` leaves the pool
usable; a Timer hands its events back when dropped).
"""

from __future__ import annotations

import math
import threading

import pytest
from helpers.fakes import (
    FakeGpuCell,
    NotAStream,
    StreamProtocol,
    UnreadableProtocol,
    use_fake_gpu_cells,
)
from helpers.subproc import run_script
from helpers.threads import join_all, spawn_waiters

import cudaevents
from cudaevents import (
    AtomicEvent,
    ClosedError,
    CpuStream,
    CudaEvent,
    DeviceMismatchError,
    Event,
    Fence,
    GpuStream,
    NotReadyError,
    NotRecordedError,
    Timer,
    WaitPolicy,
    Worker,
    as_stream,
)

# counters on the host backend unless a test says otherwise (the same on CI and GPU)
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("host_backend")]


def raises(exc, fragment, call):
    """``call()`` raises exactly ``exc`` (not a subclass of it, not a parent), with
    ``fragment`` in the message."""
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value), str(info.value)
    return info.value


# -- things that are not streams ----------------------------------------------------------------
NOT_STREAMS = [
    ("str", "stream 0", TypeError, "expected a GpuStream, an object with __cuda_stream__"),
    ("float", 3.0, TypeError, "or a raw handle with device="),
    ("object", NotAStream(), TypeError, "expected a GpuStream"),
    ("list", [0], TypeError, "expected a GpuStream"),
    ("True", True, TypeError, "pass a stream object or a raw handle with device="),
    ("False", False, TypeError, "pass a stream object or a raw handle with device="),
    ("int-without-device", 12345, TypeError, "needs device= with a raw stream handle"),
    ("negative-int", -1, ValueError, "non-negative pointer value"),
    ("protocol-short-tuple", StreamProtocol((0,)), TypeError, "the protocol requires a tuple (version, handle) of two ints"),
    ("protocol-list", StreamProtocol([0, 1]), TypeError, "the protocol requires a tuple (version, handle)"),
    ("protocol-str-handle", StreamProtocol((0, "0x10")), TypeError, "the protocol requires a tuple (version, handle)"),
    ("protocol-version", StreamProtocol((1, 16)), ValueError, "upgrade cudaevents or the library that made the stream"),
]

# A broken __cuda_stream__ that raises, or gives a bool or negative handle, is not caught
# before the driver yet (src/cudaevents/_stream.py, _protocol_handle; see the report).
NOT_STREAMS_PENDING = [
    ("protocol-raises", StreamProtocol(RuntimeError("boom")), TypeError, "__cuda_stream__"),
    ("protocol-unreadable", UnreadableProtocol(), TypeError, "__cuda_stream__"),
    ("protocol-bool-handle", StreamProtocol((0, True)), TypeError, "two ints"),
    ("protocol-negative-handle", StreamProtocol((0, -5)), ValueError, "non-negative"),
]


def _commit(worker, s):
    worker.add_task(lambda: None)
    worker.commit(s)


def _region(s):
    Timer(nvtx=False).region("r", s).__enter__()


ENTRY_POINTS = {
    "as_stream": lambda s: as_stream(s),
    "CudaEvent.record": lambda s: CudaEvent().record(s),
    "AtomicEvent.signal": lambda s: AtomicEvent().signal(1, s),
    "AtomicEvent.wait": lambda s: AtomicEvent().wait(1, s),
    "Event.signal": lambda s: Event().signal(s),
    "Fence.update": lambda s: Fence().update(s),
    "Worker.commit": lambda s: _commit(Worker(), s),
    "Timer.region": _region,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("label,obj,exc,fragment", NOT_STREAMS, ids=[c[0] for c in NOT_STREAMS])
def test_non_streams_are_refused_before_the_driver(entry, label, obj, exc, fragment):
    raises(exc, fragment, lambda: ENTRY_POINTS[entry](obj))


@pytest.mark.parametrize("label,obj,exc,fragment", NOT_STREAMS_PENDING, ids=[c[0] for c in NOT_STREAMS_PENDING])
def test_broken_stream_protocols_are_refused_before_the_driver(label, obj, exc, fragment):
    # in a child process: on a GPU machine the handle reaches the driver, which may crash on it
    out = run_script("broken_stream_protocol.py", label, timeout=60)
    assert out.returncode == 0, out
    assert out.stdout.startswith(exc.__name__ + ": ") and fragment in out.stdout, out.stdout


def test_refused_streams_change_no_state(cpu):
    """A refused stream leaves the object as it was: a Fence keeps its count, an Event stays
    unsignalled (regression: Event counted the failed signal, so a later wait waited for a
    value nobody would give instead of raising NotRecordedError)."""
    f = Fence()
    raises(TypeError, "expected a GpuStream", lambda: f.update("s"))
    assert f.count == 0
    ev = Event()
    raises(TypeError, "expected a GpuStream", lambda: ev.signal("s"))
    closed = cpu()
    closed.close()
    raises(ClosedError, "create a new CpuStream", lambda: ev.signal(closed))
    raises(NotRecordedError, "signal() it first", lambda: ev.wait(timeout=1))
    ev.signal()
    ev.wait(timeout=1)


def test_a_signal_on_a_closed_cpu_stream_leaves_the_counter_as_it_was(cpu):
    """Regression: AtomicEvent.signal(v, closed_stream) raised ClosedError but had already
    promised v, so every later host signal was refused ("a stream signal ... has not happened
    yet") and waits for v timed out."""
    a = AtomicEvent()
    closed = cpu()
    closed.close()
    raises(ClosedError, "create a new CpuStream", lambda: a.signal(4, closed))
    a.signal(2)  # the host can still signal, below the refused 4 too
    a.wait(2, timeout=1)
    f = Fence()
    raises(ClosedError, "create a new CpuStream", lambda: f.update(closed))
    assert f.count == 0 and f.update() == 1
    f.wait(timeout=1)


# -- values ---------------------------------------------------------------------------------
BAD_VALUES = [
    ("negative", -1, ValueError, "pass a value in [0, 2**63)"),
    ("2**63", 1 << 63, ValueError, "keep values in [0, 2**63)"),
    ("2**64", 1 << 64, ValueError, "keep values in [0, 2**63)"),
    ("float", 1.0, TypeError, "pass an int in [0, 2**63)"),
    ("str", "1", TypeError, "pass an int"),
    ("bool", True, TypeError, "pass an int"),
    ("None", None, TypeError, "pass an int"),
]


@pytest.mark.parametrize("op", ["signal", "wait", "is_signaled", "cpu-signal", "cpu-wait"])
@pytest.mark.parametrize("label,value,exc,fragment", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_counter_values_out_of_range(cpu, op, label, value, exc, fragment):
    a = AtomicEvent()
    call = {
        "signal": lambda: a.signal(value),
        "wait": lambda: a.wait(value, timeout=0),
        "is_signaled": lambda: a.is_signaled(value),
        "cpu-signal": lambda: a.signal(value, cpu()),
        "cpu-wait": lambda: a.wait(value, cpu()),
    }[op]
    raises(exc, fragment, call)
    assert a.value == 0


@pytest.mark.parametrize("where", ["host", "cpu-stream"])
def test_decreasing_signals(cpu, where):
    a = AtomicEvent()
    a.signal(10)
    s = None if where == "host" else cpu()
    err = raises(ValueError, "signal a value >= 10", lambda: a.signal(9, s))
    assert "never decrease" in str(err)
    a.signal(10, s)  # equal is fine
    assert a.value == 10


@pytest.mark.parametrize("value,exc,fragment", [
    (0, ValueError, "pass a value in that range"),
    (-3, ValueError, "pass a value in that range"),
    (1 << 63, ValueError, "pass a value in that range"),
    (1.5, TypeError, "an Event's value is an int"),
    (True, TypeError, "an Event's value is an int"),
])
def test_event_values(value, exc, fragment):
    raises(exc, fragment, lambda: Event(value=value))
    ev = Event(value=2)
    raises(exc, fragment, lambda: setattr(ev, "value", value))
    assert ev.value == 2


def test_event_value_never_decreases():
    ev = Event(value=3)
    raises(ValueError, "set a value >= 3, or use a new Event", lambda: setattr(ev, "value", 2))


@pytest.mark.parametrize("timeout,exc,fragment", [
    (-1, ValueError, "timeout must be >= 0 seconds"),
    (math.nan, ValueError, "timeout must be >= 0 seconds"),
    ("1", TypeError, "timeout must be None or a number of seconds"),
    (True, TypeError, "timeout must be None or a number of seconds"),
])
def test_bad_timeouts_everywhere(cpu, timeout, exc, fragment):
    s = cpu()
    a, ev, f, w = AtomicEvent(), Event(), Fence(), Worker()
    ev.signal()
    for call in (lambda: a.wait(1, timeout=timeout), lambda: ev.wait(timeout=timeout),
                 lambda: f.wait(timeout=timeout) if f.update() else None,
                 lambda: s.synchronize(timeout=timeout), lambda: s.close(timeout=timeout),
                 lambda: w.synchronize(timeout=timeout), lambda: w.close(timeout=timeout),
                 lambda: Timer(nvtx=False).synchronize(timeout=timeout),
                 lambda: Timer(nvtx=False).results(timeout=timeout),
                 lambda: CudaEvent().synchronize(timeout=timeout)):
        raises(exc, fragment, call)
    assert not s.closed and not w.closed  # a refused timeout closes nothing
    w.close(timeout=10)


@pytest.mark.parametrize("policy,exc,fragment", [
    ("nap", ValueError, "use one of ['block', 'sleep', 'spin', 'yield'] or a WaitPolicy"),
    (3, ValueError, "or a WaitPolicy"),
])
def test_bad_wait_policies(policy, exc, fragment):
    """Refused also where the wait has nothing to wait for (regression: AtomicEvent.wait
    accepted any policy for a value already reached)."""
    raises(exc, fragment, lambda: AtomicEvent(policy=policy))
    raises(exc, fragment, lambda: AtomicEvent().wait(0, timeout=1, policy=policy))  # reached
    raises(exc, fragment, lambda: AtomicEvent().wait(1, timeout=1, policy=policy))
    ev = Event()
    ev.signal()
    raises(exc, fragment, lambda: ev.wait(timeout=1, policy=policy))  # reached
    f = Fence()
    f.update()
    raises(exc, fragment, lambda: f.wait(timeout=1, policy=policy))  # reached
    raises(exc, fragment, lambda: Fence(policy=policy))


@pytest.mark.parametrize("kwargs,fragment", [
    ({"spin": -1}, "must be a number of seconds >= 0"),
    ({"yield_for": "1"}, "must be a number of seconds >= 0"),
    ({"max_sleep": 0}, "max_sleep must be > 0"),
])
def test_bad_wait_policy_fields(kwargs, fragment):
    raises(ValueError, fragment, lambda: WaitPolicy(**kwargs))


def test_timeout_and_policy_only_for_host_waits(cpu):
    a = AtomicEvent()
    raises(TypeError, "apply to host waits only (stream=None)", lambda: a.wait(1, cpu(), timeout=1))
    raises(TypeError, "apply to host waits only (stream=None)", lambda: a.wait(1, cpu(), policy="spin"))


@pytest.mark.parametrize("device", ["0", 1.0, True])
def test_bad_device_arguments(device):
    for make in (lambda: CudaEvent(device), lambda: AtomicEvent(device), lambda: Fence(device)):
        raises(TypeError, "Device() takes an integer ordinal", make)


def test_synchronize_from_an_own_task(cpu):
    s = cpu()
    s.enqueue(lambda: s.synchronize(timeout=1))
    raises(RuntimeError, "synchronize from another thread, or enqueue the follow-up work as a later task",
           lambda: s.synchronize(timeout=10))
    w = Worker()
    w.add_task(lambda: w.synchronize(timeout=1))
    w.commit(cpu())
    w.close(timeout=10)
    (err,) = w.errors
    assert type(err) is RuntimeError and "wait from another thread, or add the follow-up work as a later task" in str(err)


def test_bad_callables(cpu):
    raises(TypeError, "needs a callable", lambda: cpu().enqueue(42))
    raises(TypeError, "needs a callable", lambda: Worker().add_task("print"))


# -- waiting before recording, timing misuse ------------------------------------------------
@pytest.mark.parametrize("op", ["wait", "query", "synchronize", "synchronize-timeout"])
def test_cuda_event_used_before_record(op):
    ev = CudaEvent(timing=True)
    call = {"wait": ev.wait, "query": ev.query, "synchronize": ev.synchronize,
            "synchronize-timeout": lambda: ev.synchronize(timeout=1)}[op]
    raises(NotRecordedError, "call record(stream) first", call)


@pytest.mark.parametrize("where", ["host", "cpu-stream"])
def test_event_waited_before_signal(cpu, where):
    ev = Event()
    s = None if where == "host" else cpu()
    raises(NotRecordedError, "signal() it first", lambda: ev.wait(s) if s else ev.wait(timeout=1))


def test_elapsed_time_misuse_before_the_driver():
    timed, untimed = CudaEvent(timing=True), CudaEvent()
    raises(ValueError, "create both events with timing=True", lambda: timed.elapsed_time(untimed))
    raises(ValueError, "create both events with timing=True", lambda: untimed.elapsed_time(timed))
    raises(NotRecordedError, "record() both events before elapsed_time()", lambda: timed.elapsed_time(CudaEvent(timing=True)))
    raises(TypeError, "needs the end CudaEvent", lambda: timed.elapsed_time(1.0))
    raises(TypeError, "needs the end CudaEvent", lambda: timed.elapsed_time(Event()))
    closed = CudaEvent(timing=True)
    closed.close()
    raises(ClosedError, "time with events that are still open", lambda: timed.elapsed_time(closed))
    raises(ClosedError, "time with events that are still open", lambda: closed.elapsed_time(timed))


def test_interprocess_with_timing():
    raises(ValueError, "pass timing=False", lambda: CudaEvent(timing=True, interprocess=True))
    raises(ValueError, "pass timing=False", lambda: CudaEvent(timing=True, interprocess=True, blocking_sync=True))


# -- double close and use after close -----------------------------------------------------------
def _closed(make):
    obj = make()
    obj.close()
    obj.close()  # idempotent
    assert obj.closed
    return obj


def _enter(obj):
    with obj:
        pass


USE_AFTER_CLOSE = {
    "CudaEvent": (lambda: CudaEvent(timing=True), "Create a new CudaEvent", [
        lambda e: e.record(None), lambda e: e.record("s"), lambda e: e.wait(), lambda e: e.query(),
        lambda e: e.synchronize(), lambda e: e.synchronize(timeout=1), _enter,
    ]),
    "AtomicEvent": (AtomicEvent, "AtomicEvent was closed", [
        lambda a: a.signal(1), lambda a: a.signal(1, CpuStream()), lambda a: a.wait(1, timeout=1),
        lambda a: a.wait(1, CpuStream()), _enter,
    ]),
    "Event": (Event, "create a new Event", [
        lambda e: e.signal(), lambda e: e.signal(CpuStream()), lambda e: e.wait(timeout=1),
        lambda e: e.wait(CpuStream()), lambda e: e.is_signaled(), _enter,
    ]),
    "Fence": (Fence, "create a new Fence", [
        lambda f: f.update(), lambda f: f.update(CpuStream()), lambda f: f.wait(timeout=1),
        lambda f: f.wait(CpuStream()), _enter,
    ]),
    "CpuStream": (CpuStream, "create a new CpuStream", [lambda s: s.enqueue(print), _enter]),
    "Worker": (Worker, "create a new Worker", [
        lambda w: w.add_task(print), lambda w: _commit(w, CpuStream()), _enter,
    ]),
}
USE_AFTER_CLOSE_CASES = [(kind, i) for kind, (_, _, ops) in USE_AFTER_CLOSE.items() for i in range(len(ops))]


@pytest.mark.parametrize("kind,op", USE_AFTER_CLOSE_CASES, ids=[f"{k}-{i}" for k, i in USE_AFTER_CLOSE_CASES])
def test_use_after_close(kind, op):
    make, fragment, ops = USE_AFTER_CLOSE[kind]
    obj = _closed(make)
    raises(ClosedError, fragment, lambda: ops[op](obj))


def test_closed_objects_still_answer_harmless_questions():
    """Asking a closed object about itself, or waiting for what it already reached, is fine."""
    a = AtomicEvent()
    a.signal(3)
    a.close()
    assert a.value == 3 and a.is_signaled(3) and not a.is_signaled(4)
    a.wait(3, timeout=0)
    raises(ClosedError, "will never reach 4", lambda: a.wait(4, timeout=1))
    s = _closed(CpuStream)
    s.synchronize(timeout=1)
    w = _closed(Worker)
    w.synchronize(timeout=1)
    assert w.errors == []
    assert "closed" in repr(a) and "closed" in repr(s) and "closed" in repr(w)


def test_closing_wakes_waiters_with_closed_error():
    a = AtomicEvent()
    threads, outcomes = spawn_waiters([lambda: a.wait(5, timeout=30)] * 4)
    a.close()
    join_all(threads, timeout=30)
    assert all(isinstance(e, ClosedError) and "will never reach 5" in str(e) for e in outcomes), outcomes


def test_a_closed_counter_answers_from_its_value_at_close(monkeypatch, fake_driver):
    """Regression: close() let pending GPU waits go by raising the cell to its limit, and
    gives the cell's slot back to be reused; a closed counter kept reading the cell, so a
    host wait for a value never signalled returned as if it had come (and a waiter blocked
    in it woke up "successfully"), and value/is_signaled read another counter's slot."""
    fake_stream = use_fake_gpu_cells(monkeypatch, lambda: FakeGpuCell(recycled_value=777))
    s = fake_stream(0x10)
    a = AtomicEvent(0)
    a.signal(2)
    a.wait(50, s)  # a GPU wait for a value nobody gives: close() must let it go
    threads, outcome = spawn_waiters([lambda: a.wait(50, timeout=30)])
    a.close()
    join_all(threads, timeout=30)
    assert a._cell.word == 777  # released and recycled behind the closed counter
    assert isinstance(outcome[0], ClosedError) and "closed at 2 and will never reach 50" in str(outcome[0])
    raises(ClosedError, "will never reach 50", lambda: a.wait(50, timeout=1))
    raises(ClosedError, "will never reach 50", lambda: a.wait(50, CpuStream()))
    assert a.value == 2 and not a.is_signaled(3) and a.is_signaled(2)
    a.wait(2, timeout=0)
    a.wait(2, s)  # reached before close: nothing to enqueue, fine


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_stream_use_after_close():
    s = GpuStream(0)
    s.close()
    s.close()
    assert s.closed
    w = Worker()
    try:
        for call in (s.query, s.synchronize, lambda: s.synchronize(timeout=1), lambda: s.handle,
                     lambda: _enter(s), lambda: as_stream(s), lambda: CudaEvent(0).record(s),
                     lambda: CudaEvent().record(s), lambda: CudaEvent(0).record(None).wait(s),
                     lambda: _commit(w, s), lambda: Timer(nvtx=False).region("r", s).__enter__()):
            raises(ClosedError, "create a new GpuStream", call)
    finally:
        w.close(timeout=10)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["mem64", "mem32", "hostfn"])
def test_gpu_counter_use_after_close(monkeypatch, backend, stream):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", backend)
    a = AtomicEvent(0)
    a.signal(1, stream)
    a.wait(1, timeout=10)
    a.close()
    a.close()
    raises(ClosedError, "AtomicEvent was closed", lambda: a.signal(2, stream))
    raises(ClosedError, "will never reach 2", lambda: a.wait(2, stream))
    raises(ClosedError, "will never reach 2", lambda: a.wait(2, timeout=1))
    a.wait(1, stream)  # reached: nothing to wait for
    assert a.value == 1
    b = AtomicEvent(0)  # may take a's slot: a must not see b's value
    b.signal(5)
    assert a.value == 1 and not a.is_signaled(2)
    b.close()


@pytest.mark.gpu
def test_gpu_closed_counter_with_pending_gpu_wait_does_not_report_it_reached(monkeypatch, stream):
    """Regression on a real GPU: close() with a GPU wait pending raised the slot to its limit;
    a host wait after (or during) close then returned as if the value had come."""
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "mem64")
    a = AtomicEvent(0)
    a.wait(7, stream)
    a.close()
    stream.synchronize(timeout=10)  # the GPU wait was let go
    raises(ClosedError, "closed at 0 and will never reach 7", lambda: a.wait(7, timeout=1))
    assert a.value == 0


@pytest.mark.gpu
def test_mem32_values(monkeypatch, stream):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "mem32")
    a = AtomicEvent(0)
    for call in (lambda: a.signal(1 << 31), lambda: a.signal(1 << 31, stream), lambda: a.wait(1 << 31, stream),
                 lambda: a.wait(1 << 31, timeout=0), lambda: a.is_signaled(1 << 32)):
        raises(ValueError, "use the mem64 backend or keep values small", call)
    a.close()


@pytest.mark.gpu
def test_host_backend_with_gpu_streams(stream):
    a = AtomicEvent(0)  # host backend (the autouse fixture)
    for call in (lambda: a.signal(1, stream), lambda: a.wait(1, stream)):
        raises(ValueError, "use a CpuStream or the host", call)


@pytest.mark.gpu
def test_elapsed_time_before_completion(stream, latch, pool):
    start = CudaEvent(0, timing=True, pool=pool).record(stream)
    latch.block(stream)
    end = CudaEvent(0, timing=True, pool=pool).record(stream)
    raises(NotReadyError, "call end.synchronize() before elapsed_time()", lambda: start.elapsed_time(end))
    latch.release()
    end.synchronize(timeout=10)
    assert start.elapsed_time(end) >= 0


@pytest.mark.gpu
def test_elapsed_time_with_a_recorded_event_without_timing(stream, pool):
    start = CudaEvent(0, timing=True, pool=pool).record(stream)
    end = CudaEvent(0, pool=pool).record(stream)
    raises(ValueError, "create both events with timing=True", lambda: start.elapsed_time(end))


@pytest.mark.gpu
def test_bad_device_ordinals():
    n = cudaevents.device_count()
    for bad in (-1, n, n + 7):
        raises(ValueError, f"valid ordinals are 0..{n - 1}", lambda: CudaEvent(bad))
        raises(ValueError, f"valid ordinals are 0..{n - 1}", lambda: GpuStream(bad))
        raises(ValueError, f"valid ordinals are 0..{n - 1}", lambda: AtomicEvent(bad))


@pytest.mark.gpu
def test_gpu_stream_priority_out_of_range():
    raises(ValueError, "lower numbers are higher priority", lambda: GpuStream(0, priority=1000))
    raises(TypeError, "priority must be an int", lambda: GpuStream(0, priority=0.5))


@pytest.mark.gpu
def test_gpu_wait_from_the_signalling_cpu_stream(monkeypatch, stream, cpu):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "mem64")
    a = AtomicEvent(0)
    s = cpu()
    gate = threading.Event()
    s.enqueue(gate.wait, 10)
    s.enqueue(a.wait, 1, stream)
    a.signal(1, s)
    gate.set()
    raises(RuntimeError, "enqueue the GPU wait from another thread, or signal before waiting",
           lambda: s.synchronize(timeout=10))


@pytest.mark.multigpu
def test_wrong_device_streams():
    s1 = GpuStream(1)
    try:
        fix = "device=1"
        raises(DeviceMismatchError, fix, lambda: CudaEvent(0).record(s1))
        raises(DeviceMismatchError, fix, lambda: CudaEvent(0, timing=True).record(s1))
        host_counter = AtomicEvent(0)  # host backend (autouse fixture): refuses GPU streams at all
        raises(ValueError, "use a CpuStream or the host", lambda: host_counter.signal(1, s1))
        bound = CudaEvent().record(s1)  # bound to device 1 by its first record
        raises(DeviceMismatchError, "device=None to bind it at its first record",
               lambda: bound.record(GpuStream(0)))
        # as_stream with a device that disagrees with the stream's own: no fix in the message
        # yet (src/cudaevents/_stream.py; see the report), so only the class and the facts
        raises(DeviceMismatchError, "belongs to device 1", lambda: as_stream(s1, device=0))
        raises(DeviceMismatchError, "belongs to device 1", lambda: as_stream(s1.handle, device=0))
    finally:
        s1.synchronize(timeout=10)
        s1.close()


@pytest.mark.multigpu
@pytest.mark.parametrize("backend", ["mem64", "mem32", "hostfn"])
def test_wrong_device_counters(monkeypatch, backend):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", backend)
    s1 = GpuStream(1)
    try:
        a, f = AtomicEvent(0), Fence(0)
        for call in (lambda: a.signal(1, s1), lambda: a.wait(1, s1), lambda: f.update(s1), lambda: f.wait(s1)
                     if f.update() else None):
            raises(DeviceMismatchError, "create it with device=1", call)
        ev = Event(0, value=2)
        raises(DeviceMismatchError, "create it with device=1", lambda: ev.signal(s1))
        raises(NotRecordedError, "signal() it first", lambda: ev.wait(timeout=1))  # the refused signal did not count
    finally:
        s1.close()


@pytest.mark.multigpu
def test_elapsed_time_across_devices(pool):
    s0, s1 = GpuStream(0), GpuStream(1)
    try:
        a = CudaEvent(0, timing=True, pool=pool).record(s0)
        b = CudaEvent(1, timing=True, pool=pool).record(s1)
        b.synchronize(timeout=10)
        a.synchronize(timeout=10)
        raises(DeviceMismatchError, "record both on streams of one device", lambda: a.elapsed_time(b))
    finally:
        for s in (s0, s1):
            s.synchronize(timeout=10)
            s.close()
