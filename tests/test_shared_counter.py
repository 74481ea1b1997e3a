"""AtomicEvent(shared=True): a counter that processes share, on the host path (no GPU needed),
with GPU streams of the simulated driver in one of the processes. The scenarios across
processes run in tests/scripts/shared_counter.py (multiprocessing, 'spawn'), each under a
hard timeout; the real-GPU versions are in tests/test_gpu_shared_counter.py."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest
from helpers.fake_driver import FakeDriver, bound
from helpers.subproc import NO_GPU, run_code, run_script

import cudaevents as ce
from cudaevents._sync import atomic_event


def scenario(name: str):
    r = run_script("shared_counter.py", name, timeout=120, env={**NO_GPU, "CUDAEVENTS_ATOMIC_BACKEND": ""})
    assert r.returncode == 0 and f"ok {name}" in r.stdout, r
    return r


@pytest.fixture
def gpu(monkeypatch):
    """A simulated GPU whose stream writes wait for run(stream), counters on mem64."""
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "mem64")
    with bound(monkeypatch, FakeDriver(stream_order=True)) as fake:
        yield fake


# -- across processes ----------------------------------------------------------------------------
def test_host_signals_of_one_process_release_host_and_cpu_stream_waits_of_another():
    scenario("host_to_waits")


def test_two_processes_take_turns_signalling_from_the_host_and_cpu_streams():
    scenario("ping_pong")


def test_values_never_decrease_across_processes_and_a_host_signal_behind_a_peers_pending_one_is_refused():
    scenario("monotonic")


def test_waits_for_values_nobody_signals_time_out_in_every_process():
    scenario("timeouts")


def test_a_killed_process_fails_the_waits_of_the_others_within_a_second():
    scenario("killed")


def test_a_death_fails_a_blocking_host_wait_too():
    scenario("killed_while_blocking")


def test_a_clean_close_or_exit_is_no_death():
    scenario("clean_close")


def test_a_process_that_exits_with_its_signal_pending_counts_as_dead():
    scenario("exit_with_a_pending_signal")


def test_an_exit_with_a_signal_pending_behind_another_processs_later_promise_counts_as_dead():
    scenario("exit_with_a_pending_signal_after_a_later_promise")


def test_after_the_creator_closed_or_exited_the_counter_cannot_be_received():
    scenario("creator_closed")


def test_a_killed_creator_breaks_the_counter_and_nobody_can_receive_it_any_more():
    scenario("creator_killed")


def test_a_peer_death_lets_gpu_waits_of_this_process_go_without_a_driver_call():
    scenario("gpu_waits_let_go")


def test_a_gpu_signal_behind_a_peers_pending_signal_waits_on_the_gpu_for_it():
    scenario("gpu_signal_after_peer")


def test_a_forked_child_uses_an_inherited_shared_counter_from_the_host():
    r = run_script("fork/shared_counter.py", timeout=120, env=NO_GPU)
    assert r.returncode == 0 and r.stderr == "", r
    for line in ("child: the parent's file lock is not the child's", "parent: the child's exit was no death",
                 "child: refused: g.signal(2, gs)", "child: refused: g.wait(5, gs)", "parent: ok"):
        assert line in r.stdout, r


# -- in one process --------------------------------------------------------------------------------
def test_a_counter_that_is_not_shared_does_not_pickle(host_backend):
    a = ce.AtomicEvent()
    with pytest.raises(ce.NotShareableError, match=r"create it with AtomicEvent\(device, shared=True\)"):
        pickle.dumps(a)
    assert issubclass(ce.NotShareableError, TypeError)
    a.close()


def test_a_shared_counter_received_in_its_own_process_is_the_same_object(host_backend):
    a = ce.AtomicEvent(shared=True)
    assert a.shared and a.backend == "host" and a.device is None and "shared" in repr(a)
    assert pickle.loads(pickle.dumps(a)) is a
    a.signal(4)
    a.close()
    with pytest.raises(ce.ClosedError, match="send it before closing it"):
        pickle.dumps(a)
    assert not os.path.exists(a._cell.path) and a._cell.path not in atomic_event._shared


def test_a_local_failure_breaks_a_shared_counter_for_every_process(host_backend, cpu):
    a = ce.AtomicEvent(shared=True)
    a.signal(2)
    s = cpu()
    s.enqueue(lambda: 1 / 0)
    a.signal(3, s)                        # fails the counter with the task's error
    with pytest.raises(ZeroDivisionError):
        a.wait(3, timeout=10)
    deadline = time.monotonic() + 10      # the page breaks just after this process's waiters wake
    while (err := a._cell.peer_error()) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    # what the other processes see
    assert isinstance(err, ce.PeerError) and not err.died and err.value == 2 and err.pid == os.getpid()
    assert "ZeroDivisionError" in str(err) and "failed it" in str(err)
    a.close()


def test_the_hostfn_backend_cannot_be_shared(gpu, monkeypatch):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "hostfn")
    with pytest.raises(ce.NotShareableError, match="shared counters use mem64, mem32, host"):
        ce.AtomicEvent(0, shared=True)


@pytest.mark.parametrize("backend,limit", [("mem64", 1 << 63), ("mem32", 1 << 31)])
def test_a_shared_gpu_counter_registers_its_page_and_streams_reach_it(gpu, monkeypatch, backend, limit):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", backend)
    a = ce.AtomicEvent(0, shared=True)
    cell = a._cell
    assert a.backend == backend and cell.limit == limit and cell.uuid == gpu.uuids[0]
    assert (cell._dev, 4096) in gpu.registered
    s = ce.GpuStream(0)
    a.signal(3, s)
    assert a.value == 0
    gpu.run(s)
    assert a.value == 3 and cell._page.value == 3
    a.wait(5, s)
    assert gpu.value_waits[-1] == (s._id, cell._dev, 5)
    a.close()                             # this process is the last attached: its stranded wait goes
    assert cell.read() == limit - 1
    s.close()


def test_a_gpu_the_receiving_process_does_not_see_leaves_it_host_and_cpu_streams(gpu):
    a = ce.AtomicEvent(0, shared=True)
    del atomic_event._shared[a._cell.path]  # else this process's open counter is what it receives
    b = ce.AtomicEvent._attach(a._cell.path, "mem64", bytes(16), None)  # as a process without that GPU
    assert b is not a and b.device is None and b.backend == "mem64"
    with pytest.raises(ce.DeviceMismatchError, match="make that GPU visible to this process"):
        b.wait(1, ce.GpuStream(0))
    b.signal(2)
    assert a.value == 2
    b.close()
    a.close()


def test_a_shared_counter_on_the_host_backend_is_host_only_also_beside_a_gpu(gpu, monkeypatch):
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "host")
    a = ce.AtomicEvent(0, shared=True)
    assert a.backend == "host" and a.device is None and a._cell.uuid is None and not gpu.registered
    with pytest.raises(ValueError, match="uses the host backend"):
        a.signal(1, ce.GpuStream(0))
    a.close()


def _gpu_script():
    """tests/scripts/gpu_shared_counter.py as a module (its GPU parts run on the simulated driver)."""
    import importlib.util

    from helpers.subproc import SCRIPTS

    spec = importlib.util.spec_from_file_location("gpu_shared_counter", SCRIPTS / "gpu_shared_counter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_scripts_consumer_enqueues_its_copy_behind_its_gpu_wait_without_blocking(gpu):
    """The consumer of tests/scripts/gpu_shared_counter.py, against a producer thread in this
    process on the simulated GPU, whose copies wait in stream order behind memory waits and
    whose copies between two host ranges block the caller, as the real driver's do. The
    script once copied the counter's page straight into pinned memory: on the H200 that copy
    blocked the consumer behind its own GPU wait before it gave ``ready``, the producer waited
    for ``ready`` until the parent killed the hung consumer, and the producer's wait then
    raised PeerError for that killed consumer (the error that was reported)."""
    script = _gpu_script()
    a, data, ready = (ce.AtomicEvent(0, shared=True) for _ in range(3))
    errors = []

    def produce():
        try:
            for r in range(1, script.ROUNDS + 1):
                ready.wait(r, timeout=10)  # the consumer's GPU wait for r is enqueued
                data.signal(1000 * r)
                a.signal(r)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    with gpu.running():
        producer.start()
        script.consumer(a, data, ready)   # copies the data each round and checks it
        producer.join(10)
    assert not producer.is_alive(), "the producing thread did not finish in 10 s"
    assert not errors and a.closed and data.closed and ready.closed


def test_a_copy_between_host_memory_behind_an_unreached_gpu_wait_blocks_the_caller(gpu, monkeypatch):
    """What the simulated driver models of the real one (the documented synchronous copies),
    on which the test above rests: a copy from device memory waits in the stream, one
    between two host ranges holds the calling thread."""
    from helpers import fake_driver

    from cudaevents._core import driver

    monkeypatch.setattr(fake_driver, "HOST_COPY_LIMIT", 0.2)
    a = ce.AtomicEvent(0, shared=True)
    s = ce.GpuStream(0)
    read, word, host, dev = _gpu_script().page_reader(a, s)
    a.wait(5, s)
    read()                                # page -> device -> pinned: both wait in the stream
    assert not s.query() and word.value == 0
    with pytest.raises(AssertionError, match="copy between host memory is synchronous"):
        driver.memcpy_dtoh_async(host, a._cell._dev, 8, s.handle)  # page -> pinned: the caller waits
    a.signal(5)
    with gpu.running():
        s.synchronize(timeout=10)
    assert word.value == 5
    a.close()
    s.close()


def test_a_hung_spawned_child_prints_where_it_hangs_before_it_is_killed():
    """helpers.spawning.joined: a child still running at the deadline prints its threads'
    stacks before the kill, so a hang shows its place, not only its peers' PeerErrors."""
    r = run_code("""
        import time

        from helpers.spawning import joined, spawn

        p = spawn(time.sleep, 60)
        time.sleep(2)                      # started, and sleeping
        try:
            joined(p, timeout=0.5)
        except AssertionError as exc:
            print("hung:", exc)
    """, timeout=60, env=NO_GPU)
    assert "hung: SpawnProcess-1 hung: killed after 0.5 s" in r.stdout, r
    assert "spawning.py\", line" in r.stderr and "in _traced" in r.stderr, r  # the child's stack
