"""Wake-up latency from GPU completion to Python code, for cudaevents.Worker and its floors.

    PYTHONPATH=src python3 benchmarks/worker_latency.py [--samples 1000] [--out result.json]

A thin runner: the measurement is ``cudaevents._suite_latency.worker_wakeup`` (its docstring
says how it works), the same one ``cudaevents bench`` and ``benchmarks/suite.py`` run:
(a) ``cudaevents.Worker``, (b) the floor, a thread blocked in a blocking-sync
``cuEventSynchronize``, (c) and (c') ``cuLaunchHostFunc`` with libc's ``sem_post`` through
cuda-bindings and through ctypes (with a probe for whether the callback takes the GIL), and
(d) a host spinning on a GPU-written word for reference.
"""

from __future__ import annotations

import argparse
import json
import sys

from cudaevents import _cuda
from cudaevents._suite import section_markdown
from cudaevents._suite_latency import worker_wakeup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="samples per method (default 1000)")
    ap.add_argument("--warmup", type=int, default=100, help="discarded samples per method first (default 100)")
    ap.add_argument("--block", type=int, default=100, help="samples per method before switching (default 100)")
    ap.add_argument("--settle-ms", type=float, default=1.0, help="sleep between arming and release (default 1 ms)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--out", help="write the results (with every sample) as JSON to this path")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.warmup < 0 or args.block < 1 or args.settle_ms < 0:
        ap.error("--samples and --block must be >= 1, --warmup and --settle-ms >= 0")
    reason = _cuda.unavailable_reason()
    if reason is not None:
        print(f"this benchmark needs a CUDA GPU, but CUDA is unusable here: {reason}", file=sys.stderr)
        return 1
    section = worker_wakeup(args.samples, args.warmup, args.block, args.settle_ms, args.device,
                            keep_samples=args.out is not None)
    print(section_markdown(section), end="")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(section, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
