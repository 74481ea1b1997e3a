"""A script to profile (``cudaevents profile``) that declares regions through
``cudaevents.profile_timer()``: two CpuStreams, ``sys.argv[1]`` rounds of a "load" and a "step"
region on them; then, given ``--raise``, ``--exit`` or ``--sleep``, raises, sys.exit(3)s, or
sleeps a second (for the progress lines). Run by tests/test_profile_cli.py."""

import sys
import time

import cudaevents

timer = cudaevents.profile_timer()
n = int(sys.argv[1])
loader, worker = cudaevents.CpuStream("loader"), cudaevents.CpuStream("worker")
try:
    for i in range(n):
        with timer.region("load", loader):
            loader.enqueue(time.sleep, 0.002)
        with timer.region("step", worker):
            worker.enqueue(time.sleep, 0.001)
    loader.synchronize(timeout=30)
    worker.synchronize(timeout=30)
finally:
    loader.close(timeout=30)
    worker.close(timeout=30)
print("script argv:", sys.argv[1:])
print("torch imported:", "torch" in sys.modules)
if "--raise" in sys.argv:
    raise ValueError("the script failed")
if "--exit" in sys.argv:
    sys.exit(3)
if "--sleep" in sys.argv:
    time.sleep(1.0)
