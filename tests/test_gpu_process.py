"""Whole processes on a GPU: the CLI, and interpreter exit with work and handles alive."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def run(args, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_info_lists_devices_and_capabilities():
    import cudaevents

    r = run(["-m", "cudaevents", "info"])
    assert r.returncode == 0 and r.stderr == ""
    assert f"{cudaevents.device_count()} device(s)" in r.stdout
    assert cudaevents.Device(0).name in r.stdout
    assert "stream_mem_ops_64" in r.stdout and "driver CUDA version" in r.stdout


def test_cli_demo_shows_recycling():
    r = run(["-m", "cudaevents", "demo", "--iterations", "40"])
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = {line.split()[0] + " " + line.split()[1]: line.split() for line in r.stdout.splitlines() if line.startswith("recycling")}
    off, on = lines["recycling off"], lines["recycling on"]
    regions = int(off[2])
    assert regions == 40 * 4 * 2
    assert int(off[3]) >= 2 * regions  # every region created a pair
    assert int(on[3]) < int(off[3]) // 4
    assert "verified" in r.stdout


EXIT_SCRIPT = r"""
import cudaevents as ce, threading
live = [ce.CudaEvent(0, timing=True).record(ce.GpuStream(0)) for _ in range(10)]
for _ in range(10):
    ce.CudaEvent(0).close()  # cached
streams = [ce.GpuStream(0) for _ in range(3)]
cpu = ce.CpuStream()
gate = threading.Event()
cpu.enqueue(gate.wait, 30)
cpu.enqueue(print, end="")
pool = ce.EventPool(0)
capped = [ce.CudaEvent(0, pool=pool) for _ in range(5)]
"""

BLOCKED_SCRIPT = r"""
import sys
sys.path.insert(0, %r)
from conftest import Latch
import cudaevents as ce
s = ce.GpuStream(0)
latch = Latch()
latch.block(s)
events = [ce.CudaEvent(0).record(s) for _ in range(20)]
assert not events[-1].query()
"""


@pytest.mark.parametrize("script", ["live", "blocked"])
def test_exit_is_silent(script):
    code = EXIT_SCRIPT if script == "live" else BLOCKED_SCRIPT % os.path.dirname(os.path.abspath(__file__))
    for _ in range(3):
        r = run(["-c", code], timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
