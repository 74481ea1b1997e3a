"""The comparison suite on this machine: cudaevents against raw cuda-bindings and every peer
installed (PyTorch, CuPy, cuda.core), side by side in one run. It is ``cudaevents bench``
with its outputs in one folder:

    PYTHONPATH=src python3 benchmarks/suite.py [--quick] [--out DIR] [--only NAME ...]

Writes DIR/results.json, DIR/results.md and DIR/results.png (when matplotlib is installed),
prints the markdown report, and progress to stderr. See benchmarks/README.md for what each
row means.
"""

from __future__ import annotations

import argparse
import os
import sys

from cudaevents._cli.main import main as cli_main
from cudaevents._comparison.suite import SECTIONS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="far fewer repetitions (a smoke test; rough numbers)")
    ap.add_argument("--out", default="bench-results", metavar="DIR",
                    help="folder for results.json, results.md, results.png (default: bench-results)")
    ap.add_argument("--only", nargs="+", action="extend", choices=SECTIONS, metavar="NAME",
                    help=f"run only these measurements: {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    forwarded = ["bench", *(["--quick"] if args.quick else []), *(["--only", *args.only] if args.only else [])]
    for option, name in (("--json", "results.json"), ("--markdown", "results.md"), ("--plot", "results.png")):
        forwarded += [option, os.path.join(args.out, name)]
    return cli_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
