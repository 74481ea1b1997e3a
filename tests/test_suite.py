"""The comparison suite without a GPU: ``cudaevents bench`` argument errors and its behaviour
where CUDA is unusable, that nothing but ``bench`` imports the suite, targets' pass/miss logic,
markdown/JSON rendering and plotting on a synthetic result, and the timing plumbing (the one
loop, rows, statistics, clean-up) on plain Python methods.

CLI checks that must not reach a driver run in subprocesses with CUDA_VISIBLE_DEVICES="", so
they hold on a GPU machine too.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import threading

import pytest
from helpers.subproc import PACKAGE_HOME

from cudaevents import CudaUnavailableError
from cudaevents._cli import main as _cli
from cudaevents._comparison import host as _suite_host
from cudaevents._comparison import latency as _suite_latency
from cudaevents._comparison import plumbing as _plumbing
from cudaevents._comparison import raw as _raw
from cudaevents._comparison import suite as _suite
from cudaevents._core import compiled, driver
from cudaevents._profiler.results import stats_of

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
ROOT = os.path.dirname(SRC)


def run_cli(*args, timeout=60):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(PACKAGE_HOME) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def ops_section(title, rows, **extra):
    return {"title": title, "what": "how", "columns": [["label", "method"], ["median_us", "median us/op"]],
            "rows": rows, "notes": [], "skipped": {}, "errors": {}, **extra}


def row(key, median_us, **extra):
    return {"key": key, "label": key.replace("_", " "), "ours": key.startswith("ours"), "median_us": median_us,
            **extra}


def synthetic(**overrides) -> dict:
    """A result shaped like run_suite's, with every target measured (all passing)."""
    sections = {
        "create_record": ops_section("New event + record", [
            row("ours_event", 1.0), row("ours_pool", 0.9), row("raw_create", 2.0), row("torch", 4.0),
            row("cupy", 3.5), row("cuda_core", 2.0), row("raw_record", 0.5)]),
        "timing_pairs": ops_section("Timing pairs", [row("ours", 5.0), row("raw_pooled", 4.0), row("torch", 20.0)]),
        "creations": ops_section("Native event creations", [
            row("ours", None, regions=100_000, creates=129, steady_creates=0, peak_in_flight=64,
                reference_events=1)]),
        "round_trip": ops_section("Round trip", [row("floor", 8.0), row("atomic_mem64_spin", 9.0)],
                                  info={"default_backend": "mem64"}),
        "worker": ops_section("Worker", [row("worker", 100.0), row("floor", 90.0)]),
    }
    result = {
        "schema": 1,
        "header": {"suite": "cudaevents bench", "mode": "quick", "device": {"index": 0, "name": "Test GPU 80GB",
                                                                            "compute_capability": "9.0"},
                   "devices": ["Test GPU 80GB"], "versions": {"cudaevents": "0.1.0", "cuda-bindings": "13.3.0"},
                   "platform": "Linux", "cpus": 16, "started_utc": "2030-01-01T00:00:00Z", "seconds": 12.5,
                   "config": {"batches": 3, "ops": 200}},
        "peers": {"torch": {"status": "ok", "version": "2.11.0"}, "cupy": {"status": "ok", "version": "14.2.0"},
                  "cuda.core": {"status": "ok", "version": "1.2.0"}},
        "sections": sections,
    }
    for path, value in overrides.items():
        section, key, field = path.split(".")
        for r in result["sections"][section]["rows"]:
            if r["key"] == key:
                r[field] = value
    return result


def statuses(result) -> dict:
    return {t["id"]: t["status"] for t in _suite.evaluate_targets(result)}


# -- command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--only", "nosuch"], "invalid choice: 'nosuch'"),
    (["--only"], "expected at least one argument"),
    (["--json", "/nonexistent-dir/r.json"], "the folder /nonexistent-dir does not exist"),
    (["--plot", "/nonexistent-dir/r.png"], "does not exist"),
    (["--quick", "extra"], "unrecognized arguments: extra"),
])
def test_bench_argument_errors(args, message):
    r = run_cli("-m", "cudaevents", "bench", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stdout == ""


def test_bench_without_a_device_says_why_and_exits_1():
    r = run_cli("-m", "cudaevents", "bench", "--quick", "--only", "keys")
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert "cudaevents bench needs a CUDA GPU, but CUDA is unusable here:" in r.stderr
    assert "no CUDA driver" in r.stderr or "found no GPU" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("script", ["suite.py", "sync_latency.py", "worker_latency.py"])
def test_benchmark_scripts_without_a_device_exit_1(script):
    r = run_cli(os.path.join(ROOT, "benchmarks", script))
    assert r.returncode == 1, r.stderr
    assert "needs a CUDA GPU, but CUDA is unusable here:" in r.stderr and "Traceback" not in r.stderr


def test_bench_is_listed_in_the_usage():
    r = run_cli("-m", "cudaevents", "--help")
    assert r.returncode == 0 and "bench" in r.stdout


def test_bench_help_lists_the_suite_sections():
    r = run_cli("-m", "cudaevents", "bench", "--help")
    assert r.returncode == 0, r.stderr
    assert "run only these measurements: " + ", ".join(_suite.SECTIONS) in " ".join(r.stdout.split())


@pytest.mark.parametrize("argv", [["info"], ["--version"], ["--help"], ["bench", "--json", "/nonexistent-dir/r.json"]])
def test_other_commands_do_not_import_the_comparison_suite(argv):
    code = (
        "import sys\n"
        "from cudaevents._cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('suite modules:', sorted(m for m in sys.modules if m.startswith('cudaevents._comparison')))\n"
    )
    r = run_cli("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "suite modules: []"


def test_only_the_bench_command_imports_the_suite():
    src = pathlib.Path(SRC, "cudaevents")
    imports = re.compile(r"^\s*(?:from|import)\s+[\w.]*_comparison\b", re.M)
    users = sorted(path.relative_to(src).as_posix() for path in src.rglob("*.py")
                   if path.parent.name != "_comparison" and imports.search(path.read_text()))
    assert users == ["_cli/main.py"]


def test_only_the_raw_baselines_take_the_bindings():
    takes = re.compile(r"\bdriver\.bindings\(|^\s*(?:from|import)\s+cuda\.bindings\b", re.M)
    folder = pathlib.Path(_suite.__file__).parent
    assert sorted(path.name for path in folder.glob("*.py") if takes.search(path.read_text())) == ["raw.py"]


def test_bench_writes_its_files_and_prints_the_report(monkeypatch, capsys, tmp_path):
    result = _suite._finite(synthetic())
    seen = {}

    def fake_run_suite(quick, only, progress):
        seen.update(quick=quick, only=only)
        progress("[1/1] something ...")
        return result

    monkeypatch.setattr(driver, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_suite, "run_suite", fake_run_suite)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    paths = {name: str(tmp_path / f"r.{name}") for name in ("json", "markdown", "plot")}
    rc = _cli.main(["bench", "--quick", "--only", "keys", "--only", "worker", "create_record",
                    "--json", paths["json"], "--markdown", paths["markdown"], "--plot", paths["plot"]])
    out, err = capsys.readouterr()
    assert rc == 0
    assert seen == {"quick": True, "only": ["keys", "worker", "create_record"]}
    assert out == _suite.to_markdown(result)
    assert "[1/1] something ..." in err
    assert f"wrote {paths['json']}" in err and f"wrote {paths['markdown']}" in err
    assert "matplotlib: not installed, no plot written" in err and not os.path.exists(paths["plot"])
    with open(paths["json"]) as f:
        assert json.load(f) == result
    with open(paths["markdown"]) as f:
        assert f.read() == out


def test_bench_stops_quietly_when_its_pipe_closes(tmp_path):
    saved = tmp_path / "result.json"
    saved.write_text(_suite.to_json(synthetic()))
    code = (
        "import json, sys\n"
        "from cudaevents._cli import main as _cli\nfrom cudaevents._comparison import suite as _suite\nfrom cudaevents._core import driver\n"
        "driver.unavailable_reason = lambda: None\n"
        f"_suite.run_suite = lambda quick, only, progress: json.load(open({str(saved)!r}))\n"
        "sys.exit(_cli.main(['bench']))\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(PACKAGE_HOME) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # before the child has printed anything: its first write hits EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert "Traceback" not in err


# -- every measurement against the simulated driver -------------------------------------------------
SIMULATED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from helpers.fake_driver import install

fake = install(keeps_up=True)  # a GPU that completes every record at once
fake.cuDeviceGetName = lambda n, dev: (0, b"Simulated GPU")
fake.cuDeviceTotalMem = lambda dev: (0, 1 << 30)
from cudaevents._comparison import suite
from cudaevents._core import driver


def no_host_functions(*args):
    raise RuntimeError("no host functions on the simulated GPU")


driver.launch_host_func = no_host_functions  # never into a real libcuda with simulated streams
suite._installed = lambda module: False  # no peers: they would look for a real GPU
print(suite.to_json(suite.run_suite(quick=True)))
"""


def test_every_measurement_runs_against_the_simulated_driver():
    """The suite's GPU code paths (wrappers, raw baselines, latches, clean-up) on the simulated
    driver of tests/helpers, in a process of its own: no GPU here, and none of its state may
    reach the other tests. Its timings mean nothing; what runs and what comes out does."""
    r = run_cli("-c", SIMULATED_RUN.format(tests=os.path.join(ROOT, "tests")), timeout=240)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    sections = result["sections"]
    assert list(sections) == list(_suite.SECTIONS)
    hostfn = {"atomic_hostfn_spin", "atomic_hostfn_sleep"}  # the simulation runs no host functions
    for name, section in sections.items():
        assert set(section["errors"]) <= hostfn, (name, section["errors"])
    assert set(sections["worker"]["skipped"]) == {"hostfn_bindings", "hostfn_ctypes"}
    keys = {name: [row["key"] for row in section["rows"]] for name, section in sections.items()}
    # where the compiled path runs, each of our host rows comes once more, on the pure-Python path
    both = compiled._hot is not None and os.environ.get("CUDAEVENTS_PURE_PYTHON", "") != "1"
    assert keys == {
        "create_record": ["ours_event", "ours_pool", *(["ours_event_py", "ours_pool_py"] if both else []),
                          "raw_create", "raw_record"],
        "timing_pairs": ["ours", "ours_no_timeline", *(["ours_py", "ours_no_timeline_py"] if both else []),
                         "raw_pooled"],
        "creations": ["ours", "torch"],
        "round_trip": ["floor", "atomic_mem64_spin", "atomic_mem64_sleep", "atomic_mem32_spin", "atomic_mem32_sleep"],
        "worker": ["worker", "floor", "spin"],
        "atomic_alloc": ["ours", "raw"],
        "threads": [f"{family}_{k}" for family in ("pool", "event") for k in (1, 4, 16)],
        "keys": ["keys_1_0", "keys_6_1"],
    }
    for name, section in sections.items():
        fields = {field for field, _ in section["columns"]}
        for row in section["rows"]:
            assert fields <= set(row), (name, row)
    assert [r["n"] for r in sections["round_trip"]["rows"]] == [_suite.QUICK.round_trip_samples] * 5
    assert [r["n"] for r in sections["worker"]["rows"]] == [_suite.QUICK.worker_samples] * 3
    ours = sections["creations"]["rows"][0]
    assert ours["steady_creates"] == 0 and ours["creates"] <= 2 * ours["peak_in_flight"] + 1
    assert {t["id"]: t["status"] for t in result["targets"]}["steady_creations"] == "pass"


# -- run_suite before any measurement ---------------------------------------------------------------
def test_run_suite_without_cuda_raises_with_the_reason(monkeypatch):
    monkeypatch.setattr(driver, "unavailable_reason", lambda: "no driver in this test")
    with pytest.raises(CudaUnavailableError, match="no driver in this test"):
        _suite.run_suite(quick=True)


def test_run_suite_refuses_unknown_names_before_touching_cuda(monkeypatch):
    def touched():
        raise AssertionError("run_suite reached CUDA before checking its arguments")

    monkeypatch.setattr(driver, "unavailable_reason", touched)
    with pytest.raises(ValueError, match="unknown measurement.*'nope'.*create_record"):
        _suite.run_suite(only=["keys", "nope"])


def test_selected_sections_keep_the_suite_order():
    assert _suite._selected(None) == list(_suite.SECTIONS)
    assert _suite._selected(["keys", "create_record"]) == ["create_record", "keys"]
    assert _suite._selected("worker") == ["worker"]


def test_missing_and_broken_peers_are_skipped_and_said(monkeypatch):
    def broken(device):
        raise ImportError("built for another CUDA")

    def fine(device):
        return object(), "9.9"

    monkeypatch.setattr(_suite, "_PEERS", (("torch", "torch", fine), ("cupy", "cupy", broken),
                                           ("cuda.core", "cuda.core", fine)))
    monkeypatch.setattr(_suite, "_installed", lambda module: module != "cuda.core")
    said = []
    modules, info = _suite._load_peers(0, said.append)
    assert set(modules) == {"torch"}
    assert info == {"torch": {"status": "ok", "version": "9.9"},
                    "cupy": {"status": "unusable (ImportError: built for another CUDA)"},
                    "cuda.core": {"status": "not installed"}}
    assert said == ["cupy: unusable (ImportError: built for another CUDA), skipped", "cuda.core: not installed, skipped"]


def test_installed_does_not_import():
    assert _suite._installed("json")
    assert not _suite._installed("no_such_module_here")
    assert not _suite._installed("no_such_package.sub")


# -- targets ------------------------------------------------------------------------------------
def test_targets_all_pass_on_a_good_result():
    targets = _suite.evaluate_targets(synthetic())
    assert [t["status"] for t in targets] == ["pass"] * len(targets)
    assert {t["id"] for t in targets} == {
        "pool_vs_record", "new_event_vs_cuda_core", "new_event_vs_cupy", "new_event_vs_torch", "timer_vs_torch",
        "timer_vs_raw", "steady_creations", "overall_creations", "round_trip", "worker"}
    by_id = {t["id"]: t for t in targets}
    assert by_id["pool_vs_record"]["value"] == pytest.approx(1.8)
    assert by_id["pool_vs_record"]["detail"] == "1.80x (0.9 us / 0.5 us)"
    assert by_id["new_event_vs_torch"]["value"] == pytest.approx(4.0)
    assert by_id["overall_creations"]["limit"] == 129 and by_id["overall_creations"]["value"] == 129


@pytest.mark.parametrize("override,target", [
    ({"create_record.ours_pool.median_us": 1.1}, "pool_vs_record"),  # 2.2x a raw record
    ({"create_record.cuda_core.median_us": 1.6}, "new_event_vs_cuda_core"),  # only 1.6x faster
    ({"create_record.cupy.median_us": 2.9}, "new_event_vs_cupy"),
    ({"create_record.torch.median_us": 3.4}, "new_event_vs_torch"),
    ({"timing_pairs.torch.median_us": 17.0}, "timer_vs_torch"),  # 3.4x
    ({"timing_pairs.raw_pooled.median_us": 3.0}, "timer_vs_raw"),  # ours 1.67x raw
    ({"creations.ours.steady_creates": 2}, "steady_creations"),
    ({"creations.ours.creates": 130}, "overall_creations"),
    ({"round_trip.atomic_mem64_spin.median_us": 13.0}, "round_trip"),  # 1.625x
    ({"worker.worker.median_us": 118.0}, "worker"),  # 1.31x
])
def test_each_target_misses_past_its_limit(override, target):
    got = statuses(synthetic(**override))
    assert got.pop(target) == "miss"
    assert set(got.values()) == {"pass"}


def test_targets_at_their_limit_pass():
    result = synthetic(**{"create_record.ours_pool.median_us": 1.0, "create_record.torch.median_us": 3.5,
                          "worker.worker.median_us": 117.0})
    got = statuses(result)
    assert got["pool_vs_record"] == got["new_event_vs_torch"] == got["worker"] == "pass"


def test_targets_not_measured_say_why():
    result = synthetic()
    result["peers"]["cupy"] = {"status": "not installed"}
    result["sections"]["create_record"]["rows"] = [
        r for r in result["sections"]["create_record"]["rows"] if r["key"] != "cupy"]
    result["sections"]["timing_pairs"]["rows"].pop()  # torch: failed
    result["sections"]["timing_pairs"]["errors"]["torch"] = "RuntimeError: boom"
    del result["sections"]["worker"]
    result["sections"]["round_trip"]["rows"] = []
    by_id = {t["id"]: t for t in _suite.evaluate_targets(result)}
    assert by_id["new_event_vs_cupy"]["status"] == "n/a"
    assert by_id["new_event_vs_cupy"]["detail"] == "cupy not installed"
    assert by_id["timer_vs_torch"]["detail"] == "failed: RuntimeError: boom"
    assert by_id["worker"]["detail"] == "not run"
    assert by_id["round_trip"]["detail"] == "not measured"
    assert by_id["new_event_vs_torch"]["status"] == "pass"


def test_the_round_trip_target_uses_the_default_backend_spinning():
    result = synthetic()
    result["sections"]["round_trip"]["info"]["default_backend"] = "mem32"
    result["sections"]["round_trip"]["rows"].append(row("atomic_mem32_spin", 16.0))
    assert statuses(result)["round_trip"] == "miss"  # 2x the floor, while mem64 would pass


# -- rendering ----------------------------------------------------------------------------------
def test_markdown_has_the_header_targets_and_tables():
    result = synthetic()
    result["peers"]["cupy"] = {"status": "not installed"}
    result["sections"]["create_record"]["notes"] = ["a note"]
    result["sections"]["create_record"]["skipped"] = {"thing": "why not"}
    result["sections"]["create_record"]["errors"] = {"cupy_x": "RuntimeError: boom | pipe"}
    text = _suite.to_markdown(result)
    assert text.startswith("# cudaevents bench: Test GPU 80GB\n")
    assert "- versions: cudaevents 0.1.0, cuda-bindings 13.3.0" in text
    assert "torch 2.11.0; cupy: not installed; cuda.core 1.2.0" in text
    assert "- mode: quick (median of 3 batches of 200 operations" in text
    assert "## Targets" in text and "| PASS | pooled acquire + record + release <= 2x" in text
    assert "## New event + record\n\nhow\n\n| method | median us/op |\n| --- | ---: |\n| ours event | 1.00 |" in text
    assert "- a note\n- skipped thing: why not\n- FAILED cupy_x: RuntimeError: boom | pipe" in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_cells_are_formatted_by_magnitude():
    cell = _suite._cell
    assert [cell(v) for v in (None, True, 12345, 0.12345, 1.2345, 12.345, 1234.5, "a|b")] == [
        "-", "yes", "12,345", "0.123", "1.23", "12.3", "1,234", "a\\|b"]


def test_json_round_trip_is_strict_and_renders_the_same():
    result = synthetic()
    result["sections"]["worker"]["rows"][0]["p99_us"] = float("nan")
    result["header"]["config"]["threads"] = (1, 4, 16)
    text = _suite.to_json(result)
    back = json.loads(text)
    assert back["sections"]["worker"]["rows"][0]["p99_us"] is None
    assert back["header"]["config"]["threads"] == [1, 4, 16]
    assert _suite.to_markdown(back) == _suite.to_markdown(_suite._finite(result))
    assert _suite.evaluate_targets(back) == _suite.evaluate_targets(result)
    assert json.loads(_suite.to_json(back)) == back


def test_section_markdown_of_a_failed_section():
    section = _plumbing.section("Worker wake-up", "", [], [], errors={"section": "CudaError: x"})
    assert _suite.section_markdown(section) == "## Worker wake-up\n\n- FAILED section: CudaError: x\n"


def test_plot_without_matplotlib_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    path = tmp_path / "r.png"
    assert _suite.plot(synthetic(), path) is False
    assert not path.exists()


def test_plot_refuses_a_result_with_nothing_to_plot(tmp_path):
    result = synthetic()
    result["sections"] = {"keys": ops_section("Keys", [row("keys_1_0", 0.3)])}
    with pytest.raises(ValueError, match="nothing to plot"):
        _suite.plot(result, tmp_path / "r.png")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "r.png"
    assert _suite.plot(synthetic(), path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- timing plumbing ------------------------------------------------------------------------------
def test_measure_interleaves_warms_up_and_drops_failing_methods():
    calls = []

    def method(key, fail_at=None, phases=False):
        def run(n):
            calls.append(key)
            if fail_at is not None and calls.count(key) == fail_at:
                raise RuntimeError(f"{key} broke")
            return {"create": 10 * n, "free": 20 * n} if phases else None

        return _plumbing.Method(key, key, run)

    methods = [method("a"), method("b", fail_at=3), method("c", phases=True), method("d", fail_at=1)]
    errors = {}
    samples = _suite_host.measure(methods, batches=3, ops=5, errors=errors)
    assert errors == {"b": "RuntimeError: b broke", "d": "RuntimeError: d broke"}
    # warm-ups in order (d fails there), then rounds starting one method later each time;
    # b fails in the second round and is left out from then on
    assert calls == ["a", "b", "c", "d", "a", "b", "c", "b", "c", "a", "c", "a"]
    assert set(samples) == {"a", "c"}
    assert len(samples["a"]["op"]) == 3 and all(v > 0 for v in samples["a"]["op"])
    assert samples["c"] == {"create": [10.0] * 3, "free": [20.0] * 3}


def test_measure_keeps_the_garbage_collector_as_it_was():
    import gc

    seen = []
    m = _plumbing.Method("x", "x", lambda n: seen.append(gc.isenabled()))
    assert gc.isenabled()
    _suite_host.measure([m], batches=2, ops=1, errors={})
    assert seen == [True, False, False] and gc.isenabled()


def test_interleave_takes_blocks_of_samples_in_turns():
    calls = []

    def method(key):
        def run(n):
            calls.append((key, n))
            return [len(calls)] * n

        return _plumbing.Method(key, key, run)

    blocks = _suite_latency._blocks(7, 3)
    assert blocks == [3, 3, 1]
    got = _plumbing.interleave([method("a"), method("b")], blocks, 2, errors={})
    assert calls == [("a", 2), ("b", 2), ("a", 3), ("b", 3), ("b", 3), ("a", 3), ("a", 1), ("b", 1)]
    assert [sum(len(part) for part in parts) for parts in got.values()] == [7, 7]
    assert _plumbing.interleave([method("c")], [], 0, errors={}) == {"c": []}


def test_timing_rows_report_medians_in_us_and_ratios():
    methods = [_plumbing.Method("ours", "ours", None, ours=True), _plumbing.Method("peer", "peer", None,
                                                                                     peer="torch")]
    samples = {"ours": {"op": [1000.0, 3000.0, 2000.0]}, "peer": {"op": [8000.0, 6000.0, 7000.0]}}
    rows = _suite_host.timing_rows(methods, samples, "ours")
    assert [(r["key"], r["median_us"], r["min_us"], r["max_us"], r["x_ours"]) for r in rows] == [
        ("ours", 2.0, 1.0, 3.0, 1.0), ("peer", 7.0, 6.0, 8.0, 3.5)]
    assert rows[1]["peer"] == "torch" and rows[0]["ours"] is True


def test_rows_carry_the_method_and_its_extra_fields():
    m = _plumbing.Method("pool_4", "pool", None, ours=True, extra={"family": "pool", "threads": 4})
    assert m.row(median_us=1.5) == {"key": "pool_4", "label": "pool", "ours": True, "peer": None, "family": "pool",
                                    "threads": 4, "median_us": 1.5}


def test_ratios_within_groups_and_without_a_reference():
    rows = [{"key": f"{f}_{k}", "family": f, "threads": k, "median_us": v}
            for f, k, v in (("pool", 1, 2.0), ("pool", 4, 3.0), ("event", 1, 0.0), ("event", 4, 5.0))]
    _plumbing.add_ratio(rows, "x_one", lambda r: r["threads"] == 1, group="family")
    assert [r["x_one"] for r in rows] == [1.0, 1.5, None, None]  # event_1's median is 0: no reference
    assert [r["x"] for r in _plumbing.add_ratio(rows, "x", "nosuch")] == [None] * 4


def test_crew_runs_every_thread_and_reports_their_errors():
    seen = []
    lock = threading.Lock()

    def work(i, n):
        with lock:
            seen.append((i, n))
        if n == 13:
            raise KeyError("thread failed")

    crew = _suite_host.Crew(4, work, "test-crew")
    try:
        out = crew.run(7)
        assert sorted(seen) == [(i, 7) for i in range(4)]
        assert out["op"] > 0
        with pytest.raises(KeyError, match="thread failed"):
            crew.run(13)
    finally:
        crew.close()
    assert not any(t.is_alive() for t in crew.threads)


def test_cleanup_runs_everything_in_reverse_and_records_failures():
    done, errors = [], {}

    def boom():
        raise RuntimeError("stuck")

    with _plumbing.Cleanup(errors) as cleanup:
        cleanup.add(done.append, 1)
        cleanup.add(boom)
        cleanup.add(done.append, 3)
    assert done == [3, 1]
    assert errors == {"cleanup": "RuntimeError: stuck"}


def test_statistics_follow_the_library_rule():
    ns = [v * 1000 for v in (7, 1, 100, 3, 50, 2, 9, 4, 8, 6)]
    s, lib = _plumbing.us_stats(ns), stats_of([v / 1e3 for v in ns])
    assert (s["n"], s["median_us"], s["p99_us"], s["min_us"], s["max_us"], s["mean_us"]) == (
        lib.count, lib.median_ms, lib.p99_ms, lib.min_ms, lib.max_ms, lib.mean_ms)
    s = _plumbing.us_stats(list(range(1000, 101_000, 1000)))  # 1..100 us: linear interpolation, as numpy's default
    assert (s["n"], s["min_us"], s["max_us"]) == (100, 1.0, 100.0)
    assert (s["median_us"], s["p90_us"], s["p99_us"], s["mean_us"]) == pytest.approx((50.5, 90.1, 99.01, 50.5))
    assert _plumbing.us_stats([2500])["p90_us"] == 2.5
    assert _plumbing.median([3, 1, 2, 10]) == statistics.median([3, 1, 2, 10]) == 2.5


def test_describe_error_is_one_line():
    assert _plumbing.describe_error(ValueError("first\nsecond")) == "ValueError: first"
    assert _plumbing.describe_error(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_forced_backend_restores_the_environment(monkeypatch):
    name = "CUDAEVENTS_ATOMIC_BACKEND"
    monkeypatch.setenv(name, "mem32")
    with _suite_latency._forced_backend("hostfn"):
        assert os.environ[name] == "hostfn"
    assert os.environ[name] == "mem32"
    monkeypatch.delenv(name)
    with _suite_latency._forced_backend("mem64"):
        assert os.environ[name] == "mem64"
    assert name not in os.environ


def test_public_names_have_docstrings():
    for module in (_suite, _suite_host, _suite_latency, _plumbing, _raw):
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name}"
