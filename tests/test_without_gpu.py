"""Behaviour that needs no GPU: import, errors, the stream adapter's rejections, event misuse
caught before any driver call, and the CLI where CUDA is unavailable.

The CLI and import checks run in subprocesses with CUDA_VISIBLE_DEVICES="" so that they hold
on a GPU machine too (the driver then reports no device).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from helpers.fakes import NotAStream, StreamProtocol
from helpers.subproc import NO_GPU, run_cli, run_code, run_script

import cudaevents
from cudaevents import (
    ClosedError,
    CudaError,
    CudaEvent,
    EventPool,
    NotRecordedError,
    as_stream,
)


def test_import_and_availability_without_a_device():
    r = run_code("import cudaevents as c; print(c.is_available(), c.device_count())", env=NO_GPU)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.split() == ["False", "0"]


def test_gpu_needing_calls_raise_cuda_unavailable_with_the_reason():
    r = run_script("unavailable_reasons.py", env=NO_GPU)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert "no CUDA driver" in line or "found no GPU" in line


def test_cli_info_without_a_device():
    r = run_cli("info", env=NO_GPU)
    assert r.returncode == 0 and r.stderr == ""
    assert "cudaevents 0.1.0" in r.stdout
    assert "cuda-bindings" in r.stdout
    assert "CUDA unavailable:" in r.stdout


def test_cli_demo_without_a_device_shows_cpu_streams():
    r = run_cli("demo", env=NO_GPU)
    assert r.returncode == 0 and r.stderr == ""
    assert "No GPU here" in r.stdout
    assert "consume 2" in r.stdout and "synchronize() raised ValueError('bad batch')" in r.stdout


def test_cli_demo_processes_without_a_device_says_what_it_needs():
    r = run_cli("demo", "--processes", env=NO_GPU)
    assert r.stdout == "" and "Traceback" not in r.stderr
    try:
        import torch  # noqa: F401
    except ImportError:
        assert r.returncode == 2 and "needs PyTorch (pip install torch)" in r.stderr
    else:
        assert r.returncode == 1 and "needs a CUDA GPU" in r.stderr
    r = run_cli("demo", "--processes", "--consumers", "0", env=NO_GPU)
    assert r.returncode == 2 and "--consumers must be at least 1" in r.stderr
    r = run_cli("demo", "--processes", "--policy", "fast", env=NO_GPU)
    assert r.returncode == 2 and "invalid choice: 'fast'" in r.stderr and "'spin'" in r.stderr


def test_the_pipeline_says_whether_an_mps_daemon_would_serve_it(tmp_path, monkeypatch):
    from cudaevents._cli.pipeline import _mps_pipe

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert _mps_pipe() is None  # no daemon: each process gets its own context
    (tmp_path / "control").touch()
    assert _mps_pipe() == str(tmp_path)


def test_cli_usage():
    r = run_cli(env=NO_GPU)
    assert r.returncode == 2 and "info" in r.stdout and "demo" in r.stdout
    r = run_cli("demo", "--iterations", "0", env=NO_GPU)
    assert r.returncode == 2 and "at least 1" in r.stderr
    r = run_cli("frobnicate", env=NO_GPU)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_exit_with_cpu_streams_and_events_is_silent():
    for _ in range(5):
        r = run_script("cpu_exit_streams_and_events.py", env=NO_GPU)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_cuda_error_carries_its_code_and_pickles():
    err = CudaError("cuEventRecord", 400, "CUDA_ERROR_INVALID_HANDLE")
    assert isinstance(err, RuntimeError)
    assert (err.call, err.code, err.name) == ("cuEventRecord", 400, "CUDA_ERROR_INVALID_HANDLE")
    assert str(err) == "cuEventRecord failed with CUDA_ERROR_INVALID_HANDLE (400)"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CudaError and (back.call, back.code, back.name, str(back)) == (err.call, err.code, err.name, str(err))


def test_raise_error_uses_the_enum_name():
    class FakeCode(int):
        name = "CUDA_ERROR_LAUNCH_FAILED"

    with pytest.raises(CudaError, match=r"cuStreamSynchronize failed with CUDA_ERROR_LAUNCH_FAILED \(719\)"):
        cudaevents._core.driver.raise_error(FakeCode(719), "cuStreamSynchronize")


@pytest.mark.parametrize(
    "obj,exc,msg",
    [
        (NotAStream(), TypeError, "cannot use a"),
        ("stream", TypeError, "cannot use a"),
        (3.0, TypeError, "cannot use a"),
        (True, TypeError, "got a bool"),
        (12345, TypeError, "needs device="),
        (-1, ValueError, "non-negative"),
        (StreamProtocol((0,)), TypeError, "tuple"),
        (StreamProtocol([0, 1]), TypeError, "tuple"),
        (StreamProtocol((1, 12345)), ValueError, "protocol version 1"),
    ],
)
def test_as_stream_rejects_non_streams(obj, exc, msg):
    with pytest.raises(exc, match=msg):
        as_stream(obj)


def test_interprocess_with_timing_is_refused():
    with pytest.raises(ValueError, match="pass timing=False"):
        CudaEvent(interprocess=True, timing=True)


def test_unrecorded_event_misuse_is_caught_before_the_driver():
    ev = CudaEvent(timing=True)
    for op in (ev.wait, ev.query, ev.synchronize):
        with pytest.raises(NotRecordedError, match="never recorded"):
            op()
    with pytest.raises(NotRecordedError, match="start event was never recorded"):
        ev.elapsed_time(CudaEvent(timing=True))
    with pytest.raises(ValueError, match="create both events with timing=True"):
        ev.elapsed_time(CudaEvent())
    with pytest.raises(TypeError, match="end CudaEvent"):
        ev.elapsed_time(1.0)
    assert ev.device is None and ev.handle is None and not ev.recorded


def test_closed_event_is_refused_and_close_is_idempotent():
    ev = CudaEvent()
    ev.close()
    ev.close()
    assert ev.closed
    for op in (ev.record, ev.wait, ev.query, ev.synchronize):
        with pytest.raises((ClosedError, NotRecordedError)):
            op()
    with pytest.raises(ClosedError, match="Create a new CudaEvent"):
        ev.record()
    with pytest.raises(ClosedError):
        with ev:
            pass


def test_event_flags_are_reported():
    ev = CudaEvent(blocking_sync=True, interprocess=True)
    assert (ev.timing, ev.blocking_sync, ev.interprocess) == (False, True, True)
    assert CudaEvent(timing=True).timing


def test_event_with_a_custom_pool_needs_no_driver_until_bound(fake, fake_pool):
    ev = CudaEvent(pool=fake_pool)
    assert fake.created == []
    ev.close()
    assert fake_pool.stats().creates == 0


def test_event_acquires_eagerly_with_a_device_and_releases_on_drop(fake, monkeypatch):
    import cudaevents._core.cuda_event as event_module

    monkeypatch.setattr(event_module, "resolve_device_index", lambda d: int(d))
    pool = EventPool(create=fake.create, destroy=fake.destroy)
    ev = CudaEvent(1, timing=True, pool=pool)
    assert fake.created == [(1, 1, 0)]
    assert pool.stats().live == 1
    del ev
    assert pool.stats().live == 0 and pool.stats().cached == 1
    with CudaEvent(1, pool=pool) as ev2:
        assert pool.stats(1).live == 1
    assert ev2.closed and pool.stats().live == 0


def test_an_event_finalized_by_the_garbage_collector_then_resurrected_is_closed(fake, monkeypatch):
    """The collector runs every finalizer of a garbage cycle, also on objects that an earlier
    finalizer of that cycle has made reachable again: such an event must refuse use as closed
    (before, it kept _closed False and passed a NULL handle to the driver)."""
    import gc

    import cudaevents._core.cuda_event as event_module

    monkeypatch.setattr(event_module, "resolve_device_index", lambda d: int(d))
    pool = EventPool(create=fake.create, destroy=fake.destroy)
    ev = CudaEvent(0, pool=pool)
    ev._recorded = True  # as if recorded: the check must not depend on the driver
    saved = []

    class Owner:
        def __del__(self):  # resurrects the event, as AtomicEvent.close() fencing it would
            saved.append(self.ev)

    owner = Owner()
    owner.ev, owner.cycle = ev, owner
    del owner, ev
    gc.collect()
    (ev,) = saved
    assert pool.stats().live == 0  # its finalizer ran and gave the handle back
    assert ev.closed
    with pytest.raises(ClosedError):
        ev.query()


def test_timeouts_are_validated():
    ev = CudaEvent()
    with pytest.raises(TypeError, match="timeout"):
        cudaevents._core.wait.check_timeout("soon")
    with pytest.raises(ValueError, match="timeout"):
        cudaevents._core.wait.check_timeout(-0.5)
    assert cudaevents._core.wait.check_timeout(2) == 2.0
    ev.close()


def test_wait_until_times_out_promptly():
    import time

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="thing did not complete within 0.05 s"):
        cudaevents._core.wait.wait_until(lambda: False, 0.05, "thing")
    assert time.monotonic() - t0 < 0.05 + 0.05
    calls = iter([False, False, True])
    cudaevents._core.wait.wait_until(lambda: next(calls), 5, "thing")


def test_public_names_have_docstrings():
    for name in cudaevents.__all__:
        obj = getattr(cudaevents, name)
        assert obj.__doc__, name


def test_cli_output_into_a_closed_pipe_is_quiet():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for command in ("info", "demo"):
        p = subprocess.Popen([sys.executable, "-m", "cudaevents", command], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        p.stdout.close()  # before the child has printed anything: its first write hits EPIPE
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) == 141, err
        assert "Traceback" not in err
