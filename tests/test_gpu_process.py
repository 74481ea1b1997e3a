"""Whole processes on a GPU: the CLI, and interpreter exit with work and handles alive."""

from __future__ import annotations

import pytest
from helpers.subproc import run_cli, run_script

pytestmark = pytest.mark.gpu


def test_cli_info_lists_devices_and_capabilities():
    import cudaevents

    r = run_cli("info", timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    assert f"{cudaevents.device_count()} device(s)" in r.stdout
    assert cudaevents.Device(0).name in r.stdout
    assert "stream_mem_ops_64" in r.stdout and "driver CUDA version" in r.stdout


def test_cli_demo_shows_recycling():
    r = run_cli("demo", "--iterations", "40", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = {line.split()[0] + " " + line.split()[1]: line.split() for line in r.stdout.splitlines() if line.startswith("recycling")}
    off, on = lines["recycling off"], lines["recycling on"]
    regions = int(off[2])
    assert regions == 40 * 4 * 2
    assert int(off[3]) >= 2 * regions  # every region created a pair
    assert int(on[3]) < int(off[3]) // 4
    assert "verified" in r.stdout


@pytest.mark.parametrize("script", ["live", "blocked"])
def test_exit_is_silent(script):
    name = "gpu_exit_live_handles.py" if script == "live" else "gpu_exit_blocked_records.py"
    for _ in range(3):
        r = run_script(name, timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
