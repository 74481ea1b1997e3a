"""Worker with GPU streams: tasks wait for GPU work, commit order across streams, CUDA calls
from other threads meanwhile, GPU and CPU streams mixed, and a silent exit."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.subproc import run_script

from cudaevents import ClosedError, CpuStream, CudaEvent, GpuStream
from cudaevents._core import driver

pytestmark = pytest.mark.gpu


@pytest.fixture
def buffer(buffers):
    return buffers(1 << 20)


def test_tasks_wait_for_gpu_work(worker, stream, latch):
    ran = []
    latch.block(stream)
    worker.add_task(ran.append, 1)
    worker.commit(stream)
    time.sleep(0.05)
    assert ran == []
    with pytest.raises(TimeoutError):
        worker.synchronize(timeout=0)
    latch.release()
    worker.synchronize(timeout=10)
    assert ran == [1] and worker.errors == []


def test_commit_accepts_what_as_stream_accepts(worker, stream):
    ran = []
    worker.add_task(ran.append, "legacy default stream")
    worker.commit(None)
    worker.add_task(ran.append, "raw handle")
    from cudaevents import as_stream

    worker.commit(as_stream(stream.handle, device=0))
    worker.add_task(ran.append, "protocol")
    worker.commit(stream)
    worker.synchronize(timeout=10)
    assert ran == ["legacy default stream", "raw handle", "protocol"]


def test_commit_on_a_closed_stream_keeps_the_batch(worker):
    s = GpuStream(0)
    s.close()
    ran = []
    worker.add_task(ran.append, 1)
    with pytest.raises(ClosedError, match="GpuStream was closed"):
        worker.commit(s)
    with GpuStream(0) as good:
        worker.commit(good)
        worker.synchronize(timeout=10)
    assert ran == [1]


def test_ordering_of_10000_tasks_over_4_gpu_streams(worker, gpu_streams, latch, buffer):
    streams = gpu_streams(4)
    seen = []
    expected = []
    i = 0
    batch = 0
    latch.block(streams[0])  # the first commit waits; every later one must wait behind it
    while i < 10_000:
        k = batch % 4
        s = streams[k]
        driver.memset_d32_async(buffer + k * 4096, batch, 1024, s._handle)  # some GPU work
        for _ in range(1 + batch % 7):
            if i == 10_000:
                break
            worker.add_task(seen.append, (k, i))
            expected.append((k, i))
            i += 1
        worker.commit(s)
        batch += 1
        if batch == 40:  # few operations behind the latch: the driver blocks beyond ~1000
            time.sleep(0.05)
            assert seen == []
            latch.release()
    worker.synchronize(timeout=60)
    assert worker.errors == []
    assert len(seen) == 10_000
    for k in range(4):
        got = [j for kk, j in seen if kk == k]
        assert got == sorted(got)
    assert seen == expected  # the overall commit order


def test_stress_cuda_calls_while_tasks_run(worker, buffer):
    """The main thread keeps calling CUDA for ~3 s while producers commit 10,000 tasks from
    four streams; some tasks call CUDA themselves. Nothing may hang."""
    n_producers, per_producer = 2, 5_000
    done = []
    done_lock = threading.Lock()
    failures = []

    def task(t, i, s):
        if i % 100 == 0:  # tasks may call CUDA: they run in a plain thread, not a host callback
            with CudaEvent() as ev:
                ev.record(s)
                ev.synchronize(timeout=30)
        with done_lock:
            done.append((t, i))

    def producer(t):
        try:
            own = [GpuStream(0), GpuStream(0)]
            for i in range(per_producer):
                s = own[i % 2]
                if i % 10 == 0:
                    driver.memset_d32_async(buffer + (2 * t + i % 2) * 4096, i, 1024, s._handle)
                worker.add_task(task, t, i, s)
                if i % 5 == 4 or i == per_producer - 1:
                    worker.commit(s)
                if i % 500 == 0:
                    time.sleep(0.001)  # let the main thread's CUDA calls interleave
            for s in own:
                s.synchronize(timeout=60)
            worker.synchronize(timeout=60)
            for s in own:
                s.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=producer, args=(t,), daemon=True) for t in range(n_producers)]
    for th in threads:
        th.start()
    main = GpuStream(0)
    calls = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        driver.memset_d32_async(buffer + 60 * 4096, calls, 1024, main._handle)
        with CudaEvent(blocking_sync=calls % 2 == 0) as ev:
            ev.record(main)
            ev.synchronize(timeout=30)
        main.synchronize(timeout=30)
        if calls % 20 == 0:
            with GpuStream(0) as extra:
                CudaEvent().record(extra).close()
                extra.synchronize(timeout=30)
        calls += 1
    for th in threads:
        th.join(timeout=120)
        assert not th.is_alive(), "a producer hung"
    main.synchronize(timeout=30)
    main.close()
    worker.synchronize(timeout=60)
    assert failures == []
    assert worker.errors == []
    assert len(done) == n_producers * per_producer
    for t in range(n_producers):
        assert [i for tt, i in done if tt == t] == list(range(per_producer))
    assert calls > 10


def test_gpu_and_cpu_streams_commit_to_one_worker(worker, stream, latch):
    cpu = CpuStream()
    gate = threading.Event()
    try:
        cpu.enqueue(gate.wait, 30)
        latch.block(stream)
        seen = []
        worker.add_task(seen.append, "cpu, held")
        worker.commit(cpu)
        worker.add_task(seen.append, "gpu, latched")
        worker.commit(stream)
        with CpuStream() as free:
            worker.add_task(seen.append, "cpu, free")
            worker.commit(free)
            latch.release()
            stream.synchronize(timeout=10)
            free.synchronize(timeout=10)
            time.sleep(0.05)
            assert seen == []  # everything waits behind the held CPU stream's commit
            gate.set()
            worker.synchronize(timeout=10)
        assert seen == ["cpu, held", "gpu, latched", "cpu, free"]
    finally:
        gate.set()
        cpu.close(timeout=10)


def test_events_go_back_to_the_pool(worker, stream):
    from cudaevents import default_pool

    for _ in range(50):
        worker.add_task(lambda: None)
        worker.commit(stream)
    worker.synchronize(timeout=10)
    before = default_pool().stats(0)
    for _ in range(200):
        worker.add_task(lambda: None)
        worker.commit(stream)
        worker.synchronize(timeout=10)
    after = default_pool().stats(0)
    assert after.creates == before.creates  # every commit reused a pooled event
    assert after.live == before.live


def test_exit_with_a_worker_blocked_on_the_gpu_is_silent():
    for _ in range(3):
        r = run_script("gpu_worker_exit_blocked.py", timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
