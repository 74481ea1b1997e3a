"""The library's own GPU paths under NVIDIA's compute-sanitizer (memcheck), which reports every
CUDA API call that returns an error: a program profiled or synchronized with cudaevents must
not show errors that are not its own. Covered (tests/scripts/sanitizer_library_paths.py):
Timer regions harvested while the GPU lags behind them (the harvest must not read elapsed
times of unfinished pairs), and a counter of each GPU backend collected in a reference cycle
after GPU waits and signals (its events must be fenced, not handed back twice). Regressions of
both were found with the tool."""

from __future__ import annotations

import pytest
from helpers.subproc import memcheck_prefix, run_script


@pytest.mark.gpu
def test_library_paths_report_no_errors_under_compute_sanitizer():
    """Exit code 0, the scenario's checks passed, and memcheck's summary reports 0 errors."""
    prefix = memcheck_prefix()
    out = run_script("sanitizer_library_paths.py", timeout=300, env={"LATCH_RELEASE_SECONDS": "2"}, prefix=prefix)
    assert out.returncode == 0, out
    assert "ready" in out.stdout, out
    assert "ERROR SUMMARY: 0 errors" in out.stdout + out.stderr, out
