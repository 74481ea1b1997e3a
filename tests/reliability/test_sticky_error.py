"""A failed GPU context: a PyTorch device-side assert leaves the context with a sticky error.
Every host wait, counter-event wait, fence and pending worker task must then raise an error
naming that failure within a second, nothing may hang, and new work must refuse clearly.

Each scenario runs in its own process (tests/scripts/sticky_error.py; the context cannot be used
again afterwards), once per AtomicEvent path the device offers."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers.fakes import FakeGpuCell, use_fake_gpu_cells
from helpers.subproc import run_script

STICKY = ("CUDA_ERROR_ASSERT", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_ILLEGAL_ADDRESS")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["mem64", "mem32", "hostfn"])
def test_a_failed_context_fails_every_waiter_quickly(backend):
    pytest.importorskip("torch")
    outcome = run_script("sticky_error.py", timeout=120, env={"CUDAEVENTS_ATOMIC_BACKEND": backend})
    lines = [line for line in outcome.stdout.splitlines() if line.startswith("RESULT ")]
    assert outcome.returncode == 0 and lines, outcome
    result = json.loads(lines[-1][len("RESULT "):])
    waits = ["CudaEvent.synchronize", "AtomicEvent.wait", "Event.wait", "Fence.wait", "GpuStream.synchronize",
             "AtomicEvent.wait in another thread", "new CudaEvent.record", "new AtomicEvent.signal on the stream"]
    for name in waits:
        got = result[name]
        assert any(code in got["outcome"] for code in STICKY), (name, got, outcome)
        # the thread's wait began 0.2 s before the failing work was even enqueued
        assert got["seconds"] < (1.5 if "another thread" in name else 1.0), (name, got)
    # the worker's pending task did not run; its error names the failure; nothing hangs
    assert result["tasks run"] == []
    assert result["worker errors"] and all(any(c in e for c in STICKY) for e in result["worker errors"])
    for name in ("Worker.synchronize", "Worker.close"):
        assert result[name]["seconds"] < 1.0, (name, result[name])


# -- the same logic without a GPU: a counter cell whose GPU signals never land ------------------
def test_host_waits_notice_a_failed_stream_within_a_second(monkeypatch, fake_driver):
    from cudaevents import AtomicEvent, CudaError

    # a GPU counter cell behind failed work: its stream signals never land
    fake_stream = use_fake_gpu_cells(monkeypatch, lambda: FakeGpuCell(signals_land=False))
    s = fake_stream(0x10)
    fake_driver.enqueue_work(s)  # the stream's work never finishes: its queries say NOT_READY
    counter = AtomicEvent(0)
    counter.signal(1, s)
    outcomes = []

    def waiter():
        t0 = time.monotonic()
        try:
            counter.wait(1, timeout=10)
        except CudaError as exc:
            outcomes.append((exc, time.monotonic() - t0))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert outcomes == []  # pending work, no failure yet: still waiting
    failed_at = time.monotonic()
    fake_driver.fail("cuStreamQuery", 710)  # CUDA_ERROR_ASSERT: sticky
    for t in threads:
        t.join(timeout=15)
    assert len(outcomes) == 3
    for exc, _ in outcomes:
        assert exc.code == 710 and "sticky" in str(exc)
    assert time.monotonic() - failed_at < 1.0
    with pytest.raises(CudaError, match="sticky"):  # and every later wait
        counter.wait(1, timeout=10)
    counter.close()
    # an error that is not sticky (a stream its owner destroyed: 400 INVALID_HANDLE) fails nothing
    fake_driver.fail("cuStreamQuery", 400)
    other = AtomicEvent(0)
    other.signal(1, s)
    with pytest.raises(TimeoutError):
        other.wait(1, timeout=0.3)
    other.close()
