"""Our own stress suite: tests/scripts/stress.py runs a seeded random mix of the whole public API
from several threads (CPU streams, counters, value events, fences, workers, timers, pools,
objects dropped in reference cycles, closes racing waits, misuse; on a GPU also GPU streams
created and destroyed, CUDA events of every flag set, counters and events on GPU streams,
benchmark()) on data whose final values prove ordering, and accounts for everything at the end.
It runs in a subprocess with a hard timeout; a hang becomes a failure with every thread's stack.

- CI: the CPU mode (no GPU, host counters) for a few seeds, and the GPU half on the simulated
  GPU of tests/helpers/stress_sim.py; the report of a failing seed (its replay line) and the
  watchdog (an injected hang ends within its bound, with stacks) are checked too.
- GPU (``gpu`` marker): the GPU mode for ``CUDAEVENTS_STRESS_SECONDS`` (default 60) per seed, on
  the seeds of ``CUDAEVENTS_STRESS_SEEDS`` (default "1,2,3,4,5"), for every counter backend.

A failing run prints its seed, the failure, the last operations of every thread and the command
line that replays it (``python tests/scripts/stress.py --seed N ...``).
"""

from __future__ import annotations

import json
import os

import pytest
from helpers.subproc import NO_GPU, run_script

CI_SEEDS = [1, 2, 3]
CI_SECONDS = 5
SIM_SEEDS = [1, 2]
SIM_SECONDS = 3
GPU_SECONDS = float(os.environ.get("CUDAEVENTS_STRESS_SECONDS", "60"))
GPU_SEEDS = [int(s) for s in os.environ.get("CUDAEVENTS_STRESS_SEEDS", "1,2,3,4,5").split(",") if s.strip()]
GPU_BACKENDS = ["mem64", "mem32", "hostfn"]
MARGIN = 150  # past the run and its stall bound: the script's own hard bound is 120 s past them


def stress(*args, seconds: float, env=None, stall: float | None = None):
    """Run the script; returns (outcome, summary dict or None). The subprocess is killed only
    after the script's own bound (seconds + stall + 120 s, then faulthandler dumps every stack
    and exits), so a hang always shows its stacks."""
    argv = ["--seconds", str(seconds), *map(str, args)]
    if stall is not None:
        argv += ["--stall", str(stall)]
    default_stall = 60 if "gpu" in argv else 30
    bound = seconds + (stall or default_stall) + MARGIN
    out = run_script("stress.py", *argv, timeout=bound, env=env)
    summary = None
    for line in out.stdout.splitlines():
        if line.startswith("STRESS-SUMMARY "):
            summary = json.loads(line[len("STRESS-SUMMARY "):])
    return out, summary


def check_ok(out, summary, seed):
    assert out.returncode == 0, out
    assert summary is not None, out
    assert summary["seed"] == seed
    assert summary["ops_total"] > 0 and summary["misuse_caught"] > 0, summary
    for name, stats in summary["pools"].items():
        if isinstance(stats, dict) and name != "default":
            assert stats["live"] == 0 and stats["creates"] == stats["destroys"] + stats["cached"], (name, stats)
    # the one human line, for the log of the test run
    print(next(line for line in out.stdout.splitlines() if line.startswith("stress: ok")))
    print("ops:", summary["ops"])
    print("misuse:", summary["misuse_caught"], "pools:", summary["pools"])


# -- CI ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(CI_SECONDS + 30 + MARGIN + 30)
@pytest.mark.parametrize("seed", CI_SEEDS)
def test_stress_cpu(seed):
    """The CPU mix (host counters, no GPU) survives a seed: exit 0, everything accounted for."""
    out, summary = stress("--seed", seed, "--mode", "cpu", seconds=CI_SECONDS, env=NO_GPU)
    check_ok(out, summary, seed)
    assert summary["backend"] == "host"
    for op in ("chain_stream_wait", "racy_close", "junk_cycle", "poison", "worker_commit", "timer_regions"):
        assert summary["ops"].get(op, 0) > 0, (op, summary["ops"])


@pytest.mark.timeout(SIM_SECONDS + 30 + MARGIN + 30)
@pytest.mark.parametrize("path", ["compiled", "pure"])
@pytest.mark.parametrize("seed", SIM_SEEDS)
def test_stress_simulated_gpu(seed, path):
    """The GPU half of the mix on the simulated GPU (mem64 counters), on the compiled hot path
    (calling the simulation through its C entry points) and on the pure-Python one: exit 0, and
    the simulated driver's live events match what the pools account for."""
    from cudaevents._core import compiled

    if path == "compiled" and compiled._hot is None:
        pytest.skip(compiled._missing)
    out, summary = stress("--seed", seed, "--mode", "sim", seconds=SIM_SECONDS,
                          env={"CUDAEVENTS_PURE_PYTHON": "1" if path == "pure" else "0"})
    check_ok(out, summary, seed)
    assert summary["hot_path"].startswith("compiled (" if path == "compiled" else "pure Python"), summary["hot_path"]
    assert path == "pure" or summary["hot_path"] == "compiled (cudaevents._core._hot)", summary["hot_path"]
    assert summary["pools"]["sim native events alive"] >= 0
    for op in ("gpu_chain_gpu_wait", "cuda_event_churn", "gpu_stream_churn", "gpu_close_pending"):
        assert summary["ops"].get(op, 0) > 0, (op, summary["ops"])


@pytest.mark.timeout(20 + 30 + MARGIN + 30)
def test_a_failing_seed_is_reported_with_its_replay_line():
    """An injected ordering failure (a signal given before its data) ends the run with exit 1,
    the seed, the failure, every thread's last operations and a command line that replays it."""
    out, summary = stress("--seed", 7, "--mode", "cpu", "--threads", 4, "--self-test-fail", seconds=20, env=NO_GPU)
    assert out.returncode == 1, out
    assert summary is None, out
    text = out.stdout
    assert "STRESS FAILURE: seed=7" in text, out
    assert "ORDERING" in text and "is not there" in text, out
    assert "last" in text and "operations of w1" in text, out
    replay = [line for line in text.splitlines() if line.startswith("replay: ")]
    assert replay, out
    assert "stress.py --seed 7 " in replay[0] and "--mode cpu" in replay[0] and "--self-test-fail" in replay[0], replay
    assert out.seconds < 20, out  # reported at once, not at the end of the run


@pytest.mark.timeout(30 + 3 + MARGIN + 30)
def test_the_watchdog_turns_a_hang_into_a_failure_with_stacks():
    """A thread that stops making progress (an injected deadlock on a lock it holds) ends the run
    within the stall bound with exit 3 and every thread's stack, never a silent hang."""
    stall = 3
    out, summary = stress("--seed", 5, "--mode", "cpu", "--threads", 4, "--self-test-hang", seconds=30,
                          env=NO_GPU, stall=stall)
    assert out.returncode == 3, out
    assert "STRESS HANG: seed=5" in out.stdout and "made no progress" in out.stdout, out
    assert "replay: " in out.stdout and "--self-test-hang" in out.stdout, out
    assert "inject_hang" in out.stderr and "Thread 0x" in out.stderr, out  # faulthandler's stacks
    assert out.seconds < 0.5 + stall + 15, out  # the injected hang begins at 0.5 s


# -- GPU --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.timeout(GPU_SECONDS + 60 + MARGIN + 30)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("seed", GPU_SEEDS)
def test_stress_gpu(seed, backend):
    """The whole mix on GPU 0 for CUDAEVENTS_STRESS_SECONDS, per seed and counter backend."""
    out, summary = stress("--seed", seed, "--mode", "gpu", "--backend", backend, seconds=GPU_SECONDS,
                          env={"CUDAEVENTS_ATOMIC_BACKEND": backend})
    check_ok(out, summary, seed)
    assert summary["backend"] == backend, summary
