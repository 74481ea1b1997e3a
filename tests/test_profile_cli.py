"""``cudaevents profile``: argument handling, and profiling scripts that declare regions on
CpuStreams through ``cudaevents.profile_timer()`` (no GPU, no torch needed).

End-to-end runs go through subprocesses (``python -m cudaevents profile ...``) with
CUDA_VISIBLE_DEVICES="" so that they hold on a GPU machine too; a few run in-process through
``main()`` to check what the runner restores.
"""

from __future__ import annotations

import json
import sys

import pytest
from helpers.subproc import NO_GPU, ROOT, SCRIPTS, run_cli

import cudaevents
from cudaevents import Results
from cudaevents._cli.main import main


def profile(*args, cwd=ROOT, timeout=120):
    """``python -m cudaevents profile ARGS`` where no GPU is usable."""
    return run_cli("profile", *args, timeout=timeout, env=NO_GPU, cwd=cwd)


@pytest.fixture
def script():
    """tests/scripts/profiled/regions.py: regions on two CpuStreams."""
    return SCRIPTS / "profiled" / "regions.py"


# -- arguments -------------------------------------------------------------------------------
def test_missing_script_exits_2_with_a_clear_message(tmp_path):
    r = profile(tmp_path / "no_such_script.py")
    assert r.returncode == 2
    assert "can't open file" in r.stderr and "no_such_script.py" in r.stderr
    assert "No such file or directory" in r.stderr
    assert r.stdout == ""


def test_no_script_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "the script to run is missing" in err and "usage: cudaevents profile" in err


def test_a_directory_is_not_a_script(tmp_path, capsys):
    assert main(["profile", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--progress", "-1"], ["--progress", "nan"], ["--timeout", "0"],
                                    ["--timeout", "inf"], ["--progress", "soon"]])
def test_bad_option_values_are_usage_errors(option, script, capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile", *option, str(script), "1"])
    assert info.value.code == 2
    assert "usage: cudaevents profile" in capsys.readouterr().err


def test_help_describes_the_options_and_the_timer(capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--json PATH", "--trace PATH", "--no-layers", "--backward", "--progress SECONDS",
                   "--timeout SECONDS", "SCRIPT [ARGS ...]", "profile_timer()"):
        assert option in text


def test_top_level_help_lists_profile(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "profile" in capsys.readouterr().out


# -- profiling -------------------------------------------------------------------------------
def test_profile_prints_summary_and_exports(script, tmp_path):
    out_json, out_trace = tmp_path / "results.json", tmp_path / "trace.json"
    # everything after the script is the script's, options that look like ours included
    r = profile("--json", out_json, "--trace", out_trace, "--no-layers", script, 5, "--json", "theirs")
    assert r.returncode == 0, r.stderr
    assert "script argv: ['5', '--json', 'theirs']" in r.stdout
    assert "torch imported: False" in r.stdout
    summary = r.stdout.split("torch imported: False", 1)[1]
    assert "load" in summary and "step" in summary
    assert not (tmp_path / "theirs").exists()

    data = json.loads(out_json.read_text())
    assert data["format"] == "cudaevents.results"
    assert {n: s["count"] for n, s in data["summary"].items()} == {"load": 5, "step": 5}
    results = Results.from_json(str(out_json))
    assert len(results) == 10
    assert all(s.device == -1 and s.duration_ms > 0 for s in results.samples)
    assert min(results.durations("load")) >= 1.5  # each load region ran a 2 ms sleep

    trace = json.loads(out_trace.read_text())
    tracks = {e["args"]["name"]: e["tid"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert sorted(tracks) == ["CPU stream loader", "CPU stream worker"]
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 10
    assert {e["tid"] for e in spans if e["name"] == "load"} == {tracks["CPU stream loader"]}
    assert {e["tid"] for e in spans if e["name"] == "step"} == {tracks["CPU stream worker"]}


def test_script_runs_as_main_from_its_own_directory(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    path = tmp_path / "uses_helper.py"
    path.write_text("import helper_mod, sys\nprint('name', __name__, helper_mod.VALUE, sys.argv)\n")
    r = profile(path.name, "a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"name __main__ 42 ['{path.name}', 'a']" in r.stdout
    assert "no regions collected" in r.stdout


def test_script_that_raises_prints_traceback_and_summary_and_exits_1(script):
    r = profile(script, 3, "--raise")
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert "ValueError: the script failed" in r.stderr
    assert "runpy" not in r.stderr and "_profile.py" not in r.stderr  # only the script's frames
    assert "the script raised ValueError" in r.stdout
    after = r.stdout.split("the script raised ValueError", 1)[1]
    assert "load" in after and "step" in after


def test_script_exit_status_is_kept(script, tmp_path):
    out_json = tmp_path / "r.json"
    r = profile("--json", out_json, script, 2, "--exit")
    assert r.returncode == 3
    assert {n: s.count for n, s in Results.from_json(str(out_json)).summary().items()} == {"load": 2, "step": 2}


def test_progress_lines_on_long_runs_only(script):
    r = profile("--progress", "0.2", script, 1, "--sleep")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "regions so far" in ln]
    assert lines and "2 regions so far" in lines[-1]
    quiet = profile(script, 1)  # default: a line every 10 s, none for a short run
    assert quiet.returncode == 0 and "regions so far" not in quiet.stderr


def test_in_process_run_restores_argv_path_and_timer(script, capsys):
    argv, path0 = list(sys.argv), sys.path[0]
    outside = cudaevents.profile_timer()
    assert cudaevents.profile_timer() is outside  # one process-wide timer outside a run
    assert main(["profile", "--progress", "0", str(script), "2"]) == 0
    out = capsys.readouterr().out
    assert "script argv: ['2']" in out and "load" in out
    assert sys.argv == argv and sys.path[0] == path0
    assert cudaevents.profile_timer() is outside
    assert len(outside.results(timeout=10)) == 0  # the run's regions went to its own timer


def test_unwritable_export_path_fails_after_the_summary(script, tmp_path):
    r = profile("--json", tmp_path / "missing_dir" / "r.json", script, 1)
    assert r.returncode == 1
    assert "cannot write results" in r.stderr
    assert "load" in r.stdout


# -- under a launcher of several ranks (torchrun sets RANK and WORLD_SIZE) ------------------------
def test_a_rank_of_a_multi_rank_run_without_torch_writes_its_own_files(script, tmp_path):
    """With no gather possible (no torch here; with torch, no rendezvous address in the
    environment) there is no cross-rank report: the rank says why, shows no summary unless it
    is rank 0, and names its files after its rank (the real gather: tests/test_gpu_ranks.py)."""
    env = dict(NO_GPU, RANK="1", WORLD_SIZE="2", MASTER_ADDR="", MASTER_PORT="")
    r = run_cli("profile", "--json", str(tmp_path / "out.json"), "--trace", str(tmp_path / "trace.json"),
                script, "2", timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r
    assert ("torch is not installed: no cross-rank report" in r.stderr
            or "cannot gather the ranks' timings" in r.stderr), r
    assert "load" not in r.stdout  # rank 1 leaves the summary to rank 0
    assert Results.from_json(str(tmp_path / "out.rank1.json")).names() == ["load", "step"]
    assert json.loads((tmp_path / "trace.rank1.json").read_text())["traceEvents"]


def test_top_tree_and_match_shape_the_summary(script):
    r = profile("--top", "1", "--match", "s*", script, "2")
    assert r.returncode == 0, r
    assert "step" in r.stdout and "load" not in r.stdout.split("script argv")[-1]
    bad = profile("--top", "0", script, "2")
    assert bad.returncode == 2 and "--top must be at least 1" in bad.stderr
