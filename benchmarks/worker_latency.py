"""Wake-up latency from GPU completion to Python code, for cudaevents.Worker and its floors.

    PYTHONPATH=src python3 benchmarks/worker_latency.py [--samples 1000] [--out result.json]

A thin runner: the measurement is ``cudaevents._comparison.latency.worker_wakeup`` (its docstring
says how it works), the same one ``cudaevents bench`` and ``benchmarks/suite.py`` run:
(a) ``cudaevents.Worker``, (b) the floor, a thread blocked in a blocking-sync
``cuEventSynchronize``, (c) and (c') ``cuLaunchHostFunc`` with libc's ``sem_post`` through
cuda-bindings and through ctypes (with a probe for whether the callback takes the GIL), and
(d) a host spinning on a GPU-written word for reference.
"""

from __future__ import annotations

import sys

from cudaevents._comparison.latency import worker_wakeup
from cudaevents._comparison.suite import latency_script


def main(argv=None) -> int:
    return latency_script(argv, __doc__.splitlines()[0], worker_wakeup,
                          samples=1000, warmup=100, block=100, settle="settle-ms", settle_default=1.0,
                          settle_help="sleep between arming and release (default 1 ms)")


if __name__ == "__main__":
    sys.exit(main())
