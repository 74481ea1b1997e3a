"""A PyTorch device-side assert fails the GPU context while a host thread waits on a counter
and counters, an Event, a Fence, a CUDA event and a Worker commit wait behind the failing
kernel (the counter backend from CUDAEVENTS_ATOMIC_BACKEND). Prints one line, ``RESULT
{json}``: for each wait and each later use, its outcome and how long it took.

Run by tests/reliability/test_sticky_error.py."""

import json
import os
import threading
import time

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
    except Exception as exc:  # noqa: BLE001 - reported for the test
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
    except Exception as exc:  # noqa: BLE001 - reported for the test
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
