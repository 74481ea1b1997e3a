"""``cudaevents profile script.py [args...]``: run a script with per-layer timing of its torch
modules and of the regions it declares on :func:`profile_timer`, then print the summary."""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
import traceback

from .results import Results
from .timer import Timer

__all__ = ["profile_timer", "run_profile"]

_timer: Timer | None = None
_timer_lock = threading.Lock()


def profile_timer() -> Timer:
    """The :class:`Timer` that ``cudaevents profile`` collects and summarizes.

    A script run under ``cudaevents profile`` declares its own regions on it, and they are
    reported with the per-layer ones::

        timer = cudaevents.profile_timer()
        with timer.region("data", cpu_stream):
            ...
        with timer.region("step", torch.cuda.current_stream()):
            ...

    Outside ``cudaevents profile`` it is a process-wide Timer made on first use, so the same
    script still runs (and may print ``profile_timer().results()`` itself).
    """
    global _timer
    timer = _timer
    if timer is None:
        with _timer_lock:
            if _timer is None:
                _timer = Timer()
            timer = _timer
    return timer


def _set_profile_timer(timer: Timer | None) -> None:
    global _timer
    with _timer_lock:
        _timer = timer


class _TorchWatcher:
    """A meta path finder that calls ``on_import(torch)`` once ``import torch`` has finished,
    so that a script that never imports torch does not pay for importing it."""

    def __init__(self, on_import):
        self._on_import = on_import
        self._busy = False

    def install(self) -> None:
        if "torch" in sys.modules:
            self._fire(sys.modules["torch"])
        else:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def _fire(self, module) -> None:
        self.uninstall()
        try:
            self._on_import(module)
        except Exception as exc:  # profiling must not break the script's import of torch
            print(f"cudaevents profile: per-layer timing disabled: {type(exc).__name__}: {exc}", file=sys.stderr)

    def find_spec(self, name, path=None, target=None):
        if name != "torch" or self._busy:
            return None
        self._busy = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module
        watcher = self

        def exec_module(module):
            try:
                del loader.exec_module  # back to the loader's own method
            except AttributeError:
                pass
            original(module)
            watcher._fire(module)

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):  # a loader that takes no attributes: hook now-ish
            return spec
        return spec


class _Progress:
    """A line on stderr every ``interval`` seconds while the script runs (none for a run
    shorter than that)."""

    def __init__(self, timer: Timer, interval: float, err):
        self._timer, self._interval, self._err = timer, interval, err
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.monotonic()

    def start(self) -> None:
        if self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="cudaevents-profile-progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            timer = self._timer
            print(f"cudaevents profile: {time.monotonic() - self._t0:.0f} s, "
                  f"{timer.collected + timer.pending} regions so far",
                  file=self._err, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _script_traceback(exc: BaseException) -> str:
    """The traceback of an exception the script raised, without the frames of this runner
    (as ``python script.py`` would print it)."""
    tb = exc.__traceback__
    here = os.path.dirname(os.path.abspath(__file__))
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename not in (runpy.__file__, "<frozen runpy>") and os.path.dirname(os.path.abspath(filename)) != here:
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class _StepPerOptimizerStep:
    """A global optimizer step post-hook that starts the timer's next step."""

    def __init__(self, timer: Timer):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        step = timer.step
        self._handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: step())

    def remove(self) -> None:
        self._handle.remove()


def run_profile(script: str, args: list[str], *, json_path=None, trace_path=None, layers: bool = True,
                backward: bool = False, progress: float = 10.0, timeout: float = 60.0,
                view: dict | None = None, out=None, err=None) -> int:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` under profiling;
    returns the exit code (the script's, 1 if it raised, 2 if it cannot be opened). ``view``
    holds the summary's options (``top``, ``tree``, ``match``: see :meth:`Results.table`).

    Once the script imports torch, every optimizer's ``step()`` ends a step of the timer
    (:meth:`Timer.step`: the samples of a training loop's iterations carry their index), and
    with ``layers`` every module is timed (see :class:`GlobalLayerHooks`)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        with open(script, "rb"):
            pass
    except OSError as exc:
        print(f"cudaevents profile: can't open file {script!r}: [Errno {exc.errno}] {exc.strerror}", file=err)
        return 2
    if os.path.isdir(script):
        print(f"cudaevents profile: {script!r} is a directory, not a script", file=err)
        return 2

    timer = Timer()
    previous = _timer
    _set_profile_timer(timer)
    hooks = []  # the GlobalLayerHooks, once torch is imported
    steps = []  # the optimizer step hook, likewise

    def on_torch(torch):
        from .torch_layers import GlobalLayerHooks

        if layers:
            hooks.append(GlobalLayerHooks(timer, backward=backward).attach())
        steps.append(_StepPerOptimizerStep(timer))

    watcher = _TorchWatcher(on_torch)
    watcher.install()
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [script, *args]
    script_dir = os.path.dirname(os.path.abspath(script))
    if sys.path:
        sys.path[0] = script_dir
    else:
        sys.path.insert(0, script_dir)
    reporter = _Progress(timer, progress, err)
    reporter.start()
    code, failure = 0, None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code, err)
    except KeyboardInterrupt as exc:
        failure, code = exc, 130
    except BaseException as exc:
        failure, code = exc, 1
    finally:
        reporter.stop()
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
        watcher.uninstall()
        dropped = sum(h.detach() for h in hooks)
        for h in steps:
            h.remove()
        _set_profile_timer(previous)

    if failure is not None:
        err.write(_script_traceback(failure))
        err.flush()
    results = _collect(timer, timeout, err)
    if results is not None and hooks:  # the modules' nesting, for the tree view
        results = Results(results.samples, results._stream_names, {**results.parents, **hooks[0].parents},
                          {**results.classes, **hooks[0].classes})
    if failure is not None:
        print(f"cudaevents profile: the script raised {type(failure).__name__}; regions collected until then:", file=out)
    if dropped:
        print(f"cudaevents profile: {dropped} module region(s) left open by the script were dropped", file=err)
    if results is None:
        return code or 1
    rank, world = _launch_rank()
    report = report_path = None
    if world > 1:  # under torchrun: rank 0 shows every rank, and writes the one trace of all
        report = _gather_ranks(timer, trace_path is not None, timeout, err)
        if json_path is not None:
            report_path, json_path = json_path, _per_rank_path(json_path, rank)
        if trace_path is not None and report is None:  # no gather: each rank writes its own
            trace_path = _per_rank_path(trace_path, rank)
        elif rank != 0:
            trace_path = None
    if len(results) and rank == 0:
        results.print_summary(file=out, **{k: v for k, v in (view or {}).items() if v})
    elif not len(results):
        hint = "" if layers else " (--no-layers)"
        print(f"cudaevents profile: {'' if world == 1 else f'rank {rank}: '}no regions collected: no torch module "
              f"ran on a CUDA device{hint} and the script declared none on cudaevents.profile_timer()", file=out)
    if report is not None:
        report.print(file=out)
    try:
        if json_path is not None:
            results.to_json(json_path)
        if report is not None and report_path is not None:
            report.to_json(report_path)
        if trace_path is not None:
            (results if report is None else report).to_chrome_trace(trace_path)
    except OSError as exc:
        print(f"cudaevents profile: cannot write results: {exc}", file=err)
        return code or 1
    return code


def _launch_rank() -> tuple[int, int]:
    """(rank, world size) that torchrun (or any launcher setting RANK and WORLD_SIZE) gave
    this process; (0, 1) for a plain run."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def _per_rank_path(path: str, rank: int) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext or '.json'}"


def _gather_ranks(timer: Timer, samples: bool, timeout: float, err):
    """Every rank's timings on rank 0 (a :class:`RankReport` there, None elsewhere), through
    the script's process group if it left one initialized, else a gloo group made from the
    launcher's environment for this gather alone."""
    from .ranks import gather_results

    try:
        import torch.distributed as dist
    except ImportError:
        print("cudaevents profile: WORLD_SIZE > 1 but torch is not installed: no cross-rank report", file=err)
        return None
    own = not dist.is_initialized()
    try:
        if own:
            dist.init_process_group("gloo")
        return gather_results(timer, samples=samples, timeout=timeout)
    except Exception as exc:  # the script's own results are still shown
        print(f"cudaevents profile: cannot gather the ranks' timings: {type(exc).__name__}: {exc}", file=err)
        return None
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def _exit_code(value, err) -> int:
    """The exit status ``sys.exit(value)`` gives, as Python computes it."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFF if value >= 0 else value % 256
    if isinstance(value, bool):
        return int(value)
    print(value, file=err)
    return 1


def _collect(timer: Timer, timeout: float, err):
    """The timer's results, waiting up to ``timeout`` s for regions still running."""
    try:
        return timer.results(timeout=timeout)
    except TimeoutError as exc:
        print(f"cudaevents profile: {exc}; showing the regions that finished", file=err)
    except Exception as exc:  # e.g. a sticky CUDA error left by the script
        print(f"cudaevents profile: cannot collect the regions: {type(exc).__name__}: {exc}", file=err)
        return None
    return timer.snapshot()
