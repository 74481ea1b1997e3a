"""CPU -> GPU -> CPU round trip of AtomicEvent against the raw memory-operation floor.

    PYTHONPATH=src python3 benchmarks/sync_latency.py [--samples 2000] [--settle-us 50] [--out results.json]

A thin runner: the measurement is ``cudaevents._suite_latency.round_trip`` (its docstring
says how it works), the same one ``cudaevents bench`` and ``benchmarks/suite.py`` run. Every
GPU backend the device supports is measured with the ``spin`` and ``sleep`` wait policies.
"""

from __future__ import annotations

import argparse
import json
import sys

from cudaevents import _cuda
from cudaevents._suite import section_markdown
from cudaevents._suite_latency import round_trip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000, help="samples per method (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="discarded samples per method first (default 200)")
    ap.add_argument("--block", type=int, default=50, help="samples per method before switching (default 50)")
    ap.add_argument("--settle-us", type=float, default=0.0,
                    help="busy-wait between enqueuing and the host's store (default 0: race the GPU's fetch; "
                         "the suite uses 50)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--out", help="write the results (with every sample) as JSON to this path")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.warmup < 0 or args.block < 1 or args.settle_us < 0:
        ap.error("--samples and --block must be >= 1, --warmup and --settle-us >= 0")
    reason = _cuda.unavailable_reason()
    if reason is not None:
        print(f"this benchmark needs a CUDA GPU, but CUDA is unusable here: {reason}", file=sys.stderr)
        return 1
    section = round_trip(args.samples, args.warmup, args.block, args.settle_us, args.device,
                         keep_samples=args.out is not None)
    print(section_markdown(section), end="")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(section, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
