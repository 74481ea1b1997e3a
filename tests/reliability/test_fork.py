"""fork() and CUDA: a child forked after its parent initialized CUDA gets a clear error (use the
'spawn' start method) from every cudaevents CUDA use, never a hang or a crash, and objects it
inherited from the parent are leaked, never destroyed through the driver, when it drops them.
A child forked before the parent's first CUDA use, and a 'spawn' child, use CUDA normally.
CPU-only parts created in the child (CpuStream, host-backend AtomicEvent, a Worker on CPU
streams) keep working there. After any fork (CUDA or not), a CpuStream or Worker created
before it has no thread in the child and refuses work and waits there with ClosedError; the
parent's counters (pinned memory) are never read or written by the child.

Each scenario is a script in tests/scripts/fork, run in a fresh interpreter
(helpers.subproc) that forks; the parent waits for the child with a deadline and kills it if
it hangs (helpers.forking). The CI tests simulate an initialized driver (helpers.fake_driver,
which records every call a forked child makes); the ``gpu`` tests use the real driver.
"""

from __future__ import annotations

import pytest
from helpers.subproc import run_script

TIMEOUT = 120.0


def _check(out, children: int = 1) -> None:
    assert out.returncode == 0, out
    assert out.stdout.count("parent: child exit code 0") == children, out
    assert out.stderr == "", out


def test_fork_after_init_refuses_cuda_and_leaks_inherited_objects():
    """The simulated parent initialized the driver and holds events (pooled and live), a
    stream, a Timer with pending regions and a Worker whose thread waits in the driver; the
    child gets the fork error from each CUDA use, drops everything without a driver call,
    and exits cleanly. The parent goes on using CUDA afterwards."""
    out = run_script("fork/after_init_refuses_cuda.py", timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: ok" in out.stdout, out
    assert out.stdout.count("parent: worker task ran") == 1, out
    assert "child: must not run" not in out.stdout, out


def test_fork_error_is_clear_at_the_top_level():
    """An unhandled use in the child shows the reason in its traceback."""
    out = run_script("fork/error_at_top_level.py", timeout=TIMEOUT)
    assert out.returncode == 0, out
    assert "CudaUnavailableError" in out.stderr and "'spawn' start method" in out.stderr, out
    assert "CUDA does not survive fork" in out.stderr, out


def test_fork_before_cuda_init_child_may_use_cuda():
    """The parent never initialized CUDA: the child is not refused and initializes it itself
    (here: binds the simulated driver and uses it)."""
    out = run_script("fork/before_cuda_init.py", timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout, out


def test_fork_after_failed_init_keeps_the_original_reason():
    """A parent that looked for CUDA and found none: the child reports that, not fork."""
    out = run_script("fork/after_failed_init.py", timeout=TIMEOUT)
    _check(out)


def test_fork_while_init_in_progress_is_refused():
    """A fork while another thread is inside cuInit: the child's driver state is half made,
    so it is refused too, and the lock that thread held does not hang the child."""
    out = run_script("fork/while_init_in_progress.py", timeout=TIMEOUT)
    _check(out)


def test_cpu_parts_work_in_a_forked_child():
    """After fork from a CUDA-initialized (simulated) parent, what the child creates on the
    CPU works: CpuStreams, host-backend AtomicEvents (CUDAEVENTS_ATOMIC_BACKEND=host, or no
    device given, since CUDA is unavailable there), Workers committing on CPU streams, CPU-stream
    Timer regions. A parent's idle CpuStream can be closed there."""
    out = run_script("fork/cpu_parts_in_child.py", timeout=TIMEOUT, env={"CUDAEVENTS_ATOMIC_BACKEND": "host"})
    _check(out)
    assert "child: ok" in out.stdout, out


def test_parent_cpu_stream_used_in_forked_child_is_refused():
    """A CpuStream or Worker made before fork has no thread in the child: using it there must
    raise rather than queue work that never runs."""
    out = run_script("fork/parent_cpu_stream_in_child.py", timeout=TIMEOUT)
    _check(out)


def test_parent_threads_refused_in_child_of_any_fork():
    """Threads never survive fork, whether or not CUDA was initialized (here it never was):
    every CpuStream and Worker made before the fork is closed in the child and refuses work
    and waits with a ClosedError naming the fork, at once; close() does nothing for one that
    had nothing left to run and raises for one that had. A stream closed before the fork is
    just closed. New ones made in the child work, and the parent's go on in the parent."""
    out = run_script("fork/parent_threads_in_child.py", timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: ok" in out.stdout, out


def test_locks_held_by_parent_threads_at_fork_do_not_hang_the_child():
    """Another thread of the parent holds the locks of a CpuStream, a Worker and the counter
    slab and quarantine across the fork: that thread does not exist in the child, which gets
    fresh locks and no hang."""
    out = run_script("fork/locks_held_at_fork.py", timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: stream ok" in out.stdout, out


def test_fork_from_a_stream_task_does_not_run_the_parents_queue_in_the_child():
    """A task of a CpuStream forks and the child returns from it: in the child that thread
    goes on, but it must stop rather than run the tasks queued behind (they are the parent's,
    which runs them once). The child then ends as its last thread does."""
    out = run_script("fork/from_a_stream_task.py", timeout=TIMEOUT)
    assert out.returncode == 0, out
    assert "parent: ok" in out.stdout, out


def test_fork_counter_cells_refused_and_parent_counter_untouched():
    """The simulated CUDA parent holds mem64 counters (slots of shared pinned memory, one
    back on the slab's free list) and a hostfn counter. In the child every read, store and
    stream operation of them is refused with the fork error and releasing or retiring them
    does nothing, so the parent's memory is never written; the slab is gone, so a new device
    counter needs the driver and is refused; host counters made there work."""
    out = run_script("fork/counter_cells.py", timeout=TIMEOUT)
    _check(out)
    assert "child: ok" in out.stdout and "parent: ok" in out.stdout, out


@pytest.mark.gpu
def test_gpu_fork_after_init_child_gets_clear_error():
    """A real parent initialized CUDA and recorded events; its forked child is refused every
    CUDA use with the fork error, drops the inherited objects, and exits without hanging.
    The parent keeps using CUDA afterwards."""
    out = run_script("fork/gpu_after_init.py", timeout=TIMEOUT)
    _check(out)
    for line in ("child: ok", "mp child: refused", "parent: ok", "parent: second task ran"):
        assert line in out.stdout, out
    assert "child: must not run" not in out.stdout, out


@pytest.mark.gpu
def test_gpu_fork_atomic_event_refused_and_parent_counter_untouched():
    """Counters live in pinned host memory shared with (or unmapped in) a forked child: the
    child must be refused a new device counter and any use of the parent's, and the parent's
    counter must keep its value."""
    out = run_script("fork/gpu_atomic_event.py", timeout=TIMEOUT)
    _check(out)


@pytest.mark.gpu
def test_gpu_spawn_child_uses_cuda():
    """multiprocessing's 'spawn' start method: a fresh interpreter that uses CUDA normally,
    while the parent has CUDA initialized."""
    out = run_script("fork/gpu_spawn_child.py", timeout=TIMEOUT)
    assert out.returncode == 0, out
    for line in ("spawn child: ok", "spawn child: worker task ran", "parent: ok"):
        assert line in out.stdout, out


def test_parent_counters_in_a_forked_child_neither_deadlock_nor_wait_for_dead_streams():
    out = run_script("fork/parent_counters_in_child.py", timeout=60, env={"CUDAEVENTS_ATOMIC_BACKEND": "host"})
    assert out.returncode == 0 and "child exit 0" in out.stdout, out
