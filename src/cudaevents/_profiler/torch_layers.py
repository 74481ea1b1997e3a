"""Per-layer timing of PyTorch modules: the forward (and backward) of every submodule as a
:class:`Timer` region, through module hooks.

torch is imported lazily, inside the functions and classes here: ``import cudaevents`` never
imports it.
"""

from __future__ import annotations

import fnmatch
import threading
import weakref

from .._core.streams import as_stream
from .._sync.cpu_stream import CpuStream
from .results import Results
from .timer import Timer

__all__ = ["LayerTimer"]

_NO_TENSOR = -2  # the inputs hold no tensor at all
_CPU_ONLY = -1  # the inputs hold tensors, none of them on a CUDA device


def _discard(timer: Timer, token, pop_nvtx: bool = False) -> None:
    """Drop a region that can no longer end properly (its module's forward raised past every
    hook, or its backward never completed); see :meth:`Timer.discard`."""
    timer.discard(token, pop_nvtx=pop_nvtx)


def _device_of(values, Tensor) -> int:
    """The CUDA ordinal of the first CUDA tensor in ``values`` (looking one level into lists,
    tuples and dicts), else ``_CPU_ONLY`` or ``_NO_TENSOR``."""
    seen = _NO_TENSOR
    for v in values:
        if isinstance(v, Tensor):
            if v.is_cuda:
                return v.get_device()
            seen = _CPU_ONLY
        elif type(v) is tuple or type(v) is list or isinstance(v, dict):
            for w in (v.values() if isinstance(v, dict) else v):
                if isinstance(w, Tensor):
                    if w.is_cuda:
                        return w.get_device()
                    seen = _CPU_ONLY
    return seen


class _Module:
    """What the hooks know about one module: its region names and its open backward regions."""

    __slots__ = ("name", "backward_name", "backward_open", "ref", "__weakref__")

    def __init__(self, name: str, module=None):
        self.name = name
        self.backward_name = name + ".backward"
        self.backward_open: list = []  # tokens, one per backward begun and not yet ended
        self.ref = None if module is None else weakref.ref(module)


def _parents(selected: dict[str, str], backward: bool) -> dict[str, str | None]:
    """Region name -> the region name of the nearest selected ancestor module (None for the
    outermost), for forward regions and, with ``backward``, their ``.backward`` regions."""
    out: dict[str, str | None] = {}
    for qualname, name in selected.items():
        parent, path = None, qualname
        while path and parent is None:
            path = path.rsplit(".", 1)[0] if "." in path else ""
            parent = selected.get(path)
        out[name] = parent
        if backward:
            out[name + ".backward"] = None if parent is None else parent + ".backward"
    return out


class _Stack:
    """One thread's open forward regions, innermost last (two lists, so that a push allocates
    nothing)."""

    __slots__ = ("modules", "tokens")

    def __init__(self):
        self.modules: list[_Module] = []
        self.tokens: list = []


class _Engine:
    """The hook bodies, shared by :class:`LayerTimer` (hooks per module) and the global hooks
    of ``cudaevents profile``.

    Forward regions are paired per thread (a stack), so a module may run in several threads,
    be called several times and nest. Backward regions are paired per module (LIFO).
    """

    def __init__(self, timer: Timer, stream=None):
        import torch

        self.timer = timer
        self._torch = torch
        self._Tensor = torch.Tensor
        self._fixed = stream if stream is None or isinstance(stream, CpuStream) else as_stream(stream)
        self._compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)
        self._raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        self._capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)
        self._streams: list[dict] = []  # per device: native handle -> GpuStream
        self._last_device = -1
        self._local = threading.local()
        self._stacks: list[_Stack] = []  # every thread's stack, for discard_open()
        self._lock = threading.Lock()
        self._modules: set[_Module] = set()  # every module state, for discard_open()
        self._callback_queued = False

    # -- streams ---------------------------------------------------------------------------
    def _gpu_stream(self, device: int):
        """The GpuStream of torch's current stream on ``device``; one as_stream() per handle."""
        streams = self._streams
        if device >= len(streams):
            with self._lock:
                while len(streams) <= device:
                    streams.append({})
        raw = self._raw_stream
        if raw is not None:
            handle = raw(device)
            s = streams[device].get(handle)
            if s is not None:
                return s
        current = self._torch.cuda.current_stream(device)
        handle = current.cuda_stream
        s = streams[device].get(handle)
        if s is None:
            s = streams[device][handle] = as_stream(current)  # keeps the torch stream alive
        return s

    def _stream_for(self, values, kwargs=None):
        """The stream a region of a call with these inputs goes on, or None to skip it."""
        fixed = self._fixed
        if fixed is not None:
            return fixed
        Tensor = self._Tensor
        device = _device_of(values, Tensor)
        if device == _NO_TENSOR and kwargs:
            device = _device_of(kwargs.values(), Tensor)
        if device == _CPU_ONLY:
            return None  # host work: nothing on a GPU stream to time
        if device == _NO_TENSOR:
            device = self._last_device  # no tensor inputs: assume the device last seen
            if device < 0:
                return None
        else:
            self._last_device = device
        capturing = self._capturing
        if capturing is not None and capturing():
            return None  # events recorded into a CUDA graph capture cannot be timed
        return self._gpu_stream(device)

    # -- forward ---------------------------------------------------------------------------
    def _stack(self) -> _Stack:
        try:
            return self._local.stack
        except AttributeError:
            stack = self._local.stack = _Stack()
            with self._lock:
                self._stacks.append(stack)
            return stack

    def begin_forward(self, state: _Module, args, kwargs=None) -> None:
        if self._compiling():
            return  # traced by torch.compile: the hook must not run in the graph
        stream = self._stream_for(args, kwargs)
        token = None if stream is None else self.timer.begin(state.name, stream)
        stack = self._stack()
        stack.modules.append(state)
        stack.tokens.append(token)

    def end_forward(self, state: _Module) -> None:
        if self._compiling():
            return
        stack = self._stack()
        modules = stack.modules
        if modules and modules[-1] is state:
            modules.pop()
            token = stack.tokens.pop()
        else:
            # Entries above this module's are stale (their forward raised past their hooks,
            # e.g. a KeyboardInterrupt, which always_call hooks do not see); none at all means
            # the pre-hook did not run (attached mid-forward, or an earlier pre-hook raised).
            for i in range(len(modules) - 2, -1, -1):
                if modules[i] is state:
                    break
            else:
                return
            tokens = stack.tokens
            token = tokens[i]
            for stale in tokens[i + 1:]:
                if stale is not None:
                    _discard(self.timer, stale, pop_nvtx=True)
            del modules[i:], tokens[i:]
        if token is not None:
            self.timer.end(token)

    def discard_stale_forward(self) -> None:
        """At a forward of the hooked model itself: anything of this engine still open on this
        thread is left over from a forward that an exception left past its hooks (a model does
        not run inside its own submodules; if one does, recursively, its outer regions are
        lost), and backward regions still open are left over from a backward pass that
        raised."""
        if self._compiling():
            return
        stack = self._stack()
        if stack.modules:
            for token in stack.tokens:
                if token is not None:
                    _discard(self.timer, token, pop_nvtx=True)
            stack.modules.clear()
            stack.tokens.clear()
        if self._callback_queued:
            # The end of the last backward pass never came (it raised, which skips autograd's
            # final callbacks), or another thread is in a backward pass of this model now.
            self._end_of_backward()

    # -- backward --------------------------------------------------------------------------
    def begin_backward(self, state: _Module, grad_output) -> None:
        if self._compiling():
            return
        if not self._callback_queued:
            self._queue_end_of_backward()
        stream = self._stream_for(grad_output)
        state.backward_open.append(None if stream is None else self.timer.begin(state.backward_name, stream))

    def end_backward(self, state: _Module) -> None:
        if self._compiling():
            return
        open_ = state.backward_open
        if open_:
            token = open_.pop()
            if token is not None:
                self.timer.end(token)

    def _queue_end_of_backward(self) -> None:
        # When the backward pass ends, drop the backward regions that began and never ended
        # (a module whose output got a gradient but whose inputs did not, e.g. with
        # torch.autograd.grad(..., inputs=<an intermediate>)). Queued once per outermost
        # pass: a reentrant pass (checkpointing) running inside it does not queue its own.
        try:
            self._torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
        except Exception:  # not inside a backward pass after all: nothing to clean up later
            return
        self._callback_queued = True

    def _end_of_backward(self) -> None:
        self._callback_queued = False
        for state in list(self._modules):
            open_ = state.backward_open
            while open_:
                token = open_.pop()
                if token is not None:
                    _discard(self.timer, token)

    # -- cleanup ---------------------------------------------------------------------------
    def discard_open(self) -> int:
        """Drop every region still open, in every thread; returns how many."""
        n = 0
        with self._lock:
            stacks = list(self._stacks)
        for stack in stacks:
            tokens, stack.tokens = stack.tokens, []
            stack.modules = []
            for token in tokens:
                if token is not None:
                    _discard(self.timer, token)
                    n += 1
        for state in list(self._modules):
            open_, state.backward_open = state.backward_open, []
            for token in open_:
                if token is not None:
                    _discard(self.timer, token)
                    n += 1
        self._callback_queued = False
        return n


def _selector(include, root_name: str, depth: int | None):
    """``(qualname, module) -> bool``: whether LayerTimer times that module. ``include`` is
    None (all), a module class, a name glob (matched against region names: the root's is
    its class name), a list or tuple of classes and globs (any may match), or a callable
    ``(qualname, module) -> bool``; ``depth`` keeps modules at most that many levels below
    the root."""
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth must be an int >= 0 or None, got {depth!r}")
    if include is None:
        chosen = _everything
    elif callable(include) and not isinstance(include, type):
        chosen = include
    else:
        items = [include] if isinstance(include, (type, str)) else include
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, (type, str)) for i in items):
            raise TypeError("include must be None, a module class, a name glob such as 'transformer.h.*', a list "
                            f"of classes and globs, or a callable (name, module) -> bool; got {include!r}")
        classes = tuple(i for i in items if isinstance(i, type))
        globs = [i for i in items if isinstance(i, str)]

        def chosen(qualname, module):
            name = qualname or root_name
            return isinstance(module, classes) or any(fnmatch.fnmatchcase(name, g) for g in globs)

    if depth is None:
        return chosen
    return lambda qualname, module: (qualname.count(".") + 1 if qualname else 0) <= depth and chosen(qualname, module)


def _everything(qualname, module) -> bool:
    return True


class LayerTimer:
    """Times the forward (and backward) of every submodule of a PyTorch model, per module.

    ``attach()`` registers hooks on the model's modules (``model.named_modules()``; the root
    too): a forward pre-hook begins a region of :attr:`timer` named after the module, a
    forward hook ends it. Region names are the names ``named_modules()`` gives (``"encoder.0"``,
    so ``model.get_submodule(name)`` finds the module back), the root's is its class name
    (``"Sequential"``), and a module's backward is ``"<name>.backward"``. ``detach()`` removes
    every hook again; a ``with`` block does both::

        with LayerTimer(model) as layers:
            for batch in loader:
                loss = model(batch.cuda()).sum()
                loss.backward()
        layers.results().print_summary()

    Each region goes on torch's current CUDA stream of the device of the module's first CUDA
    tensor input (one level into lists, tuples and dicts, then keyword arguments), so the
    region times the GPU work the module enqueues, asynchronously: the hooks record events
    and never wait on the host. A module whose tensor inputs are all on the CPU is not timed;
    one called with no tensor at all is timed on the device last seen. Nothing is timed while
    torch.compile traces the module or while the current stream captures a CUDA graph. Each
    region is two timing records, which share CUDA's queue of about a thousand launches behind
    unfinished work with the model's own kernels (see :class:`Timer`).

    A module called several times makes one region per call (counts equal calls), nested
    modules nest, and a module may run in several threads at once (forward regions pair up
    per thread). If a forward raises, its region ends where the exception passes the
    module's forward hook (registered with ``always_call``, so it still runs); a forward left
    by an exception no hook sees (``KeyboardInterrupt``) leaves its regions open until the
    next forward of the model, or ``detach()``, which drops them without a sample.

    Backward (``backward=True``) uses ``register_full_backward_pre_hook`` and
    ``register_full_backward_hook``: the region runs from when the gradient of the module's
    output is ready until the gradient of its inputs is (on the autograd thread's current
    stream). PyTorch's full backward hooks have limits: the module must return a tensor or a
    tuple of tensors (PyTorch warns otherwise, and no backward region is taken), and a
    module's inputs and outputs must not be modified in place afterwards (PyTorch raises,
    e.g. for ``nn.ReLU(inplace=True)`` after a hooked module): pass ``backward=False`` for
    such models. PyTorch also warns, harmlessly, that a full backward hook fires at the
    output's gradient where the module's inputs need none (the first layer). Modules that
    already use legacy ``register_backward_hook`` hooks get no backward timing. Backward regions still open when a backward pass ends (their inputs got
    no gradient) are dropped. Concurrent backward passes of one model in several threads
    may lose backward regions.

    Args:
        model: the ``torch.nn.Module`` to time.
        timer: the :class:`Timer` to put regions on (default: a new one).
        backward: also time each module's backward (off by default, as in ``cudaevents
            profile``: PyTorch's full backward hooks cost far more than the events).
        include: which modules to time: ``None`` (all), a module class, a glob on region
            names (``"transformer.h.*"``; the root's name is its class name), a list or
            tuple of classes and globs (any may match), or a callable ``(name, module) ->
            bool`` with the ``named_modules()`` name (``""`` for the root).
        depth: time only modules at most this many levels of module path below the root
            (``depth=1``: the root and its children, the coarse always-on view;
            ``transformer.h.0`` is 3 levels down, ``h`` being a ModuleList).
        leaf_only: time only modules without submodules.
        stream: put every region on this stream instead, whatever the inputs: anything
            :meth:`Timer.begin` accepts, e.g. a :class:`CpuStream` stand-in where there is
            no GPU (a region then lasts from when that stream's thread reaches its start to
            when it reaches its end: about the host time of the call while the thread is idle).
    """

    def __init__(self, model, *, timer: Timer | None = None, backward: bool = False, include=None,
                 depth: int | None = None, leaf_only: bool = False, stream=None):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"LayerTimer needs a torch.nn.Module, got {type(model).__name__}")
        self._model = model
        self._timer = Timer() if timer is None else timer
        self._backward = bool(backward)
        self._select = _selector(include, type(model).__name__, depth)
        self._leaf_only = bool(leaf_only)
        self._stream = stream
        self._engine = None
        self._handles: list = []
        self._full_backward_flags: list = []  # (module, its _is_full_backward_hook before attach)
        self._names: dict[str, object] = {}
        self._parents: dict[str, str | None] = {}  # region name -> the enclosing module's, for Results
        self._classes: dict[str, str] = {}  # region name -> the module's class, for Results

    @property
    def timer(self) -> Timer:
        """The :class:`Timer` the regions go to."""
        return self._timer

    @property
    def attached(self) -> bool:
        """True between :meth:`attach` and :meth:`detach`."""
        return bool(self._handles)

    @property
    def names(self) -> list[str]:
        """The forward region names of the modules timed (after :meth:`attach`)."""
        return list(self._names)

    def attach(self) -> "LayerTimer":
        """Register the hooks; returns ``self``. Attaching twice is an error."""
        if self._handles:
            raise RuntimeError("this LayerTimer is already attached; detach() it first")
        if self._engine is None:
            self._engine = _Engine(self._timer, self._stream)
        engine = self._engine
        root_name = type(self._model).__name__
        selected: dict[str, str] = {}  # qualname -> region name
        try:
            root_hooked = False
            for qualname, module in self._model.named_modules():
                if self._leaf_only and next(iter(module.children()), None) is not None:
                    continue
                if not self._select(qualname, module):
                    continue
                state = _Module(qualname or root_name)
                selected[qualname] = state.name
                self._classes[state.name] = self._classes[state.backward_name] = type(module).__name__
                engine._modules.add(state)
                self._names[state.name] = module
                root = module is self._model
                root_hooked |= root
                self._hook(module, state, engine, root=root)
            if not root_hooked:  # not timed, but its forward still clears what an exception left open
                discard_stale = engine.discard_stale_forward
                self._handles.append(self._model.register_forward_pre_hook(lambda mod, args: discard_stale()))
        except BaseException:
            self.detach()
            raise
        self._parents.update(_parents(selected, self._backward))
        return self

    def _hook(self, module, state: _Module, engine: _Engine, root: bool) -> None:
        begin, end = engine.begin_forward, engine.end_forward
        if root:
            discard_stale = engine.discard_stale_forward

            def pre(mod, args, kwargs):
                discard_stale()
                begin(state, args, kwargs)
        else:
            def pre(mod, args, kwargs):
                begin(state, args, kwargs)

        def post(mod, args, output):
            end(state)

        handles = self._handles
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        try:
            handles.append(module.register_forward_hook(post, prepend=True, always_call=True))
        except TypeError:  # torch < 2.1: no always_call (a raising forward is cleaned up later)
            handles.append(module.register_forward_hook(post, prepend=True))
        if not self._backward or module._is_full_backward_hook is False:
            return
        begin_bw, end_bw = engine.begin_backward, engine.end_backward

        def bw_pre(mod, grad_output):
            begin_bw(state, grad_output)

        def bw_post(mod, grad_input, grad_output):
            end_bw(state)

        self._full_backward_flags.append((module, module._is_full_backward_hook))
        handles.append(module.register_full_backward_pre_hook(bw_pre))
        handles.append(module.register_full_backward_hook(bw_post))

    def detach(self) -> None:
        """Remove every hook (the model's hook dictionaries are as before :meth:`attach`) and
        drop the regions still open. Detaching twice is fine; the results stay."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        flags, self._full_backward_flags = self._full_backward_flags, []
        for module, before in flags:
            if not module._backward_hooks:
                module._is_full_backward_hook = before
        if self._engine is not None:
            self._engine.discard_open()
            self._engine._modules.clear()
        self._names = {}

    def reset(self) -> None:
        """Forget the regions collected so far (the hooks stay; regions in flight are kept)."""
        self._timer.reset()

    def results(self, timeout: float | None = None):
        """The timer's :class:`Results`, after waiting up to ``timeout`` seconds for the
        regions still running (see :meth:`Timer.results`), with each module's region nested
        in its nearest timed ancestor's (``Results.parents``: the root, named after the
        model's class, holds the top-level modules), so ``print_summary(tree=True)`` shows
        the model's structure with each module's own (self) time."""
        r = self._timer.results(timeout)
        return Results(r.samples, r._stream_names, {**r.parents, **self._parents}, {**r.classes, **self._classes})

    def __enter__(self) -> "LayerTimer":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = f"attached to {len(self._names)} modules" if self._handles else "detached"
        return f"<LayerTimer {type(self._model).__name__} {state}>"


class GlobalLayerHooks:
    """Hooks on every ``torch.nn.Module`` of the process (``cudaevents profile``): global
    forward (and optionally backward) hooks of ``torch.nn.modules.module``.

    A module is named when first seen, as :class:`LayerTimer` names a model's modules: a
    root (a module first called outside every timed module) by its class (``"Net"``;
    ``"Net#2"`` while another live root already has that name), its submodules by their path
    in it (``"layers.0"``), unless a live module of another root holds that name already
    (then ``"Net#2.layers.0"``). One first called inside a timed module on the same thread is
    looked up among that module's submodules, or, if it is not one of them (built inside
    ``forward``, say), named ``"<that module>.<its class>"``. Names of modules that are
    garbage collected are forgotten, so modules built anew every step reuse their names.
    :attr:`parents` maps each name to the region it is nested in, :attr:`classes` to its
    module's class (for ``Results``).
    """

    def __init__(self, timer: Timer, *, backward: bool = False, stream=None):
        import torch

        self._torch = torch
        self._engine = _Engine(timer, stream)  # stream: as LayerTimer's
        self._backward = backward
        self._by_id: dict[int, _Module] = {}
        self._roots: dict[str, _Module] = {}  # root name -> its state (whose ref may be dead)
        self._by_name: dict[str, _Module] = {}  # names held by modules (dead ones are forgotten)
        self._paths: dict[str, tuple[str, str]] = {}  # name -> (its root's name, its path there)
        self.parents: dict[str, str | None] = {}  # name -> the enclosing region's name
        self.classes: dict[str, str] = {}  # name (and its .backward) -> the module's class
        self._lock = threading.RLock()
        self._handles: list = []
        self._full_flag = None

    def _state(self, module) -> _Module:
        state = self._by_id.get(id(module))
        if state is not None and state.ref() is module:
            return state
        return self._name(module)

    def _name(self, module) -> _Module:
        with self._lock:
            state = self._by_id.get(id(module))
            if state is not None and state.ref() is module:
                return state
            stack = self._engine._stack()
            parent = stack.modules[-1] if stack.modules else None
            parent_module = None if parent is None or parent.ref is None else parent.ref()
            if parent_module is not None:
                root, path = self._paths.get(parent.name, (parent.name, parent.name))
                for sub, child in parent_module.named_modules():
                    if child is module and sub:
                        return self._add(module, root, f"{path}.{sub}" if path else sub, parent.name)
                return self._add(module, root, f"{parent.name}.{type(module).__name__}", parent.name, prefix=False)
            cls = type(module).__name__
            root, n = cls, 1
            while (held := self._roots.get(root)) is not None and held.ref() is not None:
                n += 1
                root = f"{cls}#{n}"
            state = self._roots[root] = self._add(module, root, "", None)
            names = {"": root}  # path in the root -> the name given
            for sub, child in module.named_modules():
                if sub:
                    known = self._by_id.get(id(child))
                    if known is None or known.ref() is not child:
                        known = self._add(child, root, sub, names.get(sub.rpartition(".")[0], root))
                    names[sub] = known.name
            return state

    def _add(self, module, root: str, path: str, parent: str | None, prefix: bool = True) -> _Module:
        """Name ``module``: ``path`` (the root's own name for ""), or ``root.path`` where a live
        module holds ``path`` already; ``prefix=False``: ``path`` is the whole name."""
        name = path or root
        held = self._by_name.get(name)
        if prefix and path and held is not None and held.ref is not None and held.ref() is not None:
            name = f"{root}.{path}"
        state = _Module(name)
        key = id(module)
        by_id, by_name, modules = self._by_id, self._by_name, self._engine._modules

        def forget(_ref, state=state):  # the module was garbage collected
            if by_id.get(key) is state:
                del by_id[key]
            if by_name.get(state.name) is state:
                del by_name[state.name]
            modules.discard(state)

        state.ref = weakref.ref(module, forget)
        by_id[key] = state
        by_name[name] = state
        modules.add(state)
        self._paths[name] = (root, path)
        self.parents[name] = parent
        self.classes[name] = self.classes[state.backward_name] = type(module).__name__
        if self._backward:
            self.parents[state.backward_name] = None if parent is None else parent + ".backward"
        return state

    def attach(self) -> "GlobalLayerHooks":
        mm = self._torch.nn.modules.module
        engine, state_of = self._engine, self._state
        begin, end = engine.begin_forward, engine.end_forward

        def pre(mod, args):
            begin(state_of(mod), args)

        def post(mod, args, output):
            end(state_of(mod))

        self._handles.append(mm.register_module_forward_pre_hook(pre))
        try:
            self._handles.append(mm.register_module_forward_hook(post, always_call=True))
        except TypeError:
            self._handles.append(mm.register_module_forward_hook(post))
        if self._backward:
            begin_bw, end_bw = engine.begin_backward, engine.end_backward

            def bw_pre(mod, grad_output):
                begin_bw(state_of(mod), grad_output)

            def bw_post(mod, grad_input, grad_output):
                end_bw(state_of(mod))

            self._full_flag = getattr(mm, "_global_is_full_backward_hook", None)
            self._handles.append(mm.register_module_full_backward_pre_hook(bw_pre))
            self._handles.append(mm.register_module_full_backward_hook(bw_post))
        return self

    def detach(self) -> int:
        """Remove the hooks; returns how many regions were still open (and are dropped)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        mm = self._torch.nn.modules.module
        if self._backward and not getattr(mm, "_global_backward_hooks", True):
            mm._global_is_full_backward_hook = self._full_flag
        return self._engine.discard_open()
