"""CpuStream: ordering, errors, close and timeouts (no GPU needed)."""

from __future__ import annotations

import gc
import logging
import threading
import time

import pytest

from cudaevents import ClosedError, CpuStream


@pytest.fixture
def stream():
    s = CpuStream()
    yield s
    s.close(timeout=10)


def test_runs_in_order_on_one_thread(stream):
    seen = []
    for i in range(1000):
        stream.enqueue(lambda i=i: seen.append((i, threading.current_thread().name)))
    stream.synchronize(timeout=10)
    assert [i for i, _ in seen] == list(range(1000))
    assert len({name for _, name in seen}) == 1
    assert seen[0][1] != threading.current_thread().name


def test_args_and_kwargs_are_passed(stream):
    out = {}
    stream.enqueue(out.update, {"a": 1}, b=2)
    stream.synchronize(timeout=10)
    assert out == {"a": 1, "b": 2}


def test_many_enqueuing_threads_keep_each_threads_order(stream):
    seen = []

    def producer(t):
        for i in range(500):
            stream.enqueue(seen.append, (t, i))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    stream.synchronize(timeout=30)
    assert len(seen) == 8 * 500
    for t in range(8):
        assert [i for tt, i in seen if tt == t] == list(range(500))


def test_first_error_is_kept_and_reraised_every_time(stream, caplog):
    ran = []

    def boom():
        raise KeyError("first")

    def boom2():
        raise ValueError("second")

    stream.enqueue(boom)
    stream.enqueue(ran.append, 1)
    stream.enqueue(boom2)
    stream.enqueue(ran.append, 2)
    with caplog.at_level(logging.ERROR, logger="cudaevents"):
        for _ in range(2):
            with pytest.raises(KeyError, match="first") as info:
                stream.synchronize(timeout=10)
    assert ran == [1, 2]  # later tasks still run
    assert isinstance(stream.error, KeyError)
    assert any("boom" in line for line in __import__("traceback").format_tb(info.value.__traceback__))
    assert "raised after an earlier failure" in caplog.text and "second" in caplog.text


def test_base_exceptions_are_caught_too(stream):
    stream.enqueue(lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        stream.synchronize(timeout=10)
    stream.enqueue(lambda: None)  # the thread survived
    with pytest.raises(KeyboardInterrupt):
        stream.synchronize(timeout=10)


def test_unretrieved_error_is_logged_at_close(caplog):
    s = CpuStream(name="lonely")
    s.enqueue(lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="cudaevents"):
        s.close(timeout=10)
    assert "no synchronize() reported it" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_synchronize_times_out_promptly(stream):
    gate = threading.Event()
    stream.enqueue(gate.wait, 30)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="1 task"):
        stream.synchronize(timeout=0.1)
    assert time.monotonic() - t0 < 0.1 + 0.5
    gate.set()
    stream.synchronize(timeout=10)


def test_synchronize_waits_only_for_earlier_tasks(stream):
    gate = threading.Event()
    stream.enqueue(lambda: None)
    stream.synchronize(timeout=10)
    stream.enqueue(gate.wait, 30)
    with pytest.raises(TimeoutError):
        stream.synchronize(timeout=0)
    gate.set()
    stream.synchronize(timeout=10)


def test_synchronize_from_own_task_is_refused(stream):
    stream.enqueue(stream.synchronize, 1)
    with pytest.raises(RuntimeError, match="same stream"):
        stream.synchronize(timeout=10)


def test_close_drains_then_refuses():
    s = CpuStream()
    seen = []
    for i in range(100):
        s.enqueue(seen.append, i)
    s.close(timeout=10)
    assert seen == list(range(100))
    assert s.closed
    with pytest.raises(ClosedError, match="create a new CpuStream"):
        s.enqueue(seen.append, 1)
    s.close(timeout=10)  # twice is fine
    s.synchronize(timeout=1)  # nothing pending


def test_close_times_out_when_a_task_hangs():
    s = CpuStream()
    gate = threading.Event()
    s.enqueue(gate.wait, 30)
    with pytest.raises(TimeoutError, match="close"):
        s.close(timeout=0.05)
    gate.set()
    s.close(timeout=10)


def test_close_from_own_task_does_not_deadlock():
    s = CpuStream()
    s.enqueue(s.close)
    s.synchronize(timeout=10)
    assert s.closed


def test_context_manager_closes():
    with CpuStream() as s:
        s.enqueue(lambda: None)
    assert s.closed


def test_dropping_the_last_reference_stops_the_thread():
    s = CpuStream(name="to-be-dropped")
    thread = s.thread
    del s
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("bad", [None, 3, "task"])
def test_enqueue_rejects_non_callables(stream, bad):
    with pytest.raises(TypeError, match="needs a callable"):
        stream.enqueue(bad)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), ("1", TypeError), (float("nan"), ValueError), (True, TypeError)])
def test_bad_timeouts(stream, bad, exc):
    with pytest.raises(exc, match="timeout"):
        stream.synchronize(timeout=bad)


def test_repr(stream):
    assert "open" in repr(stream)
