"""The ``cudaevents`` command line: ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import platform
import sys

from . import __version__, _cuda
from ._device import Device, device_count

__all__ = ["main"]

_OPTIONAL = ("torch", "cupy-cuda13x", "cupy-cuda12x", "cuda-core", "rich", "matplotlib", "nvtx")


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _info(out) -> int:
    out(f"cudaevents {__version__} on Python {platform.python_version()} ({sys.platform})")
    for name, version in _cuda.versions().items():
        out(f"  {name}: {version}")
    extras = [f"{d} {v}" for d in _OPTIONAL if (v := _installed_version(d))]
    out(f"  optional packages: {', '.join(extras) if extras else 'none installed'}")
    reason = _cuda.unavailable_reason()
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
    from ._cells import choose_backend

    try:
        return choose_backend(device)
    except (ValueError, RuntimeError) as exc:  # a bad CUDAEVENTS_ATOMIC_BACKEND: say so, still exit 0
        return f"unusable ({exc})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cudaevents`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cudaevents", description="Recycled CUDA events and friends.")
    parser.add_argument("--version", action="version", version=f"cudaevents {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="devices, capabilities and versions (or what is missing)")
    demo = sub.add_parser("demo", help="time real GPU work with event pairs, without and with recycling")
    demo.add_argument("--iterations", type=int, default=200, help="rounds of work per stream (default 200)")
    args = parser.parse_args(argv)
    out = print
    if args.command == "info":
        return _info(out)
    if args.command == "demo":
        if args.iterations < 1:
            parser.error("--iterations must be at least 1")
        from ._demo import run_demo

        return run_demo(out, iterations=args.iterations)
    parser.print_help()
    return 2
