"""Counter events on a simulated GPU whose stream writes land in stream order (no GPU needed):
what close() promises to GPU waiters, how signals of several streams stay in call order when
the driver reuses a destroyed stream's handle, the dependency the library inserts between
streams (a CUDA event, never a memory wait for another stream's write), finalizers that run
inside the library's own critical sections, and the host paths that need no driver.

The real-GPU versions of these scenarios are in tests/test_gpu_sync.py and the stress suite."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from helpers.fake_driver import FakeDriver, bound, finalizers_done

import cudaevents as ce
from cudaevents._sync import counter_storage

MEM_LIMIT = 1 << 63


@pytest.fixture
def gpu(monkeypatch):
    """A simulated GPU whose stream writes wait for run(stream), reusing stream handles, with
    counters on mem64 and a slab of its own."""
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "mem64")
    with bound(monkeypatch, FakeDriver(stream_order=True, reuse_streams=True)) as fake:
        yield fake


def run_in_thread(fn, timeout=10.0):
    """``fn()`` on another thread; fails (instead of hanging) when it does not return in time,
    and raises what ``fn`` raised."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout} s: deadlock"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- close() and GPU waiters -------------------------------------------------------------------
def test_close_lets_a_pending_signal_release_the_gpu_waits_it_promised(gpu):
    producer, consumer = ce.GpuStream(), ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(5, producer)  # enqueued; lands when the producer runs
    counter.wait(5, consumer)
    counter.close()
    assert counter._cell.read() == 0  # not let go early: the consumer still waits for the producer
    gpu.run(producer)
    assert counter._cell.read() == 5


def test_close_releases_stranded_gpu_waits_only_after_the_last_pending_signal(gpu, caplog):
    producer, consumer = ce.GpuStream(), ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(5, producer)
    counter.wait(9, consumer)  # no signal will ever give 9
    counter.close()
    assert counter._cell.read() == 0  # a release now would be lowered again by the signal of 5
    gpu.run(producer)
    assert counter._cell.read() == 5  # the release follows that signal on the helper stream
    gpu.run()
    assert counter._cell.read() == MEM_LIMIT - 1
    assert "no signal will reach" in caplog.text


def test_close_with_nothing_pending_releases_stranded_waits_at_once(gpu):
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(2)
    counter.wait(3, s)
    counter.close()
    assert counter._cell.read() == MEM_LIMIT - 1


def test_close_leaves_a_pending_cpu_signal_to_land_before_the_gpu_waits_go(gpu, cpu):
    cpu = cpu()
    gate = threading.Event()
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    cpu.enqueue(gate.wait, 10)
    counter.signal(4, cpu)
    counter.wait(4, s)
    counter.wait(6, s)  # stranded
    counter.close()
    assert counter._cell.read() == 0
    gate.set()
    cpu.synchronize(timeout=10)
    assert counter._cell.read() == MEM_LIMIT - 1  # 4 landed, then the stranded waits were let go


def test_the_slot_goes_back_after_every_stream_passed_its_fence(gpu):
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(1, s)
    in_use = counter_storage.slab_stats()["in_use"]
    s.close()  # destroyed with its work pending: the fence recorded after the signal stands for it
    counter.close()
    assert counter_storage.slab_stats()["in_use"] == in_use  # quarantined, not back yet
    gpu.run()
    counter_storage._quarantine.reclaim()
    assert counter_storage.slab_stats()["in_use"] == in_use - 1


# -- ordering across streams ----------------------------------------------------------------------
def test_a_reused_stream_handle_is_another_stream(gpu):
    held = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(5, held)
    handle = held.handle
    held.close()
    again = ce.GpuStream()
    assert again.handle == handle  # the driver gave the destroyed stream's handle to the new one
    waits_before = gpu.calls["cuStreamWaitEvent"]
    counter.signal(7, again)
    assert gpu.calls["cuStreamWaitEvent"] == waits_before + 1  # ordered after the first stream
    gpu.run(again)  # in the simulation nothing holds "again" back: its 7 lands first,
    gpu.run(handle)  # and the old stream's 5 after it, unless ordered (which the real GPU does)
    counter.close()


def test_the_library_orders_streams_with_events_not_memory_waits(gpu):
    a, b = ce.GpuStream(), ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(1, a)
    memory_waits = gpu.calls["cuStreamWaitValue64"]
    counter.signal(2, b)
    assert gpu.calls["cuStreamWaitValue64"] == memory_waits  # no wait for another stream's write
    assert gpu.calls["cuStreamWaitEvent"] >= 1
    gpu.run()
    assert counter.value == 2
    counter.close()


def test_a_host_signal_behind_a_pending_stream_signal_is_refused(gpu):
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(3, s)
    with pytest.raises(ValueError, match="wait\\(3\\) first"):
        counter.signal(4)  # it would be lowered when the stream's 3 lands
    gpu.run(s)
    counter.signal(4)
    assert counter.value == 4
    counter.close()


def test_event_host_signal_after_a_gpu_signal(gpu):
    s = ce.GpuStream()
    ev = ce.Event()
    ev.signal(s)  # a recycled CUDA event, its work pending
    ev.value = 2
    ev.signal()  # moves to a counter set by the host now
    ev.wait(timeout=5)
    assert ev.backing == "atomic"
    gpu.run()
    ev.close()


def test_closing_a_cuda_backed_event_while_a_cpu_stream_waits_on_it(gpu, cpu):
    cpu = cpu()
    s = ce.GpuStream()
    ev = ce.Event()
    ev.signal(s)
    gate = threading.Event()
    cpu.enqueue(gate.wait, 10)
    ev.wait(cpu)
    ev.close()  # the CpuStream's wait still sees the work it waits for
    gate.set()
    gpu.run(s)
    cpu.synchronize(timeout=10)  # no ClosedError


def test_a_host_signal_needs_no_driver_while_gpu_streams_wait(gpu):
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.wait(1, s)
    gpu.fail("cuStreamQuery", 999)  # as if every driver call blocked: none may be needed
    gpu.fail("cuEventQuery", 999)
    counter.signal(1)
    counter.wait(1, timeout=5)
    gpu.fail("cuStreamQuery", 0)
    gpu.fail("cuEventQuery", 0)
    counter.close()


def test_a_cpu_stream_host_wait_for_a_host_value_probes_no_stream(gpu, cpu):
    cpu = cpu()
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.wait(1, s)  # a GPU stream waits; the host releases it
    queries = gpu.calls["cuStreamQuery"]
    cpu.enqueue(counter.wait, 2, timeout=5)  # a CpuStream waits for a value only the host gives
    threading.Timer(0.2, counter.signal, (2,)).start()
    cpu.synchronize(timeout=10)
    assert gpu.calls["cuStreamQuery"] == queries
    counter.close()


# -- finalizers inside the library's critical sections ---------------------------------------------
class _Cycle:
    def __init__(self, counter):
        self.counter = counter
        self.me = self


def test_a_counter_collected_inside_the_slab_lock_closes_on_another_thread(gpu):
    slab = counter_storage._get_slab()
    counter = ce.AtomicEvent(0)
    in_use = slab.stats()["in_use"]
    _Cycle(counter)
    del counter

    def collect_inside_the_lock():
        with slab._lock:
            gc.collect()  # the counter's finalizer runs here, in the slab's critical section

    run_in_thread(collect_inside_the_lock)
    run_in_thread(lambda: _until(lambda: slab.stats()["in_use"] == in_use - 1))


def _until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)
    return True


def test_dropping_a_counter_with_gpu_waits_lets_them_go(gpu):
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    cell = counter._cell
    counter.wait(3, s)
    del counter
    gc.collect()
    run_in_thread(lambda: _until(lambda: cell.read() == MEM_LIMIT - 1))


def test_hostfn_gpu_waits_racing_a_fold_or_a_store_pass():
    from helpers.subproc import run_script

    out = run_script("hostfn_races.py", timeout=60)
    assert out.returncode == 0 and all(f"ok {case}" in out.stdout for case in ("fold", "store", "close")), out


def test_a_signal_orders_after_the_other_streams_signal_not_after_its_later_waits(gpu):
    a, b = ce.GpuStream(), ce.GpuStream()
    counter = ce.AtomicEvent(0)
    counter.signal(5, a)
    counter.wait(7, a)  # a waits for a value that b's signal below leads up to
    before = len(gpu.waited)
    counter.signal(6, b)  # must follow a's 5, not a's wait for 7 (that would deadlock on a GPU)
    waited = [event for _, event in gpu.waited[before:]]
    touched = counter._touched[a._key]
    assert waited == [touched.signalled.handle] and touched.fence.handle not in waited
    gpu.run()
    counter.close()


def test_close_during_a_gpu_wait_being_enqueued_lets_it_go_and_retires_after_it(gpu):
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    cell = counter._cell
    entered, go_on = threading.Event(), threading.Event()
    real = cell.gpu_wait

    def slow_gpu_wait(stream, value):  # the driver call of wait(), with close() coming meanwhile
        entered.set()
        assert go_on.wait(10)
        return real(stream, value)

    cell.gpu_wait = slow_gpu_wait
    waiter = threading.Thread(target=counter.wait, args=(3, s), daemon=True)
    waiter.start()
    assert entered.wait(10)
    slab = counter_storage._get_slab()
    in_use = slab.stats()["in_use"]
    counter.close()  # no signal pending: the wait is let go now, and passes once enqueued
    assert cell.read() == MEM_LIMIT - 1
    go_on.set()
    waiter.join(10)
    assert not waiter.is_alive()
    gpu.run()
    counter_storage.reclaim()
    assert slab.stats()["in_use"] == in_use - 1  # retired after the wait's fence, which was recorded


def test_close_does_not_wait_for_a_gpu_wait_whose_enqueue_blocks_until_it_is_let_go(gpu):
    """Behind GPU waits for host values the driver may block every enqueue until they are let
    go (hostfn: the wait's own host function holds the driver's callback thread): the wait's
    enqueue cannot finish before close() lets it go, so close() must not leave that to it."""
    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    cell = counter._cell
    real, entered, stuck = cell.gpu_wait, threading.Event(), threading.Event()

    def blocking_gpu_wait(stream, value):
        real(stream, value)
        entered.set()
        deadline = time.monotonic() + 5
        while cell.read() < value:  # the driver, until the wait is let go
            if time.monotonic() > deadline:
                stuck.set()
                return
            time.sleep(0.005)

    cell.gpu_wait = blocking_gpu_wait
    waiter = threading.Thread(target=counter.wait, args=(3, s), daemon=True)
    waiter.start()
    assert entered.wait(10)
    run_in_thread(counter.close)
    waiter.join(10)
    assert not waiter.is_alive() and not stuck.is_set(), "the wait's enqueue was never let go"


def test_stranded_waits_go_after_the_last_signal_on_the_helper_stream(gpu):
    """signal(1, s), then a wait for 5 on s, then close(): the write that lets the wait go must
    follow the signal, and not queue on s behind the wait, where it would never run."""
    from cudaevents._core.streams import helper_stream

    s = ce.GpuStream()
    counter = ce.AtomicEvent(0)
    cell = counter._cell
    counter.signal(1, s)
    counter.wait(5, s)
    counter.close()
    helper = helper_stream(0)
    assert gpu.pending.get(helper._handle), "the release is not on the helper stream"
    gpu.run(s)
    assert cell.read() == 1  # s ran up to its wait; the release waits on the helper
    gpu.run(helper)
    assert cell.read() == MEM_LIMIT - 1


def test_no_finalizer_calls_the_driver_in_the_collecting_thread(gpu, monkeypatch, cpu):
    """The collector runs finalizers in whatever thread allocates, also one that releases GPU
    streams held on host values and so must make no driver call (with such streams held, any
    driver call may block: README, "CPU and GPU synchronization"). Every finalizer's driver work
    goes to the finalizer thread."""
    cpu = cpu()
    calls = []
    noted = gpu._called
    monkeypatch.setattr(gpu, "_called", lambda name: (calls.append((name, threading.get_ident())), noted(name)))
    s = ce.GpuStream()
    ev = ce.CudaEvent(timing=True).record(s)
    counter = ce.AtomicEvent(0)
    counter.signal(1, s)
    counter.wait(2, s)
    value = ce.Event()
    value.signal(s)
    fence = ce.Fence(0)
    fence.update(s)
    timer = ce.Timer()
    with timer.region("r", s):
        pass
    held = [_Cycle(x) for x in (ce.GpuStream(), ce.GpuStream(blocking=True), s, ev, counter, value, fence, timer, cpu)]
    del s, ev, counter, value, fence, timer, cpu, held
    calls.clear()
    gc.collect()
    assert [name for name, thread in calls if thread == threading.get_ident()] == []
    gpu.run()
    finalizers_done()
    assert gpu.calls["cuStreamDestroy"] == 3
