"""Interpreter exit with work in flight: a process that ends while events are live, Timer regions
pending, records queued behind a GPU stream that never gets going, Worker tasks queued behind
GPU and CPU streams, or CpuStream tasks still running, exits with code 0, prints nothing on
stderr, and does not hang. Pending GPU work is abandoned by the exit; cudaevents destroys no
handle then (the driver may be going away) and reports nothing.

Each scenario is a script in tests/scripts/exit, run many times in a fresh interpreter
(helpers.subproc), since exit races show up only now and then: ``RUNS`` times on a GPU,
``CPU_RUNS`` times for the CPU-only ones (``CUDAEVENTS_EXIT_RUNS`` overrides both), and the GPU
ones ``SANITIZER_RUNS`` times more under NVIDIA's compute-sanitizer
(``CUDAEVENTS_SANITIZER_RUNS``), whose summary must report 0 errors. The GPU scenarios hold
streams behind a latch that nobody releases (helpers.latch.Latch.for_exit).
"""

from __future__ import annotations

import os

import pytest
from helpers.subproc import memcheck_prefix, run_script

RUNS = int(os.environ.get("CUDAEVENTS_EXIT_RUNS", "20"))
CPU_RUNS = int(os.environ.get("CUDAEVENTS_EXIT_RUNS", "20"))
SANITIZER_RUNS = int(os.environ.get("CUDAEVENTS_SANITIZER_RUNS", "2"))
TIMEOUT = 60.0
SANITIZER_TIMEOUT = 300.0

# tests/scripts/exit/<name>.py
CPU_SCENARIOS = ["cpu_streams_running", "cpu_worker_queued", "host_atomic_pending"]
GPU_SCENARIOS = ["gpu_blocked_stream_records", "gpu_cpu_streams_running", "gpu_events_and_timer", "gpu_worker_queued"]


def _check_clean_exit(out) -> None:
    assert out.returncode == 0, out
    assert "ready" in out.stdout, out
    assert "must not run" not in out.stdout, out
    assert out.stderr == "", out


@pytest.mark.parametrize("run", range(CPU_RUNS))
@pytest.mark.parametrize("scenario", CPU_SCENARIOS)
def test_exit_cpu(scenario, run):
    """CPU-only work in flight at exit: exit code 0, nothing on stderr, no hang."""
    out = run_script(f"exit/{scenario}.py", timeout=TIMEOUT, env={"CUDAEVENTS_ATOMIC_BACKEND": "host"})
    _check_clean_exit(out)


@pytest.mark.gpu
@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("scenario", GPU_SCENARIOS)
def test_exit_gpu(scenario, run):
    """GPU work in flight at exit: exit code 0, nothing on stderr, no hang."""
    out = run_script(f"exit/{scenario}.py", timeout=TIMEOUT)
    _check_clean_exit(out)


# The latch's release under the tool: long after the scenario has printed "ready" and exited.
SANITIZER_LATCH_SECONDS = 5


@pytest.mark.gpu
@pytest.mark.parametrize("run", range(SANITIZER_RUNS))
@pytest.mark.parametrize("scenario", GPU_SCENARIOS)
def test_exit_gpu_under_compute_sanitizer(scenario, run):
    """The GPU scenarios under compute-sanitizer (memcheck): exit code 0, its summary reports
    0 errors, and nothing else on stderr."""
    prefix = memcheck_prefix()
    out = run_script(f"exit/{scenario}.py", timeout=SANITIZER_TIMEOUT,
                     env={"LATCH_RELEASE_SECONDS": str(SANITIZER_LATCH_SECONDS)}, prefix=prefix)
    assert out.returncode == 0, out
    assert "ready" in out.stdout, out
    report = out.stdout + out.stderr
    assert "ERROR SUMMARY: 0 errors" in report, out
    stray = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("=========")]
    assert stray == [], out
