"""Host synchronizes of CudaEvent, GpuStream and IpcEvent: in the driver by default, polled as
a wait policy says when one is given (what a latency-bound caller passes: ``"spin"``), with a
timeout or without, and a bad policy refused before anything waits."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

import cudaevents as ce

TIMEOUT = 30.0


def _run_later(fake, stream, delay: float = 0.05) -> threading.Thread:
    """Complete ``stream``'s work from another thread after ``delay`` seconds."""
    t = threading.Thread(target=lambda: (time.sleep(delay), fake.run(stream)), daemon=True)
    t.start()
    return t


def _recorded(fake, interprocess: bool = False):
    s = ce.GpuStream(0)
    fake.enqueue_work(s)
    return s, ce.CudaEvent(0, interprocess=interprocess).record(s)


def _sync_calls(fake) -> int:
    return fake.calls["cuEventSynchronize"] + fake.calls["cuStreamSynchronize"]


def test_without_a_policy_or_timeout_the_driver_waits(fake_driver):
    s, event = _recorded(fake_driver)
    _run_later(fake_driver, s).join(TIMEOUT)
    event.synchronize()
    s.synchronize()
    assert fake_driver.calls["cuEventSynchronize"] == 1 and fake_driver.calls["cuStreamSynchronize"] == 1


@pytest.mark.timeout(30)  # bounds the first wait below, which is given no timeout on purpose
@pytest.mark.parametrize("policy", ["spin", "yield", "sleep", ce.WaitPolicy(spin=1e-3, yield_for=0.0)])
def test_a_policy_polls_until_the_gpu_gets_there(fake_driver, policy):
    s, event = _recorded(fake_driver)
    before = _sync_calls(fake_driver)
    waker = _run_later(fake_driver, s)
    start = time.monotonic()
    event.synchronize(policy=policy)
    assert time.monotonic() - start >= 0.04  # it waited for the run, not for nothing
    assert event.query()
    waker.join(TIMEOUT)
    fake_driver.enqueue_work(s)
    _run_later(fake_driver, s)
    s.synchronize(timeout=TIMEOUT, policy=policy)
    assert s.query()
    assert _sync_calls(fake_driver) == before  # polled with queries, never the driver's blocking wait


def test_a_polled_wait_still_times_out(fake_driver):
    s, event = _recorded(fake_driver)
    with pytest.raises(TimeoutError, match=r"CudaEvent.synchronize\(\) did not complete within 0.05 s"):
        event.synchronize(timeout=0.05, policy="spin")
    with pytest.raises(TimeoutError, match=r"GpuStream.synchronize\(\) did not complete within 0.05 s"):
        s.synchronize(timeout=0.05, policy="yield")
    fake_driver.run(s)


def test_a_received_interprocess_event_polls_as_told(fake_driver):
    s, event = _recorded(fake_driver, interprocess=True)
    received = pickle.loads(pickle.dumps(event.ipc_handle()))
    with pytest.raises(TimeoutError, match=r"IpcEvent.synchronize\(\) did not complete within 0.05 s"):
        received.synchronize(timeout=0.05, policy="spin")
    waker = _run_later(fake_driver, s)
    received.synchronize(timeout=TIMEOUT, policy="spin")
    assert received.query()
    waker.join(TIMEOUT)
    received.release()
    event.close()


def test_an_unknown_policy_is_refused_with_the_presets_named(fake_driver):
    s, event = _recorded(fake_driver, interprocess=True)
    received = pickle.loads(pickle.dumps(event.ipc_handle()))
    for sync in (event.synchronize, s.synchronize, received.synchronize):
        with pytest.raises(ValueError, match=r"unknown wait policy 'fast'; use one of \['block', 'sleep', 'spin', 'yield'\]"):
            sync(timeout=1, policy="fast")
        with pytest.raises(ValueError, match="unknown wait policy"):
            sync(policy="fast")  # refused also where the driver would wait
    assert _sync_calls(fake_driver) == 0
    fake_driver.run(s)
    received.release()
    event.close()
