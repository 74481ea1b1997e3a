"""Cross-rank timing without torch: the report and its scores from stand-in per-rank payloads,
names only some ranks have, JSON round trips, the merged trace, and gather/all_gather/the
periodic reporter through a stand-in for torch.distributed's object collectives.

The GPU version (2 and 4 gloo ranks on one GPU, one made slower) is tests/test_gpu_ranks.py."""

from __future__ import annotations

import io
import json
import math

import pytest

import cudaevents as ce
from cudaevents import RankReport, RankReporter, Results, Sample
from cudaevents._profiler import ranks


def payload(rank, regions, **extra):
    """A rank's payload with regions {name: median} (count 10, the other stats around it)."""
    p = ranks._header(rank)
    p["regions"] = {name: [10, 10 * m, m, 1.1 * m, 0.9 * m, 1.2 * m] for name, m in regions.items()}
    p.update(extra)
    return p


def test_the_slow_rank_is_flagged_with_its_scores():
    report = RankReport([payload(r, {"fwd": 3.0 if r == 2 else 1.0, "bwd": 6.0 if r == 2 else 2.0})
                         for r in (3, 1, 0, 2)])
    assert report.ranks == [0, 1, 2, 3]
    fwd = report.regions()[0]
    assert (fwd["name"], fwd["min_ms"], fwd["max_ms"], fwd["max_rank"]) == ("fwd", 1.0, 3.0, 2)
    assert fwd["min_rank"] == 0 and fwd["median_ms"] == 1.0 and fwd["spread"] == pytest.approx(3.0)
    assert fwd["relative"] == {0: 1.0, 1: 1.0, 2: pytest.approx(1 / 3), 3: 1.0}
    scores = {s["rank"]: s for s in report.scores()}
    assert scores[2]["relative"] == pytest.approx(1 / 3) and scores[2]["flagged"]
    assert "relative 0.33 < 0.8" in scores[2]["why"]
    assert [r for r, s in scores.items() if s["flagged"]] == [2] == report.stragglers()
    assert all(s["individual"] is None for s in scores.values())  # no windows: unknown


def test_a_rank_slower_than_its_own_best_window_is_flagged():
    report = RankReport([payload(0, {"step": 1.0}, windows={"step": [1.0, 1.0]}),
                         payload(1, {"step": 1.0}, windows={"step": [0.5, 1.0]})])
    scores = {s["rank"]: s for s in report.scores()}
    assert scores[0]["individual"] == 1.0 and not scores[0]["flagged"]
    assert scores[1]["individual"] == 0.5 and scores[1]["flagged"] and "individual 0.50" in scores[1]["why"]
    assert report.stragglers() == [1]


def test_names_that_only_some_ranks_have_are_kept():
    report = RankReport([payload(0, {"step": 1.0, "eval": 5.0}), payload(1, {"step": 1.0}),
                         payload(2, {"step": 1.0, "save": 2.0})])
    rows = {r["name"]: r for r in report.regions()}
    assert list(rows) == ["step", "eval", "save"]
    assert rows["eval"]["ranks"] == [0] and rows["eval"]["missing"] == [1, 2]
    assert rows["save"]["ranks"] == [2] and rows["save"]["relative"] == {2: 1.0}
    assert report.stragglers() == []  # a region nobody else ran is nobody's straggling


def test_threshold_and_bad_payloads_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
        RankReport([payload(0, {})], threshold=1.5)
    with pytest.raises(ValueError, match="same rank"):
        RankReport([payload(0, {}), payload(0, {})])
    with pytest.raises(ValueError, match="make it with rank_payload"):
        RankReport([{"rank": 0}])
    with pytest.raises(ValueError, match="at least one rank"):
        RankReport([])


def test_json_round_trip(tmp_path):
    report = RankReport([payload(0, {"a": 1.0}), payload(1, {"a": 2.0, "b": 1.0})], threshold=0.7)
    path = tmp_path / "report.json"
    text = report.to_json(path)
    again = RankReport.from_json(str(path))
    assert again.threshold == 0.7 and again.regions() == report.regions() and again.scores() == report.scores()
    assert json.loads(RankReport.from_json(text).to_json()) == json.loads(text)
    with pytest.raises(ValueError, match="not a cudaevents rank report"):
        RankReport.from_json('{"format": "x"}')


def test_the_table_lines_up_regions_and_ranks():
    report = RankReport([payload(0, {"fwd": 1.0}), payload(1, {"fwd": 2.0})])
    text = report.table()
    assert "fwd" in text and "2.00x" in text and "relative 0.50 < 0.8" in text
    out = io.StringIO()
    report.print(file=out)
    assert "fwd" in out.getvalue()


def test_one_trace_for_all_ranks_on_a_common_clock():
    p0 = payload(0, {"a": 1.0}, samples=[["a", 0, 7, 1_000_000.0, 500.0], ["a", 0, 7, 1_002_000.0, 500.0]],
                 streams={"0:7": "stream 0x7"}, clock_error_us=2.5)
    p1 = payload(1, {"a": 1.0}, samples=[["a", 0, 9, 1_000_500.0, 700.0]], streams={}, clock_error_us=3.0)
    trace = RankReport([p1, p0]).to_chrome_trace()
    events = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert set(procs) == {0, 1} and "rank 1" in procs[1] and "±3.0 us" in procs[1]
    spans = sorted((e["pid"], e["ts"], e["dur"]) for e in events if e["ph"] == "X")
    assert spans == [(0, 0.0, 500.0), (0, 2000.0, 500.0), (1, 500.0, 700.0)]  # from the earliest start
    with pytest.raises(ValueError, match="gather with samples=True"):
        RankReport([payload(0, {"a": 1.0})]).to_chrome_trace()


def _results(durations):
    return Results(Sample(name, 0, 1, float(i), ms) for i, (name, ms) in enumerate(durations))


def test_rank_payload_of_results_sends_summaries_not_samples():
    p = ranks.rank_payload(_results([("a", 1.0), ("a", 3.0), ("b", 2.0)]), 5)
    assert p["rank"] == 5 and p["regions"]["a"][:3] == [2, 4.0, 2.0] and "samples" not in p
    with pytest.raises(ValueError, match="pass the Timer or LayerTimer"):
        ranks.rank_payload(_results([("a", 1.0)]), 0, samples=True)


def test_without_torch_gathering_says_what_it_needs(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name.startswith("torch"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(RuntimeError, match="pip install torch"):
        ce.gather_results(_results([("a", 1.0)]))


class _Ranks:
    """A stand-in for torch.distributed's object collectives: ``world`` ranks whose payloads
    are made by ``others(rank)``, and this process as rank ``me``."""

    def __init__(self, monkeypatch, world, me, others):
        self.sent = []
        self.me = me
        monkeypatch.setattr(ranks, "_rank_of", lambda group: me)

        def exchange(p, group, dst):
            self.sent.append(p)
            every = [p if r == me else others(r) for r in range(world)]
            return every if dst is None or dst == me else None

        monkeypatch.setattr(ranks, "_exchange", exchange)


def test_gather_gives_the_report_on_dst_only(monkeypatch):
    _Ranks(monkeypatch, 3, 0, lambda r: payload(r, {"a": 1.0 + r}))
    report = ce.gather_results(_results([("a", 1.0)]))
    assert report.ranks == [0, 1, 2] and report.regions()[0]["max_rank"] == 2
    _Ranks(monkeypatch, 3, 1, lambda r: payload(r, {"a": 1.0}))
    assert ce.gather_results(_results([("a", 1.0)]), dst=0) is None
    assert ce.all_gather_results(_results([("a", 1.0)])).ranks == [0, 1, 2]


def test_samples_are_placed_on_the_wall_clock(monkeypatch, cpu):
    stream = cpu()
    timer = ce.Timer()
    with timer.region("host work", stream):
        stream.enqueue(lambda: None)
    stream.synchronize(timeout=10)
    _Ranks(monkeypatch, 1, 0, None)
    import time

    before = time.time_ns() / 1e3
    report = ce.gather_results(timer, samples=True)
    (name, device, _, start_us, dur_us), = report.payloads[0]["samples"]
    assert (name, device) == ("host work", -1) and dur_us >= 0
    assert before - 60e6 < start_us <= before  # it began before the gather, on the wall clock
    assert report.payloads[0]["clock_error_us"] < 1e4
    assert report.to_chrome_trace()["traceEvents"]


def test_the_reporter_reports_every_n_steps_on_windows(monkeypatch, cpu):
    stream = cpu()
    timer = ce.Timer()
    stand_in = _Ranks(monkeypatch, 2, 0, lambda r: payload(r, {"step": 100.0}, windows={"step": [100.0, 100.0]}))
    out = io.StringIO()
    reporter = RankReporter(timer, every=3, file=out)
    reports = []
    for _ in range(6):
        with timer.region("step", stream):
            pass
        stream.synchronize(timeout=10)
        reports.append(reporter.step())
    assert [r is not None for r in reports] == [False, False, True, False, False, True]
    first, second = stand_in.sent
    assert first["regions"]["step"][0] == 3 and second["regions"]["step"][0] == 3  # a window each
    assert first["step"] == 3 and set(first["windows"]) == {"step"}
    assert reporter.last_payload_bytes > 0 and reporter.last_gather_s >= 0
    assert "step 6" in out.getvalue()
    scores = {s["rank"]: s for s in reports[-1].scores()}
    assert scores[1]["flagged"] and "relative" in scores[1]["why"]  # its step takes 100 ms, ours microseconds
    assert "relative" not in scores[0]["why"]  # (a microsecond region's windows may differ: individual)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        RankReporter(timer, every=0)


def test_bad_thresholds_and_sources_are_refused_before_the_gather(monkeypatch):
    stand_in = _Ranks(monkeypatch, 2, 1, lambda r: payload(r, {}))
    for bad in (0, 1.5, "0.8", True):
        with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
            ce.gather_results(_results([("a", 1.0)]), threshold=bad)
        with pytest.raises(ValueError, match="threshold"):
            RankReporter(ce.Timer(), threshold=bad)
    assert stand_in.sent == []  # refused before any rank entered the collective
    with pytest.raises(TypeError, match="needs a Timer, a LayerTimer or"):
        ce.gather_results([1.0, 2.0])
    with pytest.raises(TypeError, match="RankReporter needs a Timer"):
        RankReporter(object())


def test_the_reporter_follows_a_timer_reset(monkeypatch, cpu):
    stream = cpu()
    timer = ce.Timer()
    stand_in = _Ranks(monkeypatch, 1, 0, None)
    reporter = RankReporter(timer, every=1, print_report=False)
    for _ in range(2):
        with timer.region("step", stream):
            pass
    stream.synchronize(timeout=10)
    reporter.step()
    timer.reset()  # a new sample list: the next window starts at its beginning
    with timer.region("after reset", stream):
        pass
    stream.synchronize(timeout=10)
    reporter.step()
    assert stand_in.sent[0]["regions"]["step"][0] == 2 and list(stand_in.sent[1]["regions"]) == ["after reset"]


def test_a_rank_without_regions_in_a_window_sends_an_empty_one(monkeypatch):
    stand_in = _Ranks(monkeypatch, 1, 0, None)
    report = RankReporter(ce.Timer(), every=1, print_report=False).step()
    assert stand_in.sent[0]["regions"] == {} and report.regions() == [] and report.stragglers() == []
    assert not math.isnan(report.scores()[0]["relative"])
