"""The ``cudaevents`` command line: ``info``, ``demo``, ``bench`` and ``profile``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import sys

from .. import __version__
from .._core import compiled, driver
from .._core.devices import Device, device_count

__all__ = ["main"]

_OPTIONAL = ("torch", "cupy-cuda13x", "cupy-cuda12x", "cuda-core", "rich", "matplotlib", "nvtx")


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _info(out) -> int:
    out(f"cudaevents {__version__} on Python {platform.python_version()} ({sys.platform})")
    for name, version in driver.versions().items():
        out(f"  {name}: {version}")
    extras = [f"{d} {v}" for d in _OPTIONAL if (v := _installed_version(d))]
    out(f"  optional packages: {', '.join(extras) if extras else 'none installed'}")
    reason = driver.unavailable_reason()
    out(f"  hot path: {compiled.describe()}")
    if reason is not None:
        out(f"CUDA unavailable: {reason}")
        out(f"AtomicEvent backend: {_counter_backend(None)}")
        return 0
    count = device_count()
    out(f"{count} device(s)")
    for i in range(count):
        dev = Device(i)
        major, minor = dev.compute_capability
        out(f"Device {i}: {dev.name}, compute capability {major}.{minor}, {dev.total_memory / 2**30:.1f} GiB")
        for field in dataclasses.fields(dev.capabilities):
            value = getattr(dev.capabilities, field.name)
            out(f"  {field.name:<27} {'yes' if value else 'no'}")
        out(f"  {'AtomicEvent backend':<27} {_counter_backend(i)}")
    return 0


def _counter_backend(device: int | None) -> str:
    from .._sync.counter_storage import choose_backend

    try:
        return choose_backend(device)
    except (ValueError, RuntimeError) as exc:  # a bad CUDAEVENTS_ATOMIC_BACKEND: say so, still exit 0
        return f"unusable ({exc})"


class _SuiteSections:
    """The names ``bench --only`` takes, as argparse's ``choices``: the suite's ``SECTIONS``
    (their one source), imported only when argparse checks a ``--only`` value, so that no
    other command (``cudaevents info``) imports the comparison suite."""

    @staticmethod
    def _names() -> tuple[str, ...]:
        from .._comparison.suite import SECTIONS

        return SECTIONS

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


class _BenchHelp(argparse.Action):
    """``bench -h``: the bench help, with the suite's section names added to the line of
    ``--only`` (the action in :attr:`only`) only now, when the suite is imported anyway."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show this help message and exit")
        self.only = None

    def __call__(self, parser, namespace, values, option_string=None):
        self.only.help = f"{self.only.help}: {', '.join(_SuiteSections())}"
        parser.print_help()
        parser.exit()


def _bench(args) -> int:
    from .._comparison.suite import plot, run_suite, to_json, to_markdown

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    reason = driver.unavailable_reason()
    if reason is not None:
        say(f"cudaevents bench needs a CUDA GPU, but CUDA is unusable here: {reason}")
        return 1
    result = run_suite(quick=args.quick, only=args.only, progress=say)
    text = to_markdown(result)
    for path, content in ((args.json, to_json(result)), (args.markdown, text)):
        if path:
            with open(path, "w") as f:
                f.write(content)
            say(f"wrote {path}")
    if args.plot:
        try:
            written = plot(result, args.plot)
        except ValueError as exc:
            say(f"no plot: {exc}")
        else:
            say(f"wrote {args.plot}" if written else "matplotlib: not installed, no plot written (pip install matplotlib)")
    print(text, end="")
    return 0


def _writable(parser, option: str, path: str | None) -> None:
    """Refuse an output path whose folder does not exist before anything is measured."""
    if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        parser.error(f"{option} {path}: the folder {os.path.dirname(os.path.abspath(path))} does not exist")


def _pipeline(out, args) -> int:
    """``cudaevents demo --processes``."""
    try:
        import torch
    except ImportError:
        print("cudaevents demo --processes needs PyTorch (pip install torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("cudaevents demo --processes needs a CUDA GPU, and PyTorch sees none here", file=sys.stderr)
        return 1
    from .pipeline import run_pipeline

    run_pipeline(out, handoffs=args.handoffs, consumers=args.consumers, policy=args.policy)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cudaevents`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cudaevents", description="Recycled CUDA events and friends.")
    parser.add_argument("--version", action="version", version=f"cudaevents {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="devices, capabilities and versions (or what is missing)")
    demo = sub.add_parser("demo", help="time real GPU work with event pairs, without and with recycling")
    demo.add_argument("--iterations", type=int, default=200, help="rounds of work per stream (default 200)")
    demo.add_argument("--processes", action="store_true",
                      help="instead: a pipeline of processes on one GPU handing buffers over with interprocess "
                           "events, against a host-synchronized handshake (needs PyTorch)")
    demo.add_argument("--handoffs", type=int, default=1000, help="with --processes: hand-offs per run (default 1000)")
    demo.add_argument("--consumers", type=int, default=2,
                      help="with --processes: consumer processes (default 2)")
    demo.add_argument("--policy", choices=("spin", "yield", "sleep", "block"), default="spin",
                      help="with --processes: how every host wait for the GPU polls, in every mode (default spin: "
                           "the lowest latency, a core busy per process)")
    bench = sub.add_parser(
        "bench",
        add_help=False,
        help="compare cudaevents' costs with raw cuda-bindings, PyTorch, CuPy and cuda.core (those installed)",
        description=(
            "Measure, side by side in one run, what cudaevents costs against raw cuda-bindings and every peer "
            "installed (PyTorch, CuPy, cuda.core; the others are skipped): new event + record, a raw record, "
            "timing pairs, native event creations, the CPU->GPU->CPU round trip, the worker wake-up, AtomicEvent "
            "creation and memory, and the pool's fast path with threads, keys and devices. Prints a markdown "
            "report (device and versions, pass/miss lines for the targets, one table per measurement) to "
            "stdout and progress to stderr. Needs a GPU."
        ),
    )
    bench_help = bench.add_argument("-h", "--help", action=_BenchHelp)
    bench.add_argument("--quick", action="store_true",
                       help="far fewer repetitions: every measurement in seconds, rough numbers (a smoke test)")
    bench_help.only = bench.add_argument("--only", nargs="+", action="extend", choices=_SuiteSections(),
                                         metavar="NAME", help="run only these measurements")
    bench.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    bench.add_argument("--markdown", metavar="PATH", help="also write the report to a file")
    bench.add_argument("--plot", metavar="PATH", help="also plot the comparison as a PNG (needs matplotlib)")
    profile = sub.add_parser(
        "profile",
        usage=("%(prog)s [-h] [--json PATH] [--trace PATH] [--no-layers] [--backward] [--progress SECONDS] "
               "[--timeout SECONDS] [--top N] [--tree] [--match GLOB] SCRIPT [ARGS ...]"),
        help="run a Python script, timing every torch module it runs (and its own regions) on the GPU",
        description=(
            "Run SCRIPT as __main__ (sys.argv = [SCRIPT, *ARGS]) and print the time per region at "
            "exit. Every torch.nn.Module the script runs on a CUDA device is timed per call "
            "(forward; backward with --backward), on torch's current stream of its input's device, "
            "with recycled CUDA events and no host synchronization. The script may declare its own "
            "regions on cudaevents.profile_timer() (e.g. `with cudaevents.profile_timer()"
            ".region('step', stream): ...`, on a GPU stream or a CpuStream); they are reported too. "
            "Each optimizer step() ends a step: the regions of a training loop's iterations carry "
            "their index (Sample.step, in the JSON and the trace). "
            "Under torchrun (WORLD_SIZE > 1) every rank profiles and rank 0 prints the cross-rank "
            "report (min/median/max per region with the ranks, straggler scores) and writes the one "
            "--trace of all ranks and the report as --json PATH (each rank's own results go to "
            "PATH with a .rankN suffix). The gather uses the script's "
            "process group if it is still initialized, else a gloo group from torchrun's environment. "
            "Options go before SCRIPT; everything after it is the script's."
        ),
    )
    profile.add_argument("--json", metavar="PATH", help="also write the results as JSON (Results.to_json)")
    profile.add_argument("--trace", metavar="PATH",
                         help="also write a Chrome/Perfetto trace, one track per stream (Results.to_chrome_trace)")
    profile.add_argument("--no-layers", action="store_true",
                         help="do not hook torch modules; only the regions the script declares are timed")
    profile.add_argument("--backward", action="store_true",
                         help="also time each module's backward (through autograd node hooks: the "
                              "gradients and the graph stay as they are)")
    profile.add_argument("--progress", type=float, default=10.0, metavar="SECONDS",
                         help="print the regions collected so far to stderr every SECONDS (default 10; 0: never)")
    profile.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                         help="at exit, wait at most SECONDS for the GPU to finish timed work (default 60)")
    profile.add_argument("--top", type=int, metavar="N", help="show only the N regions with the most total time")
    profile.add_argument("--tree", action="store_true",
                         help="show modules nested under their parents, with each one's own (self) time")
    profile.add_argument("--match", action="append", metavar="GLOB",
                         help="show only regions whose name matches GLOB (e.g. '*.h.0.*'); may be repeated")
    profile.add_argument("argv", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS ...]",
                         help="the Python script to run, and its arguments")
    args = parser.parse_args(argv)
    out = print
    if args.command in ("info", "demo", "bench"):
        if args.command == "demo":
            for option in ("iterations", "handoffs", "consumers"):
                if getattr(args, option) < 1:
                    parser.error(f"--{option} must be at least 1")
        if args.command == "bench":
            for option in ("json", "markdown", "plot"):
                _writable(bench, f"--{option}", getattr(args, option))
        try:
            if args.command == "info":
                return _info(out)
            if args.command == "bench":
                return _bench(args)
            if args.processes:
                return _pipeline(out, args)
            from .demo import run_demo

            return run_demo(out, iterations=args.iterations)
        except BrokenPipeError:  # e.g. `cudaevents info | head`: stop quietly, as coreutils do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE
    if args.command == "profile":
        if not args.argv:
            profile.error("the script to run is missing: cudaevents profile [options] SCRIPT [ARGS ...]")
        if not 0 <= args.progress < float("inf"):
            profile.error("--progress must be a number of seconds >= 0")
        if not 0 < args.timeout < float("inf"):
            profile.error("--timeout must be a number of seconds > 0")
        if args.top is not None and args.top < 1:
            profile.error("--top must be at least 1")
        from .._profiler.profile import run_profile

        return run_profile(args.argv[0], args.argv[1:], json_path=args.json, trace_path=args.trace,
                           layers=not args.no_layers, backward=args.backward, progress=args.progress,
                           timeout=args.timeout, view={"top": args.top, "tree": args.tree, "match": args.match})
    parser.print_help()
    return 2
