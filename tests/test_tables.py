"""Readable summaries: sorting, top N, globs, depth, the tree with self time, names shortened
from the left to fit the width, the parents a LayerTimer gives (no GPU, no torch needed)."""

from __future__ import annotations

import io
import json

import pytest

from cudaevents import Results, Sample
from cudaevents._profiler.tables import shorten
from cudaevents._profiler.torch_layers import _parents

MODEL = "GPT2LMHeadModel"


def model_results(parents=None) -> Results:
    """A model's regions as `cudaevents profile` names them (module paths under the root's class)."""
    ms = {MODEL: 10.0, f"{MODEL}.transformer": 8.0, f"{MODEL}.transformer.h.0": 3.0,
          f"{MODEL}.transformer.h.0.attn": 2.0, f"{MODEL}.transformer.h.0.mlp": 0.5,
          f"{MODEL}.transformer.h.1": 4.0, f"{MODEL}.lm_head": 1.5,
          f"{MODEL}.transformer.h.0.backward": 6.0, f"{MODEL}.transformer.h.0.attn.backward": 4.0}
    samples = [Sample(name, 0, 1, 0.0, v / 2) for name, v in ms.items() for _ in range(2)]
    return Results(samples, parents=parents)


def test_rows_are_sorted_by_total_time_largest_first():
    names = [r.name for r in model_results().rows()]
    assert names[:3] == [MODEL, f"{MODEL}.transformer", f"{MODEL}.transformer.h.0.backward"]
    assert [r.name for r in model_results().rows(sort="name")] == sorted(names)
    counts = Results([Sample("a", 0, 1, 0.0, 5.0), Sample("b", 0, 1, 0.0, 1.0), Sample("b", 0, 1, 0.0, 1.0)])
    assert [r.name for r in counts.rows(sort="count")] == ["b", "a"]
    assert [r.name for r in counts.rows(sort="first")] == ["a", "b"]


def test_self_time_is_the_total_without_the_children():
    rows = {r.name: r for r in model_results().rows()}
    assert rows[MODEL].self_ms == pytest.approx(10.0 - 8.0 - 1.5)  # transformer and lm_head are inside
    assert rows[f"{MODEL}.transformer.h.0"].self_ms == pytest.approx(3.0 - 2.0 - 0.5)
    assert rows[f"{MODEL}.transformer.h.0.attn"].self_ms == pytest.approx(2.0)  # a leaf
    assert rows[f"{MODEL}.transformer.h.0.attn.backward"].parent == f"{MODEL}.transformer.h.0.backward"
    assert rows[f"{MODEL}.transformer.h.0.backward"].self_ms == pytest.approx(2.0)  # backward nests apart
    assert rows[f"{MODEL}.transformer.h.0"].depth == 2 and rows[MODEL].depth == 0
    flat = Results([Sample("a", 0, 1, 0.0, 1.0)]).rows()
    assert flat[0].self_ms is None and flat[0].share == 1.0  # nothing nests: no self column


def test_top_keeps_the_largest_and_says_what_was_left_out():
    r = model_results()
    assert [row.name for row in r.rows(top=2)] == [MODEL, f"{MODEL}.transformer"]
    text = r.table(top=2, width=100)
    assert "7 more region name(s) not shown" in text and f"{(6 + 4 + 3 + 2 + 0.5 + 4 + 1.5):.3f} ms" in text


def test_match_takes_a_glob_or_a_list_of_globs():
    r = model_results()
    assert {row.name for row in r.rows(match="*.h.0.*")} == {
        f"{MODEL}.transformer.h.0.attn", f"{MODEL}.transformer.h.0.mlp", f"{MODEL}.transformer.h.0.backward",
        f"{MODEL}.transformer.h.0.attn.backward"}
    assert {row.name for row in r.rows(match=["*lm_head", MODEL])} == {MODEL, f"{MODEL}.lm_head"}


def test_depth_keeps_the_outer_regions():
    # the backward regions nest among themselves: h.0's is outermost there (no outer backward region)
    assert {row.name for row in model_results().rows(depth=1)} == {
        MODEL, f"{MODEL}.transformer", f"{MODEL}.lm_head", f"{MODEL}.transformer.h.0.backward",
        f"{MODEL}.transformer.h.0.attn.backward"}


def test_the_tree_lists_children_under_their_parent_without_its_path():
    lines = model_results().table(tree=True, width=120).splitlines()[2:]
    assert lines[0].startswith(MODEL + " ")  # the largest root first, children by total
    assert lines[1].startswith("  transformer ") and lines[2].startswith("    h.1 ") and lines[3].startswith("    h.0 ")
    assert lines[4].startswith("      attn ") and lines[5].startswith("      mlp ")
    assert lines[6].startswith("  lm_head ")
    assert lines[7].startswith(f"{MODEL}.transformer.h.0.backward ") and lines[8].startswith("  attn.backward ")


@pytest.mark.parametrize("width", [60, 80, 200])
def test_tables_fit_the_width_and_keep_the_end_of_every_name(width):
    long = "model.encoder.layers.11.self_attention.query_key_value.lora_adapter"
    r = Results([Sample(long, 0, 1, 0.0, 1.0), Sample("step", 0, 1, 0.0, 2.0)])
    text = r.table(width=width)
    assert all(len(line) <= width for line in text.splitlines()), text
    row = next(line for line in text.splitlines() if "lora_adapter" in line)
    if width < 200:  # shortened from the left, at a path boundary, never cut at the end
        assert row.startswith("….") and ".lora_adapter " in row
    else:
        assert row.startswith(long + " ")


def test_shorten_keeps_the_last_parts():
    assert shorten("transformer.h.10.attn.c_attn", 14) == "….attn.c_attn"
    assert shorten("short", 10) == "short"
    assert len(shorten("a" * 50, 12)) == 12


def test_bad_options_say_what_is_allowed():
    r = model_results()
    with pytest.raises(ValueError, match="sort must be one of total, self"):
        r.rows(sort="time")
    with pytest.raises(ValueError, match="top must be an int >= 1"):
        r.rows(top=0)
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        r.rows(depth=-1)
    with pytest.raises(TypeError, match="match must be a name glob such as 'transformer.h.\\*'"):
        r.rows(match=3)


def test_parents_override_the_names_and_survive_json():
    # LayerTimer's names: the root is the class name, its children plain module paths
    parents = _parents({"": MODEL, "transformer": "transformer", "transformer.h.0": "transformer.h.0",
                        "lm_head": "lm_head"}, backward=True)
    assert parents == {MODEL: None, "transformer": MODEL, "transformer.h.0": "transformer", "lm_head": MODEL,
                       MODEL + ".backward": None, "transformer.backward": MODEL + ".backward",
                       "transformer.h.0.backward": "transformer.backward", "lm_head.backward": MODEL + ".backward"}
    samples = [Sample(MODEL, 0, 1, 0.0, 5.0), Sample("transformer", 0, 1, 0.0, 3.0), Sample("lm_head", 0, 1, 0.0, 1.0)]
    r = Results(samples, parents=parents)
    rows = {row.name: row for row in r.rows()}
    assert rows["transformer"].parent == MODEL and rows[MODEL].self_ms == pytest.approx(1.0)
    again = Results.from_json(r.to_json())
    assert again.parents == parents and json.loads(r.to_json())["parents"] == parents
    assert json.loads(r.to_json())["depths"] == {MODEL: 0, "transformer": 1, "lm_head": 1}


def test_parents_skip_modules_that_were_not_selected():
    assert _parents({"": "Net", "a.b": "a.b"}, backward=False) == {"Net": None, "a.b": "Net"}


def test_print_summary_without_rich_prints_the_plain_table(monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name.startswith("rich")
                        else real(name, *a, **k))
    out = io.StringIO()
    model_results().print_summary(file=out, top=3)
    assert out.getvalue().startswith("name") and "more region name(s) not shown" in out.getvalue()


def test_print_summary_with_rich_fits_80_columns_and_keeps_the_end_of_names():
    pytest.importorskip("rich")
    long = "model.encoder.layers.11.self_attention.query_key_value.lora_adapter"
    out = io.StringIO()
    Results([Sample(long, 0, 1, 0.0, 1.0), Sample("step", 0, 1, 0.0, 2.0)]).print_summary(file=out)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("….query_key_value.lora_adapter" in line for line in lines), out.getvalue()


# -- the pictures' layout (no matplotlib needed for these) -------------------------------------
def test_timeline_depth_stacks_nested_regions_below_their_parent():
    from cudaevents._profiler.plots import _depths

    lane = [Sample("step", 0, 1, 0.0, 10.0), Sample("fwd", 0, 1, 1.0, 4.0), Sample("attn", 0, 1, 1.5, 1.0),
            Sample("bwd", 0, 1, 5.0, 4.0), Sample("next", 0, 1, 10.0, 1.0)]
    assert _depths(lane) == [0, 1, 2, 1, 0]  # "next" starts where "step" ends: not inside it


def test_streams_are_named_in_order_of_appearance_not_by_handle():
    from cudaevents._profiler.plots import _stream_names

    r = Results([Sample("a", 0, 0x7F00, 0.0, 1.0), Sample("b", 0, 0x1234, 0.0, 1.0), Sample("c", 1, 0x99, 0.0, 1.0),
                 Sample("d", -1, 3, 0.0, 1.0)], {(-1, 3): "CPU stream loader"})
    assert _stream_names(r) == {(0, 0x7F00): "GPU 0 stream 1", (0, 0x1234): "GPU 0 stream 2",
                                (1, 0x99): "GPU 1 stream 1", (-1, 3): "CPU stream loader"}


def test_timeline_labels_keep_the_last_path_parts():
    from cudaevents._profiler.plots import _fit

    assert _fit("GPT2LMHeadModel.transformer.h.0", 6) == "h.0"
    assert _fit("GPT2LMHeadModel.transformer.h.0.attn.c_attn", 12) == "attn.c_attn"
    assert _fit("transformer.h.1.mlp", 6) == "mlp" and _fit("transformer.h.1.mlp", 8) == "h.1.mlp"
    assert _fit("model.encoder_self_attention", 8) == "…tention"
    assert _fit("transformer.h.5.backward", 8) == "h.5.bwd" and _fit("transformer.h.5.attn.backward", 8) == "attn.bwd"
    assert _fit("Net.backward", 12) == "Net.bwd" and _fit("backward", 8) == "backward"
    assert _fit("transformer.h.5.mlp.backward", 4) == "mlp"


def test_plots_need_a_known_kind_and_say_how_to_get_matplotlib(tmp_path):
    r = model_results()
    with pytest.raises(ValueError, match="kind must be one of 'bars', 'timeline', 'hist'"):
        r.plot(tmp_path / "x.png", kind="pie")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            r.plot(tmp_path / "x.png")
        return
    for kind in ("bars", "timeline", "hist"):
        path = tmp_path / f"{kind}.png"
        r.plot(path, kind=kind, top=5)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none of the names"):
        r.plot(tmp_path / "h.png", kind="hist", names=["nothing"])
