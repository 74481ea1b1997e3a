"""The hook logic of LayerTimer and of ``cudaevents profile``'s global hooks, on the CPU: every
region goes to a CpuStream stand-in (``stream=``), so pairing, naming, counts, exceptions and
detaching are checked without a GPU. Skipped where torch is not installed (CI); the GPU
versions are in test_gpu_torch_layers.py."""

from __future__ import annotations

import json
import threading
import warnings

import pytest
from helpers.subproc import NO_GPU, SCRIPTS, run_cli
from helpers.threads import join_all

from cudaevents import CpuStream, LayerTimer, Timer

torch = pytest.importorskip("torch")

from helpers.torch_modules import Attention, Leaf  # noqa: E402  (they need torch)

pytestmark = pytest.mark.usefixtures("hot_path")  # every test on the compiled and the pure-Python path
nn = torch.nn


@pytest.fixture
def cpu():
    s = CpuStream("stand-in")
    yield s
    s.close(timeout=30)


def counts(results):
    return {name: st.count for name, st in results.summary().items()}


class Block(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.fail = None  # an exception to raise

    def forward(self, x):
        if self.fail is not None:
            raise self.fail
        return self.act(self.lin(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = Block()
        self.inner = nn.Sequential(Block(), nn.LayerNorm(4))
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.shared(self.inner(self.shared(x))))


def hook_state(model):
    return {
        name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
               dict(m._backward_pre_hooks), dict(m._forward_hooks_always_called),
               dict(m._forward_hooks_with_kwargs), dict(m._forward_pre_hooks_with_kwargs), m._is_full_backward_hook)
        for name, m in model.named_modules()
    }


def test_names_counts_and_detach(cpu):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    before, plain = hook_state(model), model(x)
    with LayerTimer(model, stream=cpu, backward=True) as layers:
        assert layers.attached and layers.names == ["Sequential", "0", "1", "2", "3"]
        for _ in range(3):
            out = model(x)
            out.sum().backward()
    assert not layers.attached
    assert torch.equal(out, plain)
    assert hook_state(model) == before
    forward = ["Sequential", "0", "1", "2", "3"]
    assert counts(layers.results(timeout=30)) == {**{n: 3 for n in forward}, **{f"{n}.backward": 3 for n in forward}}


def test_nested_shared_and_exceptions(cpu):
    model = Net()
    layers = LayerTimer(model, stream=cpu, backward=True).attach()
    x = torch.randn(2, 4, requires_grad=True)
    model(x).sum().backward()
    model.inner[0].fail = RuntimeError("block failed")
    with pytest.raises(RuntimeError):
        model(x)
    assert layers._engine._stack().modules == []  # ended by the always_call forward hooks
    model.inner[0].fail = None
    model(x)
    layers.detach()
    c = counts(layers.results(timeout=30))
    assert c["Net"] == 3 and c["shared"] == 5 and c["shared.lin"] == 5 and c["inner.0"] == 3
    assert c["inner.0.lin"] == 2 and c["inner"] == 3 and c["head"] == 2
    assert c["shared.backward"] == 2 and c["Net.backward"] == 1 and c["inner.0.lin.backward"] == 1


def test_keyboard_interrupt_leaves_regions_that_the_next_forward_drops(cpu):
    model = Net()
    layers = LayerTimer(model, stream=cpu, backward=False).attach()
    model.inner[0].fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        model(torch.randn(2, 4))
    stack = layers._engine._stack()
    assert [m.name for m in stack.modules] == ["Net", "inner", "inner.0"]  # no hook saw it
    model.inner[0].fail = None
    model(torch.randn(2, 4))
    assert stack.modules == []
    layers.detach()
    c = counts(layers.results(timeout=30))
    assert c["Net"] == 1 and c["inner"] == 1 and c["inner.0"] == 1 and c["shared"] == 3


def test_detach_drops_open_regions(cpu):
    model = Net()
    layers = LayerTimer(model, stream=cpu, backward=False).attach()
    model.inner[0].fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        model(torch.randn(2, 4))
    assert layers._engine.discard_open() == 3
    layers.detach()
    assert set(counts(layers.results(timeout=30))) == {"shared", "shared.lin", "shared.act"}


def test_a_backward_pass_that_stops_inside_the_model_ends_its_regions_with_it(cpu):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    layers = LayerTimer(model, stream=cpu, backward=True).attach()
    seen = {}
    model[0].register_forward_hook(lambda m, a, out: seen.setdefault("h", out))
    out = model(torch.randn(2, 4, requires_grad=True))
    # the gradient of the first layer's output only: its backward never begins
    torch.autograd.grad(out.sum(), seen["h"])
    assert layers._engine.open_backward() == 0
    layers.detach()
    assert counts(layers.results(timeout=30)) == {"Sequential": 1, "0": 1, "1": 1, "2": 1, "2.backward": 1,
                                                  "1.backward": 1, "Sequential.backward": 1}


def test_reentrant_checkpoint(cpu):
    from torch.utils.checkpoint import checkpoint

    class C(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.b(checkpoint(self.a, x, use_reentrant=True)).sum()

    model = C()
    with LayerTimer(model, stream=cpu, backward=True) as layers:
        model(torch.randn(2, 4, requires_grad=True)).backward()
        assert layers._engine.open_backward() == 0
    # the recomputation inside backward is a second forward of `a`
    assert counts(layers.results(timeout=30)) == {"a": 2, "b": 1, "C": 1, "C.backward": 1, "b.backward": 1,
                                                  "a.backward": 1}


def test_include_leaf_only_and_kwargs(cpu):
    model = Net()
    x = torch.randn(2, 4)
    with LayerTimer(model, stream=cpu, backward=False, leaf_only=True) as layers:
        model(x)
    assert set(counts(layers.results(timeout=30))) == {"shared.lin", "shared.act", "inner.0.lin", "inner.0.act",
                                                       "inner.1", "head"}
    with LayerTimer(model, stream=cpu, backward=False, include=(nn.Linear, nn.LayerNorm)) as layers:
        model(x)
    assert counts(layers.results(timeout=30)) == {"shared.lin": 2, "inner.0.lin": 1, "inner.1": 1, "head": 1}
    with LayerTimer(model, stream=cpu, include="inner.*") as layers:  # a glob on region names
        model(x)
    assert set(counts(layers.results(timeout=30))) == {"inner.0", "inner.0.lin", "inner.0.act", "inner.1"}
    with LayerTimer(model, stream=cpu, include=["Net", nn.LayerNorm]) as layers:  # the root's name, a class
        model(x)
    assert set(counts(layers.results(timeout=30))) == {"Net", "inner.1"}
    with LayerTimer(model, stream=cpu, depth=1) as layers:  # the root and its children
        model(x)
    r = layers.results(timeout=30)
    assert set(counts(r)) == {"Net", "shared", "inner", "head"}
    assert r.classes["inner"] == "Sequential" and r.parents["inner"] == "Net"
    again = type(r).from_json(r.to_json())
    assert again.classes == r.classes and again.parents == r.parents
    with pytest.raises(TypeError, match="a name glob such as 'transformer.h.\\*'"):
        LayerTimer(model, include=3)
    with pytest.raises(TypeError):
        LayerTimer(model, include=[])
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        LayerTimer(model, depth=-1)
    with pytest.raises(TypeError):
        LayerTimer(object())


def test_threads_pair_their_own_regions(cpu):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    errors = []

    def work():
        try:
            for _ in range(100):
                model(torch.randn(2, 4))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    with LayerTimer(model, stream=cpu, backward=False) as layers:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors
    assert counts(layers.results(timeout=30)) == {"Sequential": 400, "0": 400, "1": 400}


def test_cpu_inputs_are_not_timed_without_a_stream():
    model = nn.Linear(4, 4)
    with LayerTimer(model, backward=True) as layers:
        model(torch.randn(2, 4)).sum().backward()
    assert len(layers.results(timeout=30)) == 0


def test_attach_twice_is_an_error(cpu):
    layers = LayerTimer(nn.Linear(2, 2), stream=cpu).attach()
    with pytest.raises(RuntimeError):
        layers.attach()
    layers.detach()


def test_global_hooks_name_modules_by_root(cpu):
    from cudaevents._profiler.torch_layers import GlobalLayerHooks

    mm = torch.nn.modules.module

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(nn.ReLU()(self.enc(x)))  # a module built inside forward

    timer = Timer()
    hooks = GlobalLayerHooks(timer, backward=True, stream=cpu).attach()
    try:
        a, b, loss_fn = Model(), Model(), nn.MSELoss()
        for _ in range(2):
            loss = loss_fn(a(torch.randn(3, 4)), torch.zeros(3, 2)) + loss_fn(b(torch.randn(3, 4)), torch.zeros(3, 2))
            loss.backward()
            nn.Linear(2, 2)(torch.randn(1, 2))  # a temporary root: its name is reused
    finally:
        assert hooks.detach() == 0
    assert not (mm._global_forward_hooks or mm._global_forward_pre_hooks or mm._global_backward_hooks
                or mm._global_backward_pre_hooks or mm._global_forward_hooks_always_called)
    assert mm._global_is_full_backward_hook is None
    c = counts(timer.results(timeout=30))
    # as LayerTimer names them: the first root's modules by their path in it; the second
    # root's, whose paths are taken, under its name; a module built in forward after its caller
    for name in ("Model", "enc", "enc.0", "enc.1", "Model.ReLU", "head",
                 "Model#2", "Model#2.enc", "Model#2.enc.0", "Model#2.enc.1", "Model#2.ReLU", "Model#2.head"):
        assert c[name] == 2 and c[name + ".backward"] == 2, (name, c)
    assert c["MSELoss"] == 4 and c["Linear"] == 2
    parents = hooks.parents
    assert parents["enc.0"] == "enc" and parents["enc"] == "Model" and parents["Model"] is None
    assert parents["Model#2.enc.1"] == "Model#2.enc" and parents["Model.ReLU"] == "Model"
    assert parents["enc.0.backward"] == "enc.backward"
    assert hooks.classes["enc.0"] == "Linear" and hooks.classes["Model#2"] == "Model"


# --backward adds no module backward hooks: backward is timed through autograd nodes
@pytest.mark.parametrize("options, expect", [([], "global hooks: 1 1 0"), (["--backward"], "global hooks: 1 1 0"),
                                             (["--no-layers"], "global hooks: 0 0 0")])
def test_cli_hooks_torch_when_the_script_imports_it(options, expect):
    script = SCRIPTS / "profiled" / "torch_hooks.py"
    r = run_cli("profile", *options, script, "--torch", timeout=120, env=NO_GPU)
    assert r.returncode == 0, r.stderr
    assert "torch imported at start: False" in r.stdout
    assert expect in r.stdout


def test_auto_stream_resolution_is_cached_per_device_and_handle(monkeypatch):
    """The CUDA path of the hooks, with torch's CUDA calls and as_stream() faked: the device
    comes from the first CUDA tensor input, the stream from torch's current raw stream, and
    as_stream() runs once per distinct (device, handle)."""
    from cudaevents._profiler import torch_layers as _torch_layers

    class FakeCuda:  # stands for a CUDA tensor
        is_cuda = True

        def __init__(self, device):
            self.device = device

        def get_device(self):
            return self.device

    class FakeHost:
        is_cuda = False

    class FakeTimer:
        def __init__(self):
            self.calls = []

        def begin(self, name, stream):
            self.calls.append(("begin", name, stream))
            return (name, stream)

        def end(self, token):
            self.calls.append(("end",) + token)

    current = {0: 100, 1: 200}  # device -> torch's current raw stream handle
    borrowed = []

    class TorchStream:
        def __init__(self, device):
            self.cuda_stream = current[device]

    def fake_as_stream(obj):
        borrowed.append(obj.cuda_stream)
        return f"gpu-stream-{obj.cuda_stream:x}"

    monkeypatch.setattr(_torch_layers, "as_stream", fake_as_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: TorchStream(device))
    timer = FakeTimer()
    engine = _torch_layers._Engine(timer)
    engine._Tensor = (FakeCuda, FakeHost)
    engine._raw_stream = lambda device: current[device]
    capturing = [False]
    engine._capturing = lambda: capturing[0]
    state = _torch_layers._Module("m")

    def call(args, kwargs=None):
        engine.begin_forward(state, args, kwargs)
        engine.end_forward(state)

    call((FakeCuda(0),))
    call((FakeCuda(0),))
    call((3, [FakeHost(), FakeCuda(1)]))  # one level into lists
    current[0] = 101  # a side stream became current on device 0
    call((FakeCuda(0),))
    call((), {"x": FakeCuda(1)})  # keyword arguments
    call(("no tensors",))  # the device last seen: 1
    call((FakeHost(),))  # host tensors only: not timed
    capturing[0] = True
    call((FakeCuda(0),))  # capturing a CUDA graph: not timed
    streams = [c[2] for c in timer.calls if c[0] == "begin"]
    assert streams == ["gpu-stream-64", "gpu-stream-64", "gpu-stream-c8", "gpu-stream-65", "gpu-stream-c8",
                       "gpu-stream-c8"]
    assert borrowed == [100, 200, 101]
    assert [c[0] for c in timer.calls] == ["begin", "end"] * 6
    assert engine._stack().modules == []


def test_backward_that_raises_leaves_nothing_open_after_the_next_forward(cpu):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    layers = LayerTimer(model, stream=cpu, backward=True).attach()

    def fail(grad):
        raise RuntimeError("backward failed")

    out = model(torch.randn(2, 4, requires_grad=True))
    model[0].weight.register_hook(fail)  # raises in the middle of the backward pass
    with pytest.raises(RuntimeError, match="backward failed"):
        out.sum().backward()
    engine = layers._engine
    model(torch.randn(2, 4))
    assert not engine._callback_queued
    assert engine.open_backward() == 0
    layers.detach()


def test_reset_forgets_what_was_collected_and_keeps_timing(cpu):
    model = nn.Linear(2, 2)
    with LayerTimer(model, stream=cpu) as layers:
        model(torch.randn(1, 2))
        layers.timer.synchronize(timeout=30)
        layers.reset()
        model(torch.randn(1, 2))
        assert counts(layers.results(timeout=30)) == {"Linear": 1}


def test_a_transformer_from_a_config_reads_as_its_module_tree(cpu):
    """GPT-2 from a config (random weights, nothing downloaded), forward timed on a CpuStream
    stand-in: every module is a region named by its path, and the tree and the trace follow
    the model's structure. (On the GPU: test_gpu_torch_layers.py.)"""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with LayerTimer(model, stream=cpu) as layers, torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 128, (1, 16)))
            layers.timer.step()
    r = layers.results(timeout=60)
    names = {("GPT2LMHeadModel" if q == "" else q) for q, _ in model.named_modules()}
    assert set(r.names()) <= names and {"GPT2LMHeadModel", "transformer", "transformer.h.1.mlp"} <= set(r.names())
    assert all(st.count == 2 for st in r.summary().values() if st.count)
    tree = [row for row in r.rows(tree=True, depth=2)]
    assert [row.name for row in tree[:2]] == ["GPT2LMHeadModel", "transformer"]
    assert {row.name for row in tree if row.depth == 2} >= {"transformer.h.0", "transformer.h.1", "transformer.wte"}
    assert r.classes["transformer.h.0"] == "GPT2Block" and r.parents["transformer.h.0.attn"] == "transformer.h.0"
    assert {s.step for s in r.samples} == {0, 1}


class _LoggingTimer:
    """Stands for a Timer: logs each region's begin and end."""

    def __init__(self, log):
        self.log = log

    def begin(self, name, stream):
        if name.endswith(".backward"):
            self.log.append(("begin", name))
        return name

    def end(self, token):
        if token.endswith(".backward"):
            self.log.append(("end", token))

    def discard(self, token, pop_nvtx=True):
        self.log.append(("discard", token))


def test_backward_regions_hold_their_own_modules_work(cpu):
    """Each backward region begins where autograd is about to run the node that made the
    module's output and ends before the work of what came before it: siblings reading one
    input end one another, the enclosing module's own work outside them, the first layer
    with the pass."""
    log = []
    model = nn.Sequential(Leaf("first", log), Attention(log), Leaf("last", log))
    x = torch.randn(3, requires_grad=True)
    with LayerTimer(model, timer=_LoggingTimer(log), stream=cpu, backward=True) as layers:
        out = model(x)
        assert log == []  # the forward only armed hooks
        out.sum().backward()
        assert layers._engine.open_backward() == 0
    b, e = (lambda n: ("begin", n + ".backward")), (lambda n: ("end", n + ".backward"))
    assert log == [b("Sequential"), b("2"), ("ran", "last"), e("2"),
                   b("1"), ("ran", "post"),
                   b("1.v"), ("ran", "v"), e("1.v"),
                   b("1.k"), ("ran", "k"), e("1.k"),
                   b("1.q"), ("ran", "q"), e("1.q"),
                   ("ran", "pre"), e("1"),
                   b("0"), ("ran", "first"), e("0"), e("Sequential")]


def test_backward_timing_changes_no_gradient_and_warns_nothing(cpu):
    """In-place activations after hooked modules, a dict output, a pass-through module and
    inputs that need no gradient: what PyTorch's full backward hooks refuse or warn about."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = nn.ReLU(inplace=True)
            self.same = nn.Identity()
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return {"y": self.out(self.same(self.act(self.lin(x)))), "n": 3}

    torch.manual_seed(0)
    model, x = Model(), torch.randn(5, 4)

    def grads():
        model.zero_grad()
        model(x)["y"].square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    with LayerTimer(model, stream=cpu, backward=True) as layers, warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            timed = grads()
    assert all(torch.equal(a, b) for a, b in zip(plain, timed))
    c = counts(layers.results(timeout=30))
    assert c == {"Model": 2, "lin": 2, "act": 2, "same": 2, "out": 2, "Model.backward": 2, "lin.backward": 2,
                 "act.backward": 2, "out.backward": 2}  # nn.Identity has no backward of its own


def test_detach_disarms_the_backward_of_a_forward_before_it(cpu):
    log = []
    model = nn.Sequential(Leaf("a", log), Leaf("b", log))
    layers = LayerTimer(model, timer=_LoggingTimer(log), stream=cpu, backward=True).attach()
    out = model(torch.randn(2, requires_grad=True))
    layers.detach()
    out.sum().backward()
    assert log == [("ran", "b"), ("ran", "a")]
    with torch.no_grad(), LayerTimer(model, timer=_LoggingTimer(log), stream=cpu, backward=True) as layers:
        model(torch.randn(2))  # no autograd graph: nothing armed, nothing held
        assert layers._engine._stack().calls == [] and layers._engine._stack().last_node is None


def test_a_transformer_training_step_times_every_modules_backward(cpu):
    """GPT-2 from a config, trained a step with forward and backward of every module timed: no
    warning, the gradients of the untimed step, and a backward region for each module that
    does work of its own (not the ModuleList, which never runs)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    x = torch.randint(0, 128, (2, 16))

    def step():
        model.zero_grad(set_to_none=True)
        model(x, labels=x).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = step()
    with LayerTimer(model, stream=cpu, backward=True) as layers, warnings.catch_warnings():
        warnings.simplefilter("error")
        timed = step()
        assert layers._engine.open_backward() == 0
    assert all(torch.equal(a, b) for a, b in zip(plain, timed))
    r = layers.results(timeout=60)
    c = counts(r)
    ran = {n for n in c if not n.endswith(".backward")}
    assert "transformer.h" not in ran and "transformer.h.1.mlp.c_fc" in ran
    no_backward = {n for n in ran if n + ".backward" not in c}
    assert no_backward <= {"transformer.drop", "transformer.h.0.attn.attn_dropout", "transformer.h.1.attn.attn_dropout",
                           "transformer.h.0.attn.resid_dropout", "transformer.h.1.attn.resid_dropout",
                           "transformer.h.0.mlp.dropout", "transformer.h.1.mlp.dropout"}, no_backward
    assert r.parents["transformer.h.0.backward"] == "transformer.h.backward"
    rows = {row.name: row for row in r.rows(tree=True)}
    assert rows["transformer.h.0.backward"].depth > rows["transformer.backward"].depth


def test_backward_regions_that_meet_share_one_record(fake_driver, fake_pool):
    """On a GPU stream (here of the simulated driver), where one module's backward ends as the
    next one's begins, one timing event serves both: the backward of four modules costs four
    records, not eight, and every event goes back to the pool once."""
    from helpers.fakes import fake_stream

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    timer = Timer(pool=fake_pool, nvtx=False)
    with LayerTimer(model, timer=timer, stream=fake_stream(0x10), backward=True):
        out = model(torch.randn(2, 4))
        forward = fake_driver.records  # 4 pairs and the timer's reference event
        out.sum().backward()
        assert forward == 9 and fake_driver.records - forward == 4
    fake_driver.run()
    r = timer.results(timeout=5)
    assert counts(r) == {n: 1 for n in ["Sequential", "0", "1", "2", "Sequential.backward", "2.backward",
                                         "1.backward", "0.backward"]}
    s = {smp.name: smp for smp in r.samples}
    assert s["2.backward"].start_ms == s["Sequential.backward"].start_ms
    assert s["2.backward"].start_ms + s["2.backward"].duration_ms == s["1.backward"].start_ms
    assert fake_pool.stats().live == 1  # the reference event


def test_a_graph_kept_for_another_pass_is_timed_in_each(cpu):
    """retain_graph=True: the second backward pass over the same graph has its own regions."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with LayerTimer(model, stream=cpu, backward=True) as layers:
        loss = model(torch.randn(2, 4)).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        assert layers._engine.open_backward() == 0
    c = counts(layers.results(timeout=30))
    assert all(c[f"{n}.backward"] == 2 for n in ("Sequential", "0", "1", "2")), c


def test_second_order_gradients_time_the_first_pass(cpu):
    """create_graph=True: the first backward is timed per module; the gradient of the
    gradient runs nodes the first pass made, with no module hooks of their own."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(2, 4, requires_grad=True)
    with LayerTimer(model, stream=cpu, backward=True) as layers:
        (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        g.square().sum().backward()
        assert layers._engine.open_backward() == 0
    c = counts(layers.results(timeout=30))
    assert c["Sequential.backward"] >= 1 and c["0.backward"] >= 1 and c["2.backward"] >= 1, c


def test_two_models_training_in_two_threads_share_a_timer(fake_driver, fake_pool):
    """Two models, a LayerTimer each on one shared Timer and one (simulated) GPU stream, trained
    in two threads at once while the GPU runs: every forward and backward region arrives, and
    every event goes back to the pool once."""
    from helpers.fakes import fake_stream

    s = fake_stream(0x40)
    timer = Timer(pool=fake_pool, harvest_every=8, nvtx=False)
    models = [nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)) for _ in range(2)]

    def train(model):
        for _ in range(30):
            model(torch.randn(3, 4)).sum().backward()

    with fake_driver.running(), LayerTimer(models[0], timer=timer, stream=s, backward=True), \
            LayerTimer(models[1], timer=timer, stream=s, backward=True):
        workers = [threading.Thread(target=train, args=(m,)) for m in models]
        for w in workers:
            w.start()
        join_all(workers, timeout=60)
    c = counts(timer.results(timeout=10))
    assert c == {n: 60 for n in ["Sequential", "0", "1", "2", "Sequential.backward", "0.backward", "1.backward",
                                 "2.backward"]}
    assert fake_driver.twice == [] and fake_pool.stats().live == 1


def test_cli_starts_a_step_at_each_optimizer_step(tmp_path):
    """Under ``cudaevents profile`` every optimizer step ends a step: the regions of a training
    loop's iterations carry their index, in the JSON too."""
    out = tmp_path / "run.json"
    r = run_cli("profile", "--json", out, SCRIPTS / "profiled" / "cpu_train.py", timeout=120, env=NO_GPU)
    assert r.returncode == 0, r
    steps = [s["step"] for s in json.loads(out.read_text())["samples"] if s["name"] == "batch"]
    assert steps == [0, 1, 2]


def test_a_forward_left_by_an_exception_holds_no_autograd_node_after_the_next_forward(cpu):
    """The engine keeps one node of the graph being built (the last begin hook's) and drops it
    when the outermost forward ends; a forward that an exception left past every hook drops
    it at the model's next forward, so the graph it belongs to can be freed."""
    model = Net()
    layers = LayerTimer(model, stream=cpu, backward=True).attach()
    model.inner[0].fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        model(torch.randn(2, 4))
    stack = layers._engine._stack()
    assert stack.last_node is not None  # the first call of `shared` armed its begin hook
    layers._engine.discard_stale_forward()  # what the model's next forward does first
    assert stack.last_node is None and stack.modules == []
    layers.detach()


def test_a_graph_never_backwarded_is_freed(cpu):
    """Inference with autograd recording and backward timing on: dropping the output frees the
    graph (the hooks armed on its nodes keep nothing alive). A node of the graph holds the only
    reference to a marker object; the marker goes with the graph."""
    import gc
    import weakref

    class Marker:
        pass

    class Keep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, marker):
            ctx.marker = marker
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    class Marked(nn.Module):
        def forward(self, x, marker):
            return Keep.apply(x, marker)

    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    marked, head = Marked(), nn.Linear(8, 1)
    with LayerTimer(model, stream=cpu, backward=True), LayerTimer(head, stream=cpu, backward=True):
        marker = Marker()
        gone = weakref.ref(marker)
        out = head(marked(model(torch.randn(2, 4)), marker))
        del marker
        assert gone() is not None  # the graph holds it
        del out
        gc.collect()
        assert gone() is None


def test_global_hooks_drop_what_a_raising_backward_left_at_the_next_forward(cpu):
    """``cudaevents profile``'s hooks have no model of their own to watch: a forward outside
    any backward pass drops the regions a backward pass that raised left open, and the next
    pass is timed whole."""
    from cudaevents._profiler.torch_layers import GlobalLayerHooks

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    timer = Timer(nvtx=False)
    hooks = GlobalLayerHooks(timer, backward=True, stream=cpu).attach()
    engine = hooks._engine
    try:
        def fail(grad):
            raise RuntimeError("backward failed")

        out = model(torch.randn(2, 4))
        handle = model[0].weight.register_hook(fail)
        with pytest.raises(RuntimeError, match="backward failed"):
            out.sum().backward()
        handle.remove()
        assert engine._callback_queued and engine.open_backward() > 0  # the pass's end never came
        out = model(torch.randn(2, 4))
        assert not engine._callback_queued and engine.open_backward() == 0
        out.sum().backward()
        assert not engine._callback_queued and engine.open_backward() == 0
    finally:
        hooks.detach()
    c = counts(timer.results(timeout=30))
    assert c["Sequential.backward"] == 1 and c["0.backward"] == 1 and c["Sequential"] == 2, c


def test_global_hooks_keep_the_pass_while_checkpointing_recomputes_inside_it(cpu):
    """A forward recomputed inside a backward pass (non-reentrant checkpointing) is not a
    forward after a pass that raised: the pass's backward regions stay and end with it."""
    from torch.utils.checkpoint import checkpoint

    from cudaevents._profiler.torch_layers import GlobalLayerHooks

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=False))

    model = Model()
    timer = Timer(nvtx=False)
    hooks = GlobalLayerHooks(timer, backward=True, stream=cpu).attach()
    try:
        model(torch.randn(2, 4, requires_grad=True)).sum().backward()
        assert hooks._engine.open_backward() == 0
    finally:
        hooks.detach()
    c = counts(timer.results(timeout=30))
    assert c["Model.backward"] == 1 and c["head.backward"] == 1 and c["block"] == 2, c
