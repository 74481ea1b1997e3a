"""LayerTimer's backward on the compiled path against the pure-Python one, in one process: the
same program on each (the simulated driver bound, regions on a simulated GPU stream through a
real Timer) gives the same regions, at the same records, interleaved the same way with the
autograd nodes; and on the compiled path the engine's per-call methods run in C. Skipped where
torch or the extension is missing."""

from __future__ import annotations

import sys

import pytest
from helpers.fake_driver import FakeDriver, bound
from helpers.fakes import fake_stream

import cudaevents as ce
from cudaevents._core import compiled

torch = pytest.importorskip("torch")

from helpers.torch_modules import Attention, Leaf  # noqa: E402  (they need torch)

pytestmark = pytest.mark.skipif(compiled._hot is None, reason=f"{compiled._missing}")
nn = torch.nn

# What runs per module call and per backward hook: on the compiled path, never a Python frame.
HOT = {"_Engine.begin_forward", "_Engine.end_forward", "_Engine._stream_for", "_Engine._arm_end",
       "_Engine._arm_begin", "_Engine.begin_backward", "_Engine.end_backward", "_Engine._meet",
       "_Engine._backward_stack", "_grad_nodes", "_encloses", "_Call.__init__", "Timer._meet", "Timer._share",
       "_Engine._arm_end.<locals>.<lambda>", "_Engine._arm_begin.<locals>.<lambda>"}  # (the hooks on nodes)


class _Log(list):
    """Where autograd ran each tagged node: (what, name, records the simulated GPU had by then)."""

    def __init__(self, gpu):
        super().__init__()
        self.gpu = gpu

    def append(self, entry):
        super().append((*entry, self.gpu.records))


def _gpt2(log):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = transformers.GPT2LMHeadModel(cfg)
    x = torch.randint(0, 64, (2, 8))

    def run(layers, warm):
        for i in range(3):
            if i == 1:
                warm()  # from here on, the thread's stacks and the timer's spare events exist
            model.zero_grad(set_to_none=True)
            model(x, labels=x).loss.backward()
    return model, run


def _passthrough(log):
    """nn.Identity, an in-place ReLU after a hooked module, a dict output."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act, self.same, self.out = nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Identity(), nn.Linear(4, 2)

        def forward(self, x):
            return {"y": self.out(self.same(self.act(self.lin(x)))), "n": 3}

    model = Model()

    def run(layers, warm):
        for _ in range(2):
            model(torch.randn(5, 4))["y"].square().sum().backward()
    return model, run


def _shared_output_nodes(log):
    """Parents whose output is their last child's (one node begins them all), siblings reading
    one input, work of an enclosing module between its children's backwards."""
    model = nn.Sequential(Leaf("first", log), Attention(log), nn.Sequential(nn.Linear(3, 3), nn.Sequential(
        nn.Linear(3, 3), nn.Tanh())), Leaf("last", log))

    def run(layers, warm):
        model(torch.randn(2, 3, requires_grad=True)).sum().backward()
    return model, run


def _retain_graph(log):
    model = nn.Sequential(Leaf("a", log), nn.Linear(4, 4), Leaf("b", log))

    def run(layers, warm):
        loss = model(torch.randn(2, 4)).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    return model, run


def _second_order(log):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), Leaf("t", log), nn.Linear(4, 1))

    def run(layers, warm):
        x = torch.randn(2, 4, requires_grad=True)
        (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        g.square().sum().backward()
    return model, run


def _checkpoint(log):
    from torch.utils.checkpoint import checkpoint

    class C(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.t, self.b = nn.Linear(4, 4), Leaf("t", log), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(checkpoint(lambda y: self.t(self.a(y)), x, use_reentrant=True)).sum()

    model = C()

    def run(layers, warm):
        model(torch.randn(2, 4, requires_grad=True)).backward()
    return model, run


def _raises_mid_backward(log):
    model = nn.Sequential(Leaf("a", log), nn.Linear(4, 4), Leaf("b", log), nn.Linear(4, 1))

    def fail(grad):
        raise RuntimeError("backward failed")

    def run(layers, warm):
        out = model(torch.randn(2, 4, requires_grad=True))
        handle = model[1].weight.register_hook(fail)
        with pytest.raises(RuntimeError, match="backward failed"):
            out.sum().backward()
        handle.remove()
        model(torch.randn(2, 4, requires_grad=True)).sum().backward()
    return model, run


def _detach_while_armed(log):
    model = nn.Sequential(Leaf("a", log), nn.Linear(4, 4), Leaf("b", log))

    def run(layers, warm):
        out = model(torch.randn(2, 4))
        layers.detach()
        out.sum().backward()  # disarmed: nothing timed
        with ce.LayerTimer(model, timer=layers.timer, stream=layers._stream, backward=True):
            model(torch.randn(2, 4)).sum().backward()
        layers.attach()
    return model, run


def _discard_and_reset(log):
    model = nn.Sequential(Leaf("a", log), nn.Linear(4, 4), Leaf("b", log))

    def run(layers, warm):
        out = model(torch.randn(2, 4))
        assert layers._engine.discard_open() == 0
        out.sum().backward()  # armed before the discard: nothing timed
        model(torch.randn(2, 4)).sum().backward()
        layers.timer.synchronize(timeout=10)
        layers.reset()
        model(torch.randn(2, 4)).sum().backward()
    return model, run


SCENARIOS = [_gpt2, _passthrough, _shared_output_nodes, _retain_graph, _second_order, _checkpoint,
             _raises_mid_backward, _detach_while_armed, _discard_and_reset]


def _trace(monkeypatch, scenario, path: bool):
    """Run ``scenario`` on one path: its samples (name, start and duration on the clock of a
    simulated GPU that keeps up, which counts records), where autograd ran the tagged nodes, the pool's live
    events at the end, and the Python functions of cudaevents that ran (by qualified name;
    since the scenario last called ``warm()``)."""
    compiled.use(path)
    try:
        with bound(monkeypatch, FakeDriver(keeps_up=True)) as gpu:
            assert compiled.active() == path, compiled.describe()
            torch.manual_seed(0)
            log = _Log(gpu)
            model, run = scenario(log)
            pool = ce.EventPool()
            timer = ce.Timer(pool=pool, harvest_every=16, nvtx=False)
            ran = set()
            warm = ran.clear

            def profile(frame, event, arg):
                if event == "call" and "cudaevents" in frame.f_code.co_filename:
                    ran.add(frame.f_code.co_qualname)

            with ce.LayerTimer(model, timer=timer, stream=fake_stream(0x10), backward=True) as layers:
                sys.setprofile(profile)
                try:
                    run(layers, warm)
                finally:
                    sys.setprofile(None)
                assert layers._engine.open_backward() == 0
            samples = sorted((s.name, s.start_ms, s.duration_ms, s.step) for s in timer.results(timeout=10).samples)
            live = pool.stats().live
            # dropped under the simulation: nothing of it may reach a GPU machine's real driver later
            model = run = layers = timer = pool = None
            return samples, list(log), live, ran
    finally:
        compiled.use(None)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="co_qualname")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_the_compiled_backward_gives_what_the_python_one_gives(monkeypatch, scenario):
    fast, fast_log, fast_live, fast_ran = _trace(monkeypatch, scenario, True)
    slow, slow_log, slow_live, slow_ran = _trace(monkeypatch, scenario, False)
    assert fast == slow and fast_log == slow_log and fast_live == slow_live
    assert any(name.endswith(".backward") for name, *_ in fast)
    assert {"_Engine.begin_backward", "_Engine._meet", "_Engine._arm_begin"} <= slow_ran
    if scenario is _gpt2:  # nothing unusual: every call stays in C
        assert not HOT & fast_ran, HOT & fast_ran
        assert "Timer._meet" in slow_ran and "_Engine.end_backward" in slow_ran
