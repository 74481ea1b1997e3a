"""Cross-rank timing on one GPU: 2 and 4 gloo ranks (torch.multiprocessing spawn) timing real
kernels, one rank slowed on purpose; and ``cudaevents profile`` under torchrun. Needs torch
with CUDA; one rank per GPU over NCCL belongs to the multi-GPU tests."""

from __future__ import annotations

import json
import socket

import pytest
from helpers.subproc import ROOT, SCRIPTS, run, run_script

from cudaevents import RankReport

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("world, slow", [(2, 1), (4, 2)])
def test_the_slowed_rank_is_flagged_and_the_trace_has_a_track_per_rank(world, slow):
    r = run_script("ranks/timed_ranks.py", str(world), str(slow), timeout=240)
    assert r.returncode == 0, r
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{world} ranks:\n{out['table']}")
    times = out["gather_1000_names"]
    print("gather of 1,000 region names, per rank: "
          + ", ".join(f"rank {i}: {s * 1e3:.2f} ms, {n:,} bytes" for i, (s, n) in enumerate(times)))
    print(f"clock error bound per rank (us): {out['clock_error_us']}")
    assert out["stragglers"] == [slow]
    assert out["periodic"] == [[slow]] * 3  # every 4 of 12 steps, the windows say so too
    assert out["trace_pids"] == list(range(world))
    assert {f"only on rank {i}" for i in range(world)} <= set(out["regions"])  # kept, not dropped
    assert all(e < 1000 for e in out["clock_error_us"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_profile_under_torchrun_prints_the_cross_rank_report_on_rank_0(tmp_path):
    script = SCRIPTS / "ranks" / "profiled_model.py"
    r = run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
             "-m", "cudaevents", "profile", "--json", str(tmp_path / "profile.json"),
             "--trace", str(tmp_path / "trace.json"), str(script)], timeout=240, cwd=ROOT)
    assert r.returncode == 0, r
    assert "rank 0 of 2 done" in r.stdout and "rank 1 of 2 done" in r.stdout
    report = RankReport.from_json(str(tmp_path / "profile.json"))
    assert report.ranks == [0, 1]
    first_linear = [row for row in report.regions() if row["name"].split(".")[-1] == "0"]
    assert first_linear and first_linear[0]["max_rank"] == 1, report.table()  # four times the batch
    assert 1 in report.stragglers() and 0 not in report.stragglers()
    assert (tmp_path / "profile.rank0.json").exists() and (tmp_path / "profile.rank1.json").exists()
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert sorted({e["pid"] for e in trace["traceEvents"]}) == [0, 1]
    print(f"\n{report.table()}")
