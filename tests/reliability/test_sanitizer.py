"""The library's own GPU paths under NVIDIA's compute-sanitizer (memcheck), which reports every
CUDA API call that returns an error: a program profiled or synchronized with cudaevents must
not show errors that are not its own. Covered here: Timer regions harvested while the GPU lags
behind them (the harvest must not read elapsed times of unfinished pairs), and a counter of
each GPU backend collected in a reference cycle after GPU waits and signals (its events must
be fenced, not handed back twice). Regressions of both were found with the tool."""

from __future__ import annotations

import pytest
from _subproc import run_python
from test_exit import LATCH, _sanitizer

SCENARIO = LATCH + r'''
import gc, os, time
import cudaevents as ce
from cudaevents._sync import counter_storage

s = ce.GpuStream(0)
timer = ce.Timer(harvest_every=16)
with timer.region("first", s):            # the reference event, then a finished region
    pass
timer.synchronize(timeout=30)
block(s)                                  # the device releases it LATCH_RELEASE_SECONDS from now
for i in range(300):
    with timer.region("behind the latch", s):
        pass
    if i % 50 == 0:
        timer.harvest()                   # nothing has finished yet
assert timer.pending == 300, timer.pending
assert len(timer.results(timeout=60)) == 301

for backend in ("mem64", "mem32", "hostfn"):
    os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = backend
    t = ce.GpuStream(0)
    a = ce.AtomicEvent(0)
    assert a.backend == backend, a.backend
    a.wait(1, t)
    a.signal(1)
    a.signal(2, t)
    a.wait(2, timeout=30)
    box = {"counter": a}
    box["box"] = box
    del a, box
    gc.collect()
    t.synchronize(timeout=30)
deadline = time.monotonic() + 30
while len(counter_storage._quarantine) and time.monotonic() < deadline:
    counter_storage._quarantine.reclaim()
    time.sleep(0.01)
assert len(counter_storage._quarantine) == 0, "quarantined resources never came back"
print("ready", flush=True)
'''


@pytest.mark.gpu
def test_library_paths_report_no_errors_under_compute_sanitizer():
    """Exit code 0, the scenario's checks passed, and memcheck's summary reports 0 errors."""
    tool = _sanitizer()
    if tool is None:
        pytest.skip("compute-sanitizer not found (on PATH or at /usr/local/cuda/bin); install the CUDA toolkit")
    out = run_python(SCENARIO, timeout=300, env={"LATCH_RELEASE_SECONDS": "2"},
                     prefix=(tool, "--tool", "memcheck", "--error-exitcode", "99"))
    assert out.returncode == 0, out
    assert "ready" in out.stdout, out
    assert "ERROR SUMMARY: 0 errors" in out.stdout + out.stderr, out
