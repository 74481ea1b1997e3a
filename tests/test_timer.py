"""Timer bookkeeping on CPU streams (no GPU needed), and the Results formats loaded back."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

import cudaevents
from cudaevents import CpuStream, Results, Sample, Stats, Timer
from cudaevents._profiler.results import stats_of

pytestmark = pytest.mark.usefixtures("hot_path")  # every test on the compiled and the pure-Python path


@pytest.fixture
def streams(cpu_streams):
    return cpu_streams(2, name="timer")


def test_nested_and_concurrent_regions(streams):
    a, b = streams
    t = Timer(nvtx=False)
    for _ in range(20):
        with t.region("outer", a):
            a.enqueue(time.sleep, 0.001)
            with t.region("inner", a):
                a.enqueue(time.sleep, 0.002)
        with t.region("other", b):
            b.enqueue(time.sleep, 0.001)
    r = t.results(timeout=10)
    assert set(r.names()) == {"inner", "outer", "other"}
    summary = r.summary()
    assert {n: s.count for n, s in summary.items()} == {"inner": 20, "outer": 20, "other": 20}
    assert summary["inner"].min_ms >= 1.5 and summary["outer"].min_ms >= summary["inner"].min_ms
    outer = [s for s in r.samples if s.name == "outer"]
    inner = [s for s in r.samples if s.name == "inner"]
    for o, i in zip(outer, inner):
        assert o.start_ms <= i.start_ms and i.start_ms + i.duration_ms <= o.start_ms + o.duration_ms + 1e-6
    assert {s.stream for s in r.samples if s.name == "other"} != {s.stream for s in outer}
    assert all(s.device == -1 for s in r.samples)
    assert t.pending == 0


def test_harvesting_is_lazy_and_never_blocks(streams):
    a = streams[0]
    gate = threading.Event()
    t = Timer(harvest_every=4, nvtx=False)
    a.enqueue(gate.wait, 10)
    for i in range(10):
        with t.region("r", a):
            pass
    assert t.pending == 10  # nothing finished: the harvests found nothing and did not wait
    assert t.harvest() == 0
    with pytest.raises(TimeoutError, match="10 region"):
        t.results(timeout=0.05)
    gate.set()
    r = t.results(timeout=10)
    assert len(r) == 10 and t.pending == 0


def test_decorator_and_begin_end(streams):
    a = streams[0]
    t = Timer(nvtx=False)

    @t.timed("step", stream=a)
    def step(x):
        a.enqueue(time.sleep, 0.001)
        return x + 1

    assert step(1) == 2 and step(2) == 3
    assert step.__name__ == "step"
    token = t.begin("manual", a)
    t.end(token)
    with pytest.raises(ValueError, match="already ended"):
        t.end(token)
    with pytest.raises(TypeError, match="token that begin"):
        t.end("manual")
    r = t.results(timeout=10)
    assert r.summary()["step"].count == 2 and r.summary()["manual"].count == 1


def test_region_ends_when_the_body_raises(streams):
    t = Timer(nvtx=False)
    with pytest.raises(KeyError):
        with t.region("boom", streams[0]):
            raise KeyError("x")
    assert len(t.results(timeout=10)) == 1


def test_reset_keeps_pending(streams):
    a = streams[0]
    t = Timer(nvtx=False)
    with t.region("first", a):
        pass
    t.results(timeout=10)
    t.reset()
    with t.region("second", a):
        pass
    assert t.results(timeout=10).names() == ["second"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_harvest_every(bad):
    with pytest.raises(ValueError, match="harvest_every"):
        Timer(harvest_every=bad)


def test_bad_names_and_nvtx():
    t = Timer(nvtx=False)
    with pytest.raises(TypeError, match="name is a str"):
        t.region(3)
    try:
        import nvtx  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install nvtx"):
            Timer(nvtx=True)


def test_stats_of():
    st = stats_of([4.0, 1.0, 3.0, 2.0])
    assert st == Stats(count=4, total_ms=10.0, mean_ms=2.5, median_ms=2.5, min_ms=1.0, max_ms=4.0,
                       p99_ms=pytest.approx(3.97))
    assert stats_of([7.0]).p99_ms == 7.0
    values = list(range(1, 101))
    assert stats_of(values).p99_ms == pytest.approx(99.01)  # numpy.percentile(values, 99)
    with pytest.raises(ValueError, match="no values"):
        stats_of([])


def _results() -> Results:
    samples = [
        Sample("fwd", 0, 0x10, 0.0, 1.5),
        Sample("fwd", 0, 0x10, 2.0, 2.5),
        Sample("copy", 0, 0x20, 0.5, 0.25),
        Sample("load", -1, 1, 0.0, 3.0),
    ]
    return Results(samples, {(-1, 1): "CPU stream loader"})


def test_summary_and_table():
    r = _results()
    s = r.summary()
    assert s["fwd"].count == 2 and s["fwd"].total_ms == 4.0 and s["fwd"].median_ms == 2.0
    text = r.table()
    for name in ("fwd", "copy", "load", "median", "p99"):
        assert name in text
    out = io.StringIO()
    r.print_summary(file=out)
    assert "fwd" in out.getvalue()


def test_json_round_trip(tmp_path):
    r = _results()
    path = tmp_path / "r.json"
    text = r.to_json(path)
    data = json.loads(text)
    assert data["format"] == "cudaevents.results" and data["summary"]["fwd"]["count"] == 2
    for source in (text, str(path)):
        back = Results.from_json(source)
        assert back.samples == r.samples
    with pytest.raises(ValueError, match="not a cudaevents results file"):
        Results.from_json('{"format": "other"}')


def test_chrome_trace_has_one_track_per_stream(tmp_path):
    r = _results()
    path = tmp_path / "trace.json"
    r.to_chrome_trace(path)
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    tracks = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len(tracks) == 3  # two GPU streams and one CPU stream
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == 4
    assert {(e["pid"], e["tid"]) for e in complete} == tracks
    fwd = [e for e in complete if e["name"] == "fwd"]
    assert fwd[1]["ts"] == 2000.0 and fwd[1]["dur"] == 2500.0
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert {"GPU 0", "CPU streams", "CPU stream loader", "stream 0x10"} <= names


def test_public_names():
    for name in ("Timer", "Results", "Sample", "Stats"):
        assert name in cudaevents.__all__


def test_discard_snapshot_and_collected(streams):
    a = streams[0]
    gate = threading.Event()
    t = Timer(nvtx=False)
    with t.region("done", a):
        pass
    a.synchronize(timeout=10)
    dropped = t.begin("dropped", a)
    t.discard(dropped)
    t.discard(dropped)  # twice is fine
    with pytest.raises(ValueError, match="already ended"):
        t.end(dropped)
    with pytest.raises(TypeError, match="token that begin"):
        t.discard("dropped")
    a.enqueue(gate.wait, 10)
    with t.region("late", a):
        pass
    snap = t.snapshot()  # does not wait for "late"
    assert snap.names() == ["done"] and t.collected == 1 and t.pending == 1
    gate.set()
    assert t.results(timeout=10).names() == ["done", "late"]


def test_region_objects_are_used_once_and_by_their_own_timer(streams):
    a = streams[0]
    t, other = Timer(nvtx=False), Timer(nvtx=False)
    r = t.region("once", a)
    with pytest.raises(ValueError, match="never begun"):
        t.end(r)
    with r:
        pass
    with pytest.raises(ValueError, match="already begun"):
        with r:
            pass
    token = t.begin("mine", a)
    with pytest.raises(ValueError, match="another Timer"):
        other.end(token)
    with pytest.raises(ValueError, match="another Timer"):
        other.discard(token)
    t.end(token)
    assert t.results(timeout=10).names() == ["once", "mine"]


def test_step_indices_group_the_samples(streams):
    a, _ = streams
    t = Timer(nvtx=False)
    for step in range(3):
        for _ in range(step + 1):
            with t.region("work", a):
                pass
        assert t.step() == step + 1
    with t.region("after", a):
        pass
    r = t.results(timeout=30)
    assert [s.step for s in r.samples] == [0, 1, 1, 2, 2, 2, 3]
    groups = r.by_step()
    assert list(groups) == [0, 1, 2, 3] and [len(g) for g in groups.values()] == [1, 2, 3, 1]
    assert groups[3].names() == ["after"]
    again = Results.from_json(r.to_json())
    assert [s.step for s in again.samples] == [s.step for s in r.samples]
    legacy = json.loads(r.to_json())
    for s in legacy["samples"]:
        del s["step"]  # a file written before samples had a step
    assert {s.step for s in Results.from_json(json.dumps(legacy)).samples} == {0}
    assert {e["args"]["step"] for e in r.to_chrome_trace()["traceEvents"] if e["ph"] == "X"} == {0, 1, 2, 3}


def test_laps_on_a_cpu_stream():
    """Laps on a CpuStream (no GPU): a region per phase, in order, back to back on the host clock."""
    s = CpuStream("laps")
    t = Timer(nvtx=False)
    with t.laps(s) as lap:
        for name in ("a", "b", "c"):
            lap(name)
    r = t.results(timeout=30)
    assert [smp.name for smp in r.samples] == ["a", "b", "c"]
    assert all(p.start_ms + p.duration_ms <= n.start_ms for p, n in zip(r.samples, r.samples[1:]))
    s.close(timeout=30)
