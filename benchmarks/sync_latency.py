"""CPU -> GPU -> CPU round trip of AtomicEvent against the raw memory-operation floor.

    PYTHONPATH=src python3 benchmarks/sync_latency.py [--samples 2000] [--settle-us 50] [--out results.json]

A thin runner: the measurement is ``cudaevents._comparison.latency.round_trip`` (its docstring
says how it works), the same one ``cudaevents bench`` and ``benchmarks/suite.py`` run. Every
GPU backend the device supports is measured with the ``spin`` and ``sleep`` wait policies.
"""

from __future__ import annotations

import sys

from cudaevents._comparison.latency import round_trip
from cudaevents._comparison.suite import latency_script


def main(argv=None) -> int:
    return latency_script(argv, __doc__.splitlines()[0], round_trip,
                          samples=2000, warmup=200, block=50, settle="settle-us", settle_default=0.0,
                          settle_help="busy-wait between enqueuing and the host's store (default 0: race the GPU's "
                                      "fetch; the suite uses 50)")


if __name__ == "__main__":
    sys.exit(main())
