"""LayerTimer and ``cudaevents profile`` on real PyTorch models on a CUDA device."""

from __future__ import annotations

import itertools

import json
import time
import warnings

import pytest
from helpers.subproc import SCRIPTS, run_cli

from cudaevents import LayerTimer, Timer

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
nn = torch.nn


@pytest.fixture(autouse=True)
def _cuda_torch():
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA device")
    torch.manual_seed(0)
    yield
    torch.cuda.synchronize()


def counts(results):
    return {name: st.count for name, st in results.summary().items()}


def mlp():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 8)).cuda()


def hook_state(model):
    return {
        name: (
            dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
            dict(m._backward_pre_hooks), dict(m._forward_hooks_always_called),
            dict(m._forward_hooks_with_kwargs), dict(m._forward_pre_hooks_with_kwargs),
            m._is_full_backward_hook,
        )
        for name, m in model.named_modules()
    }


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.GELU()
        self.fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("block failed")
        return self.act(self.lin(x)) + x


class Net(nn.Module):
    """Nested modules; ``shared`` is called twice per forward."""

    def __init__(self, width=16):
        super().__init__()
        self.shared = Block(width)
        self.inner = nn.Sequential(Block(width), nn.LayerNorm(width))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        x = self.shared(x)
        x = self.inner(x)
        x = self.shared(x)
        return self.head(x)


def test_forward_and_backward_per_module():
    model = mlp()
    x = torch.randn(128, 32, device="cuda")
    with LayerTimer(model, backward=True) as layers:
        assert layers.names == ["Sequential", "0", "1", "2", "3"]
        for _ in range(3):
            model.zero_grad()
            model(x).square().mean().backward()
    results = layers.results(timeout=60)
    forward = {"Sequential": 3, "0": 3, "1": 3, "2": 3, "3": 3}
    assert counts(results) == {**forward, **{f"{n}.backward": 3 for n in forward}}
    stream = torch.cuda.current_stream().cuda_stream
    for s in results.samples:
        assert s.device == 0 and s.duration_ms >= 0
        if not s.name.endswith(".backward"):
            assert s.stream == stream
    # the root's region holds its children's
    assert results.summary()["Sequential"].total_ms >= results.summary()["0"].total_ms


def test_detach_leaves_no_hooks_and_outputs_are_identical():
    model = mlp()
    x = torch.randn(16, 32, device="cuda")
    before = hook_state(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(x)
    layers = LayerTimer(model, backward=True).attach()
    timed = model(x)
    timed.sum().backward()
    assert hook_state(model) != before
    layers.detach()
    assert hook_state(model) == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(plain, timed) and torch.equal(plain, model(x))
    layers.detach()  # twice is fine
    assert len(layers.results(timeout=60)) == 10


def test_nested_modules_and_a_module_called_twice():
    model = Net().cuda()
    x = torch.randn(8, 16, device="cuda", requires_grad=True)
    with LayerTimer(model, backward=True) as layers:
        for _ in range(2):
            model(x).sum().backward()
    c = counts(layers.results(timeout=60))
    assert c["Net"] == 2 and c["head"] == 2
    assert c["shared"] == 4 and c["shared.lin"] == 4 and c["shared.act"] == 4
    assert c["inner"] == 2 and c["inner.0"] == 2 and c["inner.0.lin"] == 2 and c["inner.1"] == 2
    assert c["shared.backward"] == 4 and c["inner.0.lin.backward"] == 2 and c["Net.backward"] == 2


def test_include_and_leaf_only():
    model = Net().cuda()
    x = torch.randn(8, 16, device="cuda")
    with LayerTimer(model, backward=False, leaf_only=True) as leaves:
        model(x)
    assert set(counts(leaves.results(timeout=60))) == {"shared.lin", "shared.act", "inner.0.lin", "inner.0.act",
                                                        "inner.1", "head"}
    with LayerTimer(model, backward=False, include=nn.Linear) as linears:
        model(x)
    assert counts(linears.results(timeout=60)) == {"shared.lin": 2, "inner.0.lin": 1, "head": 1}
    with LayerTimer(model, backward=False, include=lambda name, m: name in ("", "inner")) as some:
        model(x)
    assert counts(some.results(timeout=60)) == {"inner": 1, "Net": 1}


def test_regions_go_on_the_current_stream_and_a_shared_timer():
    model = mlp()
    timer = Timer()
    side = torch.cuda.Stream()
    x = torch.randn(16, 32, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with LayerTimer(model, timer=timer, backward=False) as layers:
        with torch.cuda.stream(side):
            model(x)
        model(x)
    assert layers.timer is timer
    results = timer.results(timeout=60)
    assert {s.stream for s in results.samples if s.name == "0"} == {side.cuda_stream,
                                                                    torch.cuda.current_stream().cuda_stream}


def test_exception_in_forward_does_not_leak_regions():
    model = Net().cuda()
    x = torch.randn(4, 16, device="cuda")
    layers = LayerTimer(model, backward=False).attach()
    model.inner[0].fail = True
    with pytest.raises(RuntimeError, match="block failed"):
        model(x)
    stack = layers._engine._stack()
    assert stack.modules == [] and stack.tokens == []
    model.inner[0].fail = False
    model(x)
    layers.detach()
    c = counts(layers.results(timeout=60))
    # the failed call's regions ended where the exception passed their hooks
    assert c["Net"] == 2 and c["inner.0"] == 2 and c["inner.0.lin"] == 1 and c["shared"] == 3


def test_hooks_do_not_wait_for_the_gpu():
    model = mlp()
    x = torch.randn(16, 32, device="cuda")
    with LayerTimer(model, backward=True) as layers:
        model(x).sum().backward()  # warm up: kernels loaded, streams borrowed
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000)  # ~1 s or more of GPU time ahead of the model
        t0 = time.perf_counter()
        for _ in range(5):
            model(x).sum().backward()
        host = time.perf_counter() - t0
        assert not torch.cuda.current_stream().query()
    assert host < 0.5, f"the timed steps took {host:.3f} s on the host: something waited for the GPU"
    assert counts(layers.results(timeout=120))["0"] == 6


def test_models_under_cuda_graph_capture_are_not_timed():
    model = mlp()
    x = torch.randn(16, 32, device="cuda")
    with LayerTimer(model, backward=False) as layers:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(x)  # warm up on the capture stream
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
        graph.replay()
        model(x)
    assert counts(layers.results(timeout=60)) == {name: 2 for name in ("Sequential", "0", "1", "2", "3")}


def test_cli_profiles_a_torch_training_script(tmp_path):
    script = SCRIPTS / "profiled" / "torch_train.py"
    out_json = tmp_path / "r.json"
    env = {"COLUMNS": "200"}
    r = run_cli("profile", "--backward", "--json", out_json, script, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "final loss" in r.stdout
    for name in ("fc1", "norm", "fc2", "CrossEntropyLoss", "step"):  # named as LayerTimer names them
        assert name in r.stdout
    data = json.loads(out_json.read_text())
    c = {n: s["count"] for n, s in data["summary"].items()}
    assert c["step"] == 4
    for name in ("Net", "fc1", "act", "norm", "fc2", "CrossEntropyLoss"):
        assert c[name] == 4, c
    for name in ("Net.backward", "fc1.backward", "fc2.backward"):
        assert c[name] == 4, c
    assert data["parents"]["fc1"] == "Net" and data["parents"]["fc1.backward"] == "Net.backward"
    # no-layers: only the script's own region
    r = run_cli("profile", "--no-layers", "--json", out_json, script, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(out_json.read_text())["summary"]) == {"step"}


def test_a_transformer_from_a_config_end_to_end(tmp_path):
    """GPT-2 from a config (random weights, bf16, nothing downloaded): training steps' forward
    and backward timed per module down to 4 levels of module path, with no PyTorch warning and
    the same gradients as untimed, read back as a tree, a trace and pictures."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=2, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = transformers.GPT2LMHeadModel(cfg).cuda().to(torch.bfloat16)
    x = torch.randint(0, 256, (2, 32), device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        model(x, labels=x).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = step()
    with LayerTimer(model, depth=4, backward=True) as layers, warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            timed = step()
            layers.timer.step()
    assert all(torch.equal(a, b) for a, b in zip(plain, timed))
    r = layers.results(timeout=60)
    c = counts(r)
    for name in ("GPT2LMHeadModel", "transformer", "transformer.h.0", "transformer.h.1.attn", "lm_head"):
        assert c[name] == 3 and c[name + ".backward"] == 3, c
    assert "transformer.h.0.attn.c_attn" not in c  # 5 levels down
    summary = r.summary()
    assert summary["GPT2LMHeadModel"].total_ms >= summary["transformer"].total_ms > 0
    blocks = summary["transformer.h.0.backward"].total_ms + summary["transformer.h.1.backward"].total_ms
    assert summary["GPT2LMHeadModel.backward"].total_ms >= summary["transformer.backward"].total_ms >= blocks > 0
    assert r.parents["transformer.h.0.backward"] == "transformer.h.backward"
    tree = r.rows(tree=True)  # (the forward and backward roots come in order of their totals)
    names = [row.name for row in tree]
    root = names.index("GPT2LMHeadModel")
    subtree = list(itertools.takewhile(lambda row: row.depth > 0, tree[root + 1:]))
    assert tree[root].depth == 0 and tree[root].self_ms >= 0
    assert {row.name for row in subtree if row.depth == 1} == {"transformer", "lm_head"}
    assert r.classes["transformer.h.0"] == "GPT2Block" and {s.step for s in r.samples} == {0, 1, 2}
    trace = r.to_chrome_trace(tmp_path / "trace.json")
    assert {e["args"].get("module") for e in trace["traceEvents"] if e["ph"] == "X"} >= {"GPT2Block", "GPT2Attention"}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for kind in ("bars", "timeline", "hist"):
        r.plot(tmp_path / f"{kind}.png", kind=kind)


class _SlowBackward(torch.autograd.Function):
    """An identity whose backward spins the GPU for ``cycles`` clock cycles."""

    @staticmethod
    def forward(ctx, x, cycles):
        ctx.cycles = cycles
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        torch.cuda._sleep(ctx.cycles)
        return grad, None


class _Slow(nn.Module):
    def forward(self, x):
        # about 10 ms at the H200's clock, and more below it: far beyond the host time a region
        # of this host-bound model spends waiting for its next launch
        return _SlowBackward.apply(x, 20_000_000)


def test_backward_regions_hold_each_modules_own_gpu_work():
    """The spin kernel of the middle module's backward lands in its backward region (and its
    parent's), not in its neighbours'; forward regions do not see it."""
    model = nn.Sequential(nn.Linear(64, 64), _Slow(), nn.Linear(64, 64)).cuda()
    x = torch.randn(32, 64, device="cuda")
    model(x).sum().backward()  # warm up the kernels, the spin kernel too
    with LayerTimer(model, backward=True) as layers:
        for _ in range(3):
            model(x).sum().backward()
    s = layers.results(timeout=60).summary()
    slow = s["1.backward"].median_ms
    assert slow > 5, s
    assert slow > 5 * max(s["0.backward"].median_ms, s["2.backward"].median_ms, s["1"].median_ms), s
    assert s["Sequential.backward"].median_ms >= slow
    stream = torch.cuda.current_stream().cuda_stream
    assert {smp.stream for smp in layers.results(timeout=60).samples} == {stream}
