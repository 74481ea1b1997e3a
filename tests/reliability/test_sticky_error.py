"""A failed GPU context: a PyTorch device-side assert leaves the context with a sticky error.
Every host wait, counter-event wait, fence and pending worker task must then raise an error
naming that failure within a second, nothing may hang, and new work must refuse clearly.

Each scenario runs in its own process (the context cannot be used again afterwards), once per
AtomicEvent path the device offers."""

from __future__ import annotations

import json
import threading
import time

import pytest
from _subproc import run_python

SCENARIO = r"""
import json, os, sys, threading, time
import torch
import cudaevents as ce

out = {}
torch.cuda.init()
ts = torch.cuda.Stream()
s = ce.as_stream(ts)
counter = ce.AtomicEvent(0)
value_event = ce.Event(0)
fence = ce.Fence(0)
worker = ce.Worker()
ran = []
host_blocked = ce.AtomicEvent(0)  # signalled by the GPU after the failure: never
blocked_counter_waiter = {}

def wait_in_thread():
    t0 = time.monotonic()
    try:
        host_blocked.wait(1, timeout=10)
        blocked_counter_waiter["outcome"] = "no error"
    except Exception as exc:
        blocked_counter_waiter["outcome"] = f"{type(exc).__name__}: {exc}"
    blocked_counter_waiter["seconds"] = time.monotonic() - t0

waiter = threading.Thread(target=wait_in_thread)
waiter.start()
time.sleep(0.2)  # the waiter is asleep in its wait before anything fails

with torch.cuda.stream(ts):
    x = torch.zeros(4, device="cuda")
    index = torch.tensor([1 << 20], device="cuda")
    torch.cuda._sleep(50_000_000)  # the GPU is busy while everything below is enqueued
    x[index] = 1.0                   # out of bounds: a device-side assert
# all of this sits behind the failing kernel
host_blocked.signal(1, s)
counter.signal(1, s)
value_event.signal(s)
fence.update(s)
recorded = ce.CudaEvent(0).record(s)
worker.add_task(ran.append, "task ran")
worker.commit(s)

def attempt(name, fn):
    t0 = time.monotonic()
    try:
        fn()
        outcome = "no error"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    out[name] = {"outcome": outcome, "seconds": time.monotonic() - t0}

attempt("CudaEvent.synchronize", lambda: recorded.synchronize(timeout=10))
attempt("AtomicEvent.wait", lambda: counter.wait(1, timeout=10))
attempt("Event.wait", lambda: value_event.wait(timeout=10))
attempt("Fence.wait", lambda: fence.wait(timeout=10))
attempt("GpuStream.synchronize", lambda: s.synchronize(timeout=10))
attempt("Worker.synchronize", lambda: worker.synchronize(timeout=10))
waiter.join(timeout=15)
out["AtomicEvent.wait in another thread"] = dict(blocked_counter_waiter)
out["worker errors"] = [f"{type(e).__name__}: {e}" for e in worker.errors]
out["tasks run"] = ran
# new work after the failure
attempt("new CudaEvent.record", lambda: ce.CudaEvent(0).record(s))
attempt("new AtomicEvent.signal on the stream", lambda: ce.AtomicEvent(0).signal(1, s))
attempt("Worker.close", lambda: worker.close(timeout=10))
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # the context is gone; skip interpreter teardown of torch's state
"""

STICKY = ("CUDA_ERROR_ASSERT", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_ILLEGAL_ADDRESS")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["mem64", "mem32", "hostfn"])
def test_a_failed_context_fails_every_waiter_quickly(backend):
    pytest.importorskip("torch")
    outcome = run_python(SCENARIO, timeout=120, env={"CUDAEVENTS_ATOMIC_BACKEND": backend})
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
class StuckGpuCell:
    """A GPU counter cell behind failed work: its stream signals never land."""

    name = "stuck"
    limit = 1 << 63
    gpu = True

    def __init__(self):
        self.word = 0

    def read(self):
        return self.word

    def store(self, value):
        self.word = value

    def gpu_signal(self, stream, value):
        pass  # behind the failed kernel: never happens

    def gpu_wait(self, stream, value):
        pass

    def release_waiters(self):
        self.word = self.limit - 1

    def retire(self, fences):
        pass


def test_host_waits_notice_a_failed_stream_within_a_second(monkeypatch):
    from cudaevents import AtomicEvent, CudaError
    from cudaevents._core import cuda_event as _event
    from cudaevents._core import driver
    from cudaevents._core.streams import GpuStream
    from cudaevents._sync import atomic_event as _atomic
    from cudaevents._sync import counter_storage

    class Fence:  # what close() records on the streams the counter was used on
        def __init__(self, device):
            pass

        def record(self, stream):
            return self

    context_failed = threading.Event()
    monkeypatch.setattr(_atomic, "resolve_device_index", lambda d: int(d))
    monkeypatch.setattr(counter_storage, "choose_backend", lambda index: "stuck")
    monkeypatch.setattr(counter_storage, "make_cell", lambda backend, device: StuckGpuCell())
    monkeypatch.setattr(driver, "as_stream_handle", lambda value: value)
    monkeypatch.setattr(_event, "CudaEvent", Fence)
    monkeypatch.setattr(driver, "NOT_READY", 600)
    stream_error = [710]  # CUDA_ERROR_ASSERT: sticky
    monkeypatch.setattr(driver, "cuStreamQuery", lambda h: (stream_error[0],) if context_failed.is_set() else (600,))
    s = GpuStream._borrow(0x10, 0, None)
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
    context_failed.set()
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
    stream_error[0] = 400
    other = AtomicEvent(0)
    other.signal(1, s)
    with pytest.raises(TimeoutError):
        other.wait(1, timeout=0.3)
    other.close()
