"""Per-layer timing of PyTorch modules: the forward (and backward) of every submodule as a
:class:`Timer` region, through module hooks.

torch is imported lazily, inside the functions and classes here: ``import cudaevents`` never
imports it.
"""

from __future__ import annotations

import fnmatch
import functools
import threading
import weakref

from .._core import compiled
from .._core.streams import GpuStream, as_stream
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
    """What the hooks know about one module: its region names and its timed ancestors."""

    __slots__ = ("name", "backward_name", "ancestors", "ref", "__weakref__")

    def __init__(self, name: str, module=None, ancestors: frozenset = frozenset()):
        self.name = name
        self.backward_name = name + ".backward"
        self.ancestors = ancestors  # the states of the timed modules it sits in, statically
        self.ref = None if module is None else weakref.ref(module)


class _Call:
    """One forward call of a module while autograd records: what its backward region needs.

    ``parent`` is the call it ran inside (on the same thread), ``inputs`` the autograd nodes
    that made its inputs (kept only until its forward ends), ``device`` the CUDA ordinal of
    its forward region's stream (-1 on a CpuStream), ``token`` its backward region once
    begun."""

    __slots__ = ("state", "parent", "inputs", "device", "token", "begun")

    def __init__(self, state: _Module, parent: "_Call | None", device: int):
        self.state = state
        self.parent = parent
        self.device = device
        self.inputs = ()
        self.token = None
        self.begun = False


def _encloses(outer: _Call, call: _Call) -> bool:
    """Whether ``call``'s backward nests in ``outer``'s: ``call`` ran inside ``outer``'s
    forward, or (a forward recomputed inside backward, as checkpointing does, has no
    enclosing call) ``outer``'s module contains ``call``'s."""
    c = call.parent
    while c is not None:
        if c is outer:
            return True
        c = c.parent
    return outer.state in call.state.ancestors


def _grad_nodes(values, Tensor, into: list) -> list:
    """Append to ``into`` the distinct autograd nodes (``grad_fn``) of the tensors in
    ``values``, looking one level into lists, tuples and dicts; returns ``into``."""
    for v in values:  # (nodes compare by identity)
        if isinstance(v, Tensor):
            node = v.grad_fn
            if node is not None and node not in into:
                into.append(node)
        elif type(v) is tuple or type(v) is list or isinstance(v, dict):
            for w in (v.values() if isinstance(v, dict) else v):
                if isinstance(w, Tensor):
                    node = w.grad_fn
                    if node is not None and node not in into:
                        into.append(node)
    return into


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
    """One thread's open forward regions, innermost last (parallel lists, so that a push
    allocates nothing), and, while backward is timed, their calls and the autograd node that
    last got a backward-begin hook (with the calls that hook begins)."""

    __slots__ = ("modules", "tokens", "calls", "last_node", "last_calls")

    def __init__(self):
        self.modules: list[_Module] = []
        self.tokens: list = []
        self.calls: list = []  # a _Call or None per entry, while backward is timed
        self.last_node = None
        self.last_calls: list = []


class _Engine:
    """The hook bodies, shared by :class:`LayerTimer` (hooks per module) and the global hooks
    of ``cudaevents profile``.

    Forward regions are paired per thread (a stack), so a module may run in several threads,
    be called several times and nest. With ``backward``, each forward call while autograd
    records also arms hooks on autograd nodes (``Node.register_prehook``; nothing wraps the
    module's inputs or outputs, so the graph and the gradients stay as they are): a call's
    backward region begins when the node that made its output is about to run, and ends when
    the node that made one of its inputs is about to run, when a backward region begins that
    does not nest in it (autograd runs one device's nodes one at a time, on one thread), or
    when the backward pass ends, whichever comes first.
    """

    def __init__(self, timer: Timer, stream=None, backward: bool = False):
        import torch

        self.timer = timer
        self.backward = backward
        self._torch = torch
        self._Tensor = torch.Tensor
        self._grad_enabled = torch.is_grad_enabled
        self._fixed = stream if stream is None or isinstance(stream, CpuStream) else as_stream(stream)
        self._compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)
        self._raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        self._capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)
        # the backward pass this thread is in (-1: none), where torch can say
        self._graph_task = getattr(torch._C, "_current_graph_task_id", lambda: -1)
        self._streams: list[dict] = []  # per device: native handle -> GpuStream
        self._last_device = -1
        self._local = threading.local()
        self._stacks: list[_Stack] = []  # every thread's forward stack, for discard_open()
        self._backward_stacks: list[list] = []  # every thread's open backward calls, innermost last
        self._lock = threading.Lock()
        self._modules: set[_Module] = set()  # every module state
        self._callback_queued = False
        self._begun: list = []  # the calls whose backward began in this pass (begun again in the next)
        self._epoch = 0  # hooks armed before the last discard_open() do nothing
        self._meets = hasattr(timer, "_meet")  # a Timer has it; a stand-in may not

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
        if self.backward:
            call = None
            if token is not None and self._grad_enabled():  # an untimed forward has no backward region
                calls = stack.calls
                call = _Call(state, calls[-1] if calls else None, stream._device if type(stream) is GpuStream else -1)
                self._arm_end(call, args, kwargs, stack)
            stack.calls.append(call)
        stack.modules.append(state)
        stack.tokens.append(token)

    def end_forward(self, state: _Module, output=None) -> None:
        if self._compiling():
            return
        stack = self._stack()
        modules = stack.modules
        call = None
        if modules and modules[-1] is state:
            modules.pop()
            token = stack.tokens.pop()
            if self.backward and stack.calls:
                call = stack.calls.pop()
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
            if self.backward and len(stack.calls) > i:
                call = stack.calls[i]
                del stack.calls[i:]
            del modules[i:], tokens[i:]
        if token is not None:
            self.timer.end(token)
        if call is not None:
            self._arm_begin(call, output, stack)
        if not modules:  # the outermost timed forward is over: hold no node of its graph
            stack.last_node = None
            stack.last_calls = []

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
            stack.calls.clear()
            stack.last_node, stack.last_calls = None, []
        self.end_stale_backward()

    def end_stale_backward(self) -> None:
        """At a forward outside any backward pass on this thread: backward regions still open
        are left over from a pass whose end never came (it raised, which skips autograd's
        final callbacks), or belong to a backward pass in another thread (they are lost)."""
        if self._callback_queued and self._graph_task() < 0:
            self._end_of_backward(discard=True)

    # -- backward --------------------------------------------------------------------------
    def _arm_end(self, call: _Call, args, kwargs, stack: _Stack) -> None:
        """At a forward's begin: hook the nodes that made its inputs, to end its backward."""
        nodes = _grad_nodes(args, self._Tensor, [])
        if kwargs and not nodes:  # keyword arguments only where no positional one needs a gradient
            _grad_nodes(kwargs.values(), self._Tensor, nodes)
        if not nodes:
            return
        call.inputs = nodes
        end, epoch = self.end_backward, self._epoch
        for node in nodes:
            # The node that got the last begin hook begins another module's backward there,
            # which ends this one anyway: spare the hook.
            if node is not stack.last_node:
                node.register_prehook(lambda grad_outputs, call=call: end(call, epoch))

    def _arm_begin(self, call: _Call, output, stack: _Stack) -> None:
        """At a forward's end: hook the nodes that made its outputs, to begin its backward."""
        inputs, call.inputs = call.inputs, ()
        nodes = _grad_nodes(output if type(output) is tuple or type(output) is list else (output,), self._Tensor, [])
        for node in nodes:
            if node in inputs:
                continue  # an input passed through (nn.Identity): no backward of its own
            if node is stack.last_node:
                # The output of the module that ended last (inside this one), returned as is:
                # one hook begins the outer module's backward, then the inner one's.
                stack.last_calls.insert(0, call)
                continue
            calls = [call]
            begin, epoch = self.begin_backward, self._epoch
            node.register_prehook(lambda grad_outputs, calls=calls: begin(calls, epoch))
            stack.last_node = node
            stack.last_calls = calls

    def _backward_stack(self) -> list:
        try:
            return self._local.backward
        except AttributeError:
            open_ = self._local.backward = []
            with self._lock:
                self._backward_stacks.append(open_)
            return open_

    def begin_backward(self, calls: list, epoch: int) -> None:
        if epoch != self._epoch or self._compiling():
            return
        if not self._callback_queued:
            self._queue_end_of_backward()
        open_ = self._backward_stack()
        ending, starting = [], []
        for call in calls:
            if call.begun:
                continue
            call.begun = True
            self._begun.append(call)
            while open_ and not _encloses(open_[-1], call):
                ended = open_.pop()
                if ended in starting:  # begun by this same hook: not a region after all
                    starting.remove(ended)
                else:
                    ending.append(ended)
            starting.append(call)
            open_.append(call)
        stream = None
        if starting:  # torch's current stream on the forward's device, as autograd sets it
            stream = self._fixed
            if stream is None:
                capturing = self._capturing
                stream = None if capturing is not None and capturing() else self._gpu_stream(starting[0].device)
        self._meet([c.token for c in ending if c.token is not None], starting, stream)

    def _meet(self, tokens: list, starting: list, stream) -> None:
        """End ``tokens`` and begin the backward regions of ``starting`` on ``stream`` (None:
        untimed) at one point: on a GPU stream the timer shares one event among them all
        (nothing is enqueued between)."""
        timer = self.timer
        names = [] if stream is None else [c.state.backward_name for c in starting]
        meets = self._meets
        where = stream if stream is not None or not meets or not tokens else tokens[0].stream
        if meets and type(where) is GpuStream:
            began = timer._meet(tokens, names, where)
        else:
            for token in tokens:
                timer.end(token)
            began = [timer.begin(name, stream) for name in names]
        for call, token in zip(starting, began):
            call.token = token

    def end_backward(self, call: _Call, epoch: int) -> None:
        """End ``call``'s backward region (and those still open inside it) if it is open on
        this thread."""
        if epoch != self._epoch or not call.begun:
            return
        try:
            open_ = self._local.backward
        except AttributeError:
            return
        for i in range(len(open_) - 1, -1, -1):
            if open_[i] is call:
                break
        else:
            return
        ending = open_[i:]
        del open_[i:]
        self._meet([c.token for c in reversed(ending) if c.token is not None], [], None)

    def _queue_end_of_backward(self) -> None:
        # When the backward pass ends, end the backward regions still open (the first layers,
        # whose inputs need no gradient). Queued once per outermost pass: a reentrant pass
        # (checkpointing) running inside it does not queue its own.
        try:
            self._torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
        except Exception:  # not inside a backward pass after all: nothing to end later
            return
        self._callback_queued = True

    def _end_of_backward(self, discard: bool = False) -> None:
        self._callback_queued = False
        begun, self._begun = self._begun, []
        for call in begun:  # a graph kept with retain_graph=True times its next pass again
            call.begun = False
        with self._lock:
            stacks = list(self._backward_stacks)
        for open_ in stacks:
            ending, open_[:] = open_[::-1], []
            tokens = [c.token for c in ending if c.token is not None]
            if discard:
                for token in tokens:
                    _discard(self.timer, token)
            else:
                self._meet(tokens, [], None)

    # -- cleanup ---------------------------------------------------------------------------
    def open_backward(self) -> int:
        """How many backward regions are open, in every thread."""
        with self._lock:
            return sum(len(open_) for open_ in self._backward_stacks)

    def discard_open(self) -> int:
        """Drop every region still open, in every thread, and disarm the backward hooks armed
        so far; returns how many regions were dropped."""
        self._epoch += 1
        n = 0
        with self._lock:
            stacks = list(self._stacks)
            backward = list(self._backward_stacks)
        for stack in stacks:
            tokens, stack.tokens = stack.tokens, []
            stack.modules, stack.calls = [], []
            stack.last_node, stack.last_calls = None, []
            for token in tokens:
                if token is not None:
                    _discard(self.timer, token)
                    n += 1
        for open_ in backward:
            while open_:
                token = open_.pop().token
                if token is not None:
                    _discard(self.timer, token)
                    n += 1
        self._callback_queued = False
        self._begun = []
        return n


compiled.register(_Engine, ("_stream_for", "begin_forward", "end_forward", "begin_backward", "end_backward", "_meet"),
                  lambda hot, cls, python: hot.install_engine(cls, python, _Module, _Call, _Stack))


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

    Backward (``backward=True``) is timed through the autograd graph, not PyTorch's full
    backward module hooks (which wrap every module's inputs and outputs in extra autograd
    functions, cost several times the events, warn, and refuse in-place changes of those
    tensors): a forward call while autograd records hooks the autograd nodes at the module's
    boundary (``Node.register_prehook``, a callback before a node runs; the graph and the
    gradients are unchanged, and no warning is printed). The module's backward region begins
    when the node that made its output is about to run, and ends at the first of: the node
    that made one of its inputs being about to run; the backward of a module outside it
    beginning (autograd runs one device's nodes one at a time, so the two cannot overlap);
    the end of the backward pass (the first layers, whose inputs need no gradient, end
    there). The end hooks go on the nodes of the positional tensor inputs (or, where none
    needs a gradient, the keyword ones). A region is on the autograd thread's current stream
    at its begin (the stream of the module's forward, as autograd sets it). Where regions end
    as others begin, in one hook, one timing event serves them all, so a model's backward
    costs about one timing record per module, plus an autograd hook registration per module
    in the forward. Work of an enclosing module that autograd runs between two of its
    children's backwards counts to the child before it, unless that child's input came from
    it. A module that returns one of its inputs unchanged (``nn.Identity``) has no backward
    region; a forward recomputed in backward (checkpointing) is timed again as a forward, and
    its backward nests in its module's ancestors; a graph kept for another pass
    (``retain_graph=True``) is timed in each. Concurrent backward passes of one model in
    several threads cut each other's backward regions short.

    Args:
        model: the ``torch.nn.Module`` to time.
        timer: the :class:`Timer` to put regions on (default: a new one).
        backward: also time each module's backward (off by default, as in ``cudaevents
            profile``: it doubles the regions).
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
            self._engine = _Engine(self._timer, self._stream, self._backward)
        engine = self._engine
        root_name = type(self._model).__name__
        selected: dict[str, str] = {}  # qualname -> region name
        states: dict[str, _Module] = {}  # qualname -> its state (named_modules() lists parents first)
        try:
            root_hooked = False
            for qualname, module in self._model.named_modules():
                if self._leaf_only and next(iter(module.children()), None) is not None:
                    continue
                if not self._select(qualname, module):
                    continue
                path, ancestors = qualname, []
                while path:  # the timed modules this one sits in
                    path = path.rpartition(".")[0]
                    if path in states:
                        ancestors.append(states[path])
                state = states[qualname] = _Module(qualname or root_name, ancestors=frozenset(ancestors))
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
        hot = compiled.module()  # hooks in C that call the engine's methods by name, where built
        if root:
            discard_stale = engine.discard_stale_forward

            def pre(mod, args, kwargs):
                discard_stale()
                begin(state, args, kwargs)
        elif hot is not None:
            pre = functools.partial(hot.forward_pre, engine, state)
        else:
            def pre(mod, args, kwargs):
                begin(state, args, kwargs)

        if hot is not None:
            post = functools.partial(hot.forward_post, engine, state)
        else:
            def post(mod, args, output):
                end(state, output)

        handles = self._handles
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        try:
            handles.append(module.register_forward_hook(post, prepend=True, always_call=True))
        except TypeError:  # torch < 2.1: no always_call (a raising forward is cleaned up later)
            handles.append(module.register_forward_hook(post, prepend=True))

    def detach(self) -> None:
        """Remove every hook (the model's hook dictionaries are as before :meth:`attach`) and
        drop the regions still open. Detaching twice is fine; the results stay."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
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
    forward hooks of ``torch.nn.modules.module`` (and, with ``backward``, backward timed as
    :class:`LayerTimer` times it, through the autograd graph).

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
        self._engine = _Engine(timer, stream, backward)  # stream: as LayerTimer's
        self._backward = backward
        self._by_id: dict[int, _Module] = {}
        self._roots: dict[str, _Module] = {}  # root name -> its state (whose ref may be dead)
        self._by_name: dict[str, _Module] = {}  # names held by modules (dead ones are forgotten)
        self._paths: dict[str, tuple[str, str]] = {}  # name -> (its root's name, its path there)
        self.parents: dict[str, str | None] = {}  # name -> the enclosing region's name
        self.classes: dict[str, str] = {}  # name (and its .backward) -> the module's class
        self._lock = threading.RLock()
        self._handles: list = []

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
        above = self._by_name.get(parent) if parent is not None else None
        state = _Module(name, ancestors=frozenset() if above is None else above.ancestors | {above})
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
            if engine._callback_queued:  # during a backward pass, or after one that raised
                engine.end_stale_backward()
            begin(state_of(mod), args)

        def post(mod, args, output):
            end(state_of(mod), output)

        self._handles.append(mm.register_module_forward_pre_hook(pre))
        try:
            self._handles.append(mm.register_module_forward_hook(post, always_call=True))
        except TypeError:
            self._handles.append(mm.register_module_forward_hook(post))
        return self

    def detach(self) -> int:
        """Remove the hooks; returns how many regions were still open (and are dropped)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        return self._engine.discard_open()
