"""Worker with CPU streams: ordering, dependencies, errors, timeouts, close (no GPU needed)."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref

import pytest
from helpers.subproc import NO_GPU, run_script

import cudaevents
from cudaevents import ClosedError, Worker
from cudaevents._sync import worker as _worker


def test_exported():
    assert "Worker" in cudaevents.__all__ and cudaevents.Worker is Worker


def test_tasks_run_on_the_worker_thread(worker, cpu_streams):
    (s,) = cpu_streams()
    seen = []
    worker.add_task(lambda: seen.append(threading.current_thread().name))
    worker.add_task(seen.append, "args")
    worker.commit(s)
    worker.synchronize(timeout=10)
    assert seen == [worker.name, "args"]
    assert worker.name.startswith("cudaevents-worker-")


def test_args_and_kwargs_are_passed(worker, cpu_streams):
    (s,) = cpu_streams()
    out = {}
    worker.add_task(out.update, {"a": 1}, b=2)
    worker.commit(s)
    worker.synchronize(timeout=10)
    assert out == {"a": 1, "b": 2}


def test_many_tasks_over_several_streams_run_in_commit_order(worker, cpu_streams):
    streams = cpu_streams(4)
    seen = []
    expected = []
    i = 0
    for batch in range(600):
        k = batch % 4
        streams[k].enqueue(time.sleep, 0.0001 * (k == 0))  # stream 0 is the slow one
        for _ in range(1 + batch % 5):
            worker.add_task(seen.append, (k, i))
            expected.append((k, i))
            i += 1
        worker.commit(streams[k])
    worker.synchronize(timeout=30)
    assert seen == expected  # strict commit order, across streams
    for k in range(4):
        got = [j for kk, j in seen if kk == k]
        assert got == sorted(got)


def test_commit_order_holds_when_an_earlier_stream_is_held_back(worker, cpu_streams, gates):
    slow, fast = cpu_streams(2)
    gate = gates()
    slow.enqueue(gate.wait, 30)
    seen = []
    worker.add_task(seen.append, "slow")
    worker.commit(slow)
    worker.add_task(seen.append, "fast")
    worker.commit(fast)
    fast.synchronize(timeout=10)  # the fast stream passed its commit point long ago
    time.sleep(0.05)
    assert seen == []  # ... but its commit waits behind the earlier one
    with pytest.raises(TimeoutError, match="2 commit"):
        worker.synchronize(timeout=0)
    gate.set()
    worker.synchronize(timeout=10)
    assert seen == ["slow", "fast"]


def test_tasks_run_only_after_the_stream_reached_the_commit_point(worker, cpu_streams, gates):
    (s,) = cpu_streams()
    before, after = gates(), gates()
    log = []
    s.enqueue(before.wait, 30)
    s.enqueue(log.append, "stream work before the commit")
    worker.add_task(log.append, "task")
    worker.commit(s)
    s.enqueue(after.wait, 30)  # work enqueued after the commit is not waited for
    s.enqueue(log.append, "stream work after the commit")
    time.sleep(0.05)
    assert log == []
    before.set()
    worker.synchronize(timeout=10)
    assert log == ["stream work before the commit", "task"]
    after.set()
    s.synchronize(timeout=10)
    assert log[-1] == "stream work after the commit"


def test_exceptions_are_logged_and_kept_and_later_tasks_still_run(worker, cpu_streams, caplog):
    (s,) = cpu_streams()
    ran = []

    def boom():
        raise KeyError("first")

    worker.add_task(boom)
    worker.add_task(ran.append, 1)
    worker.commit(s)
    worker.add_task(lambda: 1 / 0)
    worker.add_task(ran.append, 2)
    with caplog.at_level(logging.ERROR, logger="cudaevents"):
        worker.commit(s)
        worker.synchronize(timeout=10)  # does not raise
    assert ran == [1, 2]
    errors = worker.errors
    assert [type(e) for e in errors] == [KeyError, ZeroDivisionError]
    assert errors is not worker.errors  # a copy every time
    records = [r for r in caplog.records if r.name == "cudaevents"]
    assert len(records) == 2 and all(r.levelno == logging.ERROR and r.exc_info for r in records)
    assert "boom" in records[0].getMessage() and worker.name in records[0].getMessage()
    assert "ZeroDivisionError" in caplog.text


def test_base_exceptions_do_not_kill_the_thread(worker, cpu_streams, caplog):
    (s,) = cpu_streams()
    ran = []
    worker.add_task(lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    worker.add_task(lambda: (_ for _ in ()).throw(SystemExit(3)))
    worker.add_task(ran.append, 1)
    with caplog.at_level(logging.CRITICAL, logger="cudaevents"):
        worker.commit(s)
        worker.synchronize(timeout=10)
    assert ran == [1]
    assert [type(e) for e in worker.errors] == [KeyboardInterrupt, SystemExit]


class _FailingMarker:
    """Stands in for the commit's marker: waiting for the stream work fails, as a sticky
    CUDA error makes cuEventSynchronize fail."""

    def set(self):
        pass

    def wait(self):
        raise cudaevents.CudaError("cuEventSynchronize", 700, "CUDA_ERROR_ILLEGAL_ADDRESS")


def test_a_failed_wait_is_recorded_for_every_task_and_skips_them(worker, cpu_streams, monkeypatch, caplog):
    (s,) = cpu_streams()
    ran = []
    monkeypatch.setattr(_worker, "_Marker", _FailingMarker)
    for i in range(3):
        worker.add_task(ran.append, i)
    with caplog.at_level(logging.ERROR, logger="cudaevents"):
        worker.commit(s)
        worker.synchronize(timeout=10)
    monkeypatch.undo()
    worker.add_task(ran.append, "later")
    worker.commit(s)
    worker.synchronize(timeout=10)
    assert ran == ["later"]  # the failed commit's tasks did not run; later commits do
    errors = worker.errors
    assert len(errors) == 3 and all(e is errors[0] for e in errors)
    assert isinstance(errors[0], cudaevents.CudaError) and errors[0].code == 700
    assert "3 task(s) were not run" in caplog.text and "CUDA_ERROR_ILLEGAL_ADDRESS" in caplog.text


def test_synchronize_times_out_promptly(worker, cpu_streams, gates):
    (s,) = cpu_streams()
    gate = gates()
    s.enqueue(gate.wait, 30)
    worker.add_task(lambda: None)
    worker.commit(s)
    for timeout in (0, 0.1):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="1 commit"):
            worker.synchronize(timeout=timeout)
        assert time.monotonic() - t0 < timeout + 0.05
    gate.set()
    worker.synchronize(timeout=10)


def test_synchronize_waits_only_for_committed_tasks(worker, cpu_streams, gates):
    (s,) = cpu_streams()
    gate = gates()
    worker.synchronize(timeout=0)  # nothing committed yet
    worker.add_task(gate.wait, 30)  # added, never committed: not waited for
    worker.synchronize(timeout=0)
    worker.commit(s)
    with pytest.raises(TimeoutError):
        worker.synchronize(timeout=0.01)
    gate.set()
    worker.synchronize(timeout=10)


def test_empty_commit_is_a_no_op(worker, cpu_streams, gates):
    (s,) = cpu_streams()
    gate = gates()
    s.enqueue(gate.wait, 30)
    worker.commit(s)  # nothing to order: no marker, nothing to wait for
    worker.synchronize(timeout=0)
    assert repr(worker).endswith("unfinished_commits=0>")
    with pytest.raises(TypeError, match="as_stream"):  # the stream is still checked
        worker.commit("not a stream")


def test_synchronize_from_a_task_is_refused(worker, cpu_streams):
    (s,) = cpu_streams()
    worker.add_task(worker.synchronize, 1)
    worker.commit(s)
    worker.synchronize(timeout=10)
    (err,) = worker.errors
    assert isinstance(err, RuntimeError) and "same worker" in str(err)


def test_close_drains_then_refuses(cpu_streams):
    (s,) = cpu_streams()
    w = Worker()
    seen = []
    for i in range(100):
        w.add_task(seen.append, i)
        w.commit(s)
    w.close(timeout=10)
    assert seen == list(range(100))
    assert w.closed and "closed" in repr(w)
    assert not w._runner.thread.is_alive()
    with pytest.raises(ClosedError, match="create a new Worker"):
        w.add_task(seen.append, 1)
    with pytest.raises(ClosedError, match="create a new Worker"):
        w.commit(s)
    with pytest.raises(ClosedError):
        with w:
            pass
    w.close(timeout=10)  # twice is fine
    w.close()
    w.synchronize(timeout=0)  # nothing left


def test_uncommitted_tasks_run_at_close_after_earlier_commits(cpu_streams, gates):
    (s,) = cpu_streams()
    gate = gates()
    w = Worker()
    seen = []
    s.enqueue(gate.wait, 30)
    w.add_task(seen.append, "committed")
    w.commit(s)
    w.add_task(seen.append, "uncommitted")
    with pytest.raises(TimeoutError, match="close"):
        w.close(timeout=0.05)  # the drain cannot finish: the stream is held back
    assert seen == [] and w.closed
    with pytest.raises(ClosedError):
        w.add_task(seen.append, "too late")
    gate.set()
    w.close(timeout=10)
    assert seen == ["committed", "uncommitted"]


def test_close_from_a_task_does_not_deadlock(cpu_streams):
    (s,) = cpu_streams()
    w = Worker()
    seen = []
    w.add_task(w.close)
    w.add_task(seen.append, 1)
    w.commit(s)
    w._runner.thread.join(timeout=10)
    assert not w._runner.thread.is_alive()
    assert seen == [1] and w.closed and w.errors == []


def test_context_manager_closes(cpu_streams):
    (s,) = cpu_streams()
    seen = []
    with Worker(name="ctx") as w:
        assert w.name == "ctx"
        w.add_task(seen.append, 1)
        w.commit(s)
        w.add_task(seen.append, 2)  # runs at close
    assert w.closed and seen == [1, 2]


def test_commit_that_fails_keeps_the_batch_pending(worker, cpu_streams):
    good, bad = cpu_streams(2)
    bad.close(timeout=10)
    seen = []
    worker.add_task(seen.append, 1)
    with pytest.raises(ClosedError, match="CpuStream"):
        worker.commit(bad)
    worker.commit(good)
    worker.synchronize(timeout=10)
    assert seen == [1]


def test_commit_raises_when_the_runner_refuses_the_batch(cpu_streams):
    """A runner closed under an open worker (only possible across a fork) must not swallow
    a commit: it raises, the batch stays pending, and the marker's stream is unaffected."""
    (s,) = cpu_streams()
    w = Worker()
    w._runner.stop()  # as if its thread were gone, the worker still open
    seen = []
    w.add_task(seen.append, 1)
    with pytest.raises(ClosedError, match="Worker"):
        w.commit(s)
    assert w._pending[threading.current_thread()] == [(seen.append, (1,), {})]
    s.synchronize(timeout=10)
    w.close(timeout=10)
    assert seen == []


def test_batches_are_per_thread(worker, cpu_streams):
    streams = cpu_streams(4)
    seen = []
    start = threading.Barrier(4)

    def producer(t):
        start.wait(10)
        for i in range(300):
            worker.add_task(seen.append, (t, i))
            if i % 3 == 2:
                worker.commit(streams[t])

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
        assert not th.is_alive()
    worker.synchronize(timeout=30)
    assert len(seen) == 4 * 300
    for t in range(4):
        assert [i for tt, i in seen if tt == t] == list(range(300))


def test_dropping_the_worker_stops_its_thread_and_runs_uncommitted_tasks(cpu_streams):
    (s,) = cpu_streams()
    w = Worker(name="to-be-dropped")
    seen = []
    w.add_task(seen.append, 1)
    w.commit(s)
    w.add_task(seen.append, 2)  # never committed
    thread = w._runner.thread
    ref = weakref.ref(w)
    del w
    gc.collect()
    assert ref() is None  # the thread does not keep the Worker alive
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen == [1, 2]


def test_dropping_a_worker_caught_in_a_cycle_does_not_deadlock(cpu_streams):
    (s,) = cpu_streams()
    w = Worker()
    seen = []
    w.add_task(lambda w=w: seen.append(w.name))  # the pending task references the worker
    thread = w._runner.thread
    del w
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(seen) == 1


@pytest.mark.parametrize("bad", [None, 3, "task"])
def test_add_task_rejects_non_callables(worker, bad):
    with pytest.raises(TypeError, match="needs a callable"):
        worker.add_task(bad)


@pytest.mark.parametrize("bad", ["stream", object(), 3.5, 7])
def test_commit_rejects_non_streams(worker, bad):
    worker.add_task(lambda: None)
    with pytest.raises(TypeError, match="as_stream"):
        worker.commit(bad)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), ("1", TypeError), (float("nan"), ValueError), (True, TypeError)])
def test_bad_timeouts(worker, bad, exc):
    with pytest.raises(exc, match="timeout"):
        worker.synchronize(timeout=bad)
    with pytest.raises(exc, match="timeout"):
        worker.close(timeout=bad)
    assert not worker.closed


def test_bad_name():
    with pytest.raises(TypeError, match="name"):
        Worker(name=3)


def test_exit_with_queued_tasks_is_silent():
    for _ in range(3):
        r = run_script("worker_exit_queued.py", timeout=60, env=NO_GPU)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


# -- GPU commits on the simulated driver: which events, and how the worker sleeps -----------------
def test_gpu_commits_record_plain_events_and_the_worker_sleeps_on_one_blocking_sync_event(fake_driver, monkeypatch):
    """A commit records an event without timing and without BLOCKING_SYNC (the driver queues
    those without limit behind unfinished work); the worker's thread waits for it through a
    stream of its own (cuStreamWaitEvent) and one blocking-sync event recorded there."""
    from cudaevents import GpuStream
    from cudaevents._core.cuda_event import BLOCKING_SYNC, DISABLE_TIMING

    flags_of = {}
    create = fake_driver.cuEventCreate
    records, waits = fake_driver.recorded, fake_driver.waited  # (event, stream), (stream, event)

    def noted_create(flags):
        err, handle = create(flags)
        flags_of[handle] = flags
        return err, handle

    monkeypatch.setattr(fake_driver, "cuEventCreate", noted_create)
    s = GpuStream(0)
    w = Worker()
    ran = []
    try:
        for i in range(100):
            w.add_task(ran.append, i)
            w.commit(s)
        on_s = [e for e, stream in records if stream == s.handle]
        assert len(on_s) == 100 and {flags_of[e] for e in on_s} == {DISABLE_TIMING}
        deadline = time.monotonic() + 10
        while not waits and time.monotonic() < deadline:  # the worker's thread found the first pending
            time.sleep(0.005)
        (own, first), = waits
        assert own != s.handle and first == on_s[0] and ran == []
        (sleep_on, where), = [(e, st) for e, st in records if flags_of[e] & BLOCKING_SYNC]
        assert where == own and flags_of[sleep_on] == BLOCKING_SYNC | DISABLE_TIMING
        fake_driver.run()  # the GPU catches up: every commit's event, then the worker's own
        w.synchronize(timeout=10)
        assert ran == list(range(100))
        assert len([e for e, _ in records if flags_of[e] & BLOCKING_SYNC]) == 1  # one at a time, reused
        w.close(timeout=10)
        assert int(own) in fake_driver.destroyed  # the worker's own stream goes when its thread ends
        assert w._runner.pending() == 0
    finally:
        fake_driver.run()
        w.close(timeout=10)
        s.close()
