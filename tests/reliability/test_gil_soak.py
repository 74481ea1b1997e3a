"""GIL and driver locks under load: the main thread keeps calling CUDA (enqueuing work, recording
events, waiting across streams, synchronizing streams in the driver with the GIL released,
closing events into a pool capped at 2 so handles are destroyed all along) while a Worker runs
10,000 Python tasks committed behind GPU work on four streams, some of which call CUDA
themselves. Nothing may deadlock: the scenario runs for ``CUDAEVENTS_SOAK_SECONDS`` (default
120) and until every task ran, in a subprocess killed at soak + 60 s; if it stalls, Python's
faulthandler prints every thread's stack first. Every task must run exactly once, in commit
order, and no error may occur. The scenario is tests/scripts/gil_soak.py."""

from __future__ import annotations

import json
import os

import pytest
from helpers.subproc import run_script

SOAK = float(os.environ.get("CUDAEVENTS_SOAK_SECONDS", "120"))
TASKS = 10_000


@pytest.mark.gpu
@pytest.mark.timeout(SOAK + 180)
def test_gil_soak_worker_and_main_thread_cuda():
    """10,000 Worker tasks behind GPU work while the main thread keeps calling CUDA: no
    deadlock, each task once and in order, no errors, the child exits 0."""
    out = run_script("gil_soak.py", TASKS, timeout=SOAK + 60)
    assert out.returncode == 0, out
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out
    result = json.loads(lines[-1])
    assert result["ran"] == TASKS, result
    assert result["in_order"], result
    assert result["errors"] == [], result
    assert result["destroys"] > 0, result   # the cap really destroyed handles along the way
    assert out.stderr == "", out
