"""The comparison suite on a real GPU, in quick mode: every measurement runs end to end, the
result has the documented shape, every measured time is positive, and ``cudaevents bench``
works as a command. Timings are never asserted; counts that do not depend on timing are."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.subproc import PACKAGE_HOME

from cudaevents._comparison import suite as _suite

pytestmark = pytest.mark.gpu

# rows of cudaevents and of raw cuda-bindings: measured on every GPU, whatever is installed
ALWAYS_MEASURED = {"ours", "ours_event", "ours_pool", "worker", "floor", "raw_record", "raw_create", "raw_pooled",
                   "raw"}
PROGRESS: list[str] = []


@pytest.fixture(scope="module")
def result():
    return _suite.run_suite(quick=True, progress=PROGRESS.append)


def positive_numbers(row: dict) -> None:
    for field, value in row.items():
        if field.endswith(("_us", "_x_floor")) or field.startswith("x_"):
            if row.get("ours") or row["key"] in ALWAYS_MEASURED:
                assert isinstance(value, (int, float)), (row["key"], field, value)
            if value is not None:
                assert value > 0, (row["key"], field, value)


def test_every_section_ran_and_has_rows(result):
    assert list(result["sections"]) == list(_suite.SECTIONS)
    for name, section in result["sections"].items():
        assert "section" not in section["errors"], (name, section["errors"])
        assert section["rows"], name
        for key in section["errors"]:  # only peers may fail: ours and the raw floors must not
            assert key not in ALWAYS_MEASURED and not key.startswith(("atomic_mem64", "pool_", "event_", "keys_")), (name, key)
        if name in ("round_trip", "worker"):  # no peers there: closing what was measured must not fail either
            assert "cleanup" not in section["errors"], (name, section["errors"])
        fields = {field for field, _ in section["columns"]}
        for row in section["rows"]:
            assert {"key", "label"} <= set(row) and fields <= set(row), (name, row)
    n = len(_suite.SECTIONS)
    assert [line[: len(f"[{n}/{n}]")] for line in PROGRESS if line.startswith("[")] == [
        f"[{i}/{n}]" for i in range(1, n + 1)]


def test_every_measured_time_is_positive(result):
    for section in result["sections"].values():
        for row in section["rows"]:
            positive_numbers(row)
    alloc = {r["key"]: r for r in result["sections"]["atomic_alloc"]["rows"]}
    assert alloc["ours"]["create_us"] > 0 and alloc["ours"]["free_us"] > 0
    assert alloc["raw"]["create_us"] > 0 and alloc["raw"]["pinned_bytes"] > 0


def test_ours_rows_and_floors_are_all_there(result):
    keys = {name: {r["key"] for r in s["rows"]} for name, s in result["sections"].items()}
    assert {"ours_event", "ours_pool", "raw_create", "raw_record"} <= keys["create_record"]
    assert {"ours", "raw_pooled"} <= keys["timing_pairs"]
    assert {"ours", "torch"} <= keys["creations"]
    assert "floor" in keys["round_trip"] and any(k.startswith("atomic_") for k in keys["round_trip"])
    assert {"worker", "floor", "spin"} <= keys["worker"]
    assert {"ours", "raw"} <= keys["atomic_alloc"]
    assert {f"{f}_{k}" for f in ("pool", "event") for k in (1, 4, 16)} <= keys["threads"]
    assert len(keys["keys"]) >= 2


def test_a_fresh_pool_creates_no_events_in_steady_state(result):
    ours = next(r for r in result["sections"]["creations"]["rows"] if r["key"] == "ours")
    assert ours["steady_creates"] == 0
    assert ours["creates"] <= 2 * ours["peak_in_flight"] + ours["reference_events"]
    assert ours["creates"] == ours["peak_live"]
    assert ours["peak_in_flight"] <= _suite.QUICK.in_flight


def test_peers_are_reported(result):
    assert set(result["peers"]) == {"torch", "cupy", "cuda.core"}
    for name, info in result["peers"].items():
        assert info["status"] == "ok" or info["status"] == "not installed" or info["status"].startswith("unusable")
        if info["status"] == "ok":
            assert name in result["header"]["versions"]


def test_targets_and_renderings(result, tmp_path):
    targets = result["targets"]
    assert len(targets) == 10
    assert {t["status"] for t in targets} <= {"pass", "miss", "n/a"}
    for t in targets:
        if t["id"] in ("pool_vs_record", "timer_vs_raw", "steady_creations", "overall_creations", "round_trip",
                       "worker"):  # nothing but cudaevents and raw bindings: always measured
            assert t["status"] != "n/a", t
    back = json.loads(_suite.to_json(result))
    assert back == result
    text = _suite.to_markdown(back)
    assert text.startswith(f"# cudaevents bench: {result['header']['device']['name']}")
    assert all(section["title"] in text for section in result["sections"].values())
    pytest.importorskip("matplotlib")
    assert _suite.plot(back, tmp_path / "r.png") is True


def test_cli_bench_quick(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_HOME) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "cudaevents", "bench", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == 0, r.stderr
    n = len(_suite.SECTIONS)
    assert f"[1/{n}] " in r.stderr and f"[{n}/{n}] " in r.stderr
    assert r.stdout.startswith("# cudaevents bench: ")
    assert "## Targets" in r.stdout
    with open(out) as f:
        data = json.load(f)
    assert list(data["sections"]) == list(_suite.SECTIONS)
    for name, info in data["peers"].items():
        if info["status"] == "not installed":
            assert f"{name}: not installed, skipped" in r.stderr
