"""CPU -> GPU -> CPU round trip of AtomicEvent against the raw memory-operation floor.

Each sample: a GPU stream already waits (cuStreamWaitValue64) for the host's "ping" value
and will then write a "pong" value; the clock runs from the host's ping store until the host
sees the pong. The floor does exactly that with cuda.bindings and ctypes; ours does it with
``ping.signal(i)`` and ``pong.wait(i)`` on two AtomicEvents (enqueued the same way before
the clock starts). Methods run in interleaved blocks, so drifts of the machine hit them
alike. Run on a GPU machine:

    PYTHONPATH=src python3 benchmarks/sync_latency.py [--samples 2000] [--out results.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time

from cuda.bindings import driver as d

import cudaevents
from cudaevents import AtomicEvent, GpuStream, _cuda


def check(result):
    if result[0]:
        raise RuntimeError(f"CUDA error {result[0]!r}")
    return result[1] if len(result) == 2 else None


def summarize(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)
    return {"p50_us": statistics.median(ns) / 1e3, "p90_us": ns[int(0.9 * (len(ns) - 1))] / 1e3,
            "min_us": ns[0] / 1e3}


def settle(us: float) -> None:
    """Busy-wait so the GPU has fetched the wait before the clock starts."""
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


class RawFloor:
    """The floor: host store, cuStreamWaitValue64, cuStreamWriteValue64, host spin."""

    settle_us = 0.0

    def __init__(self):
        self.stream = GpuStream(0)
        host, self.dev = _cuda.mem_host_alloc_mapped(16)
        self.ping = ctypes.c_uint64.from_address(host)
        self.pong = ctypes.c_uint64.from_address(host + 8)
        self.ping.value = self.pong.value = 0
        self.i = 0

    def run(self, n: int) -> list[int]:
        out, h, dev, ping, pong = [], self.stream._handle, self.dev, self.ping, self.pong
        for _ in range(n):
            self.i += 1
            i = self.i
            check(d.cuStreamWaitValue64(h, dev, i, 0))
            check(d.cuStreamWriteValue64(h, dev + 8, i, 0))
            settle(self.settle_us)
            t0 = time.perf_counter_ns()
            ping.value = i
            while pong.value < i:
                pass
            out.append(time.perf_counter_ns() - t0)
        return out


class Ours:
    """The same round trip through two AtomicEvents of one backend."""

    settle_us = 0.0

    def __init__(self, backend: str, policy: str):
        os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = backend
        self.stream = GpuStream(0)
        self.ping, self.pong = AtomicEvent(0), AtomicEvent(0)
        os.environ.pop("CUDAEVENTS_ATOMIC_BACKEND")
        self.policy = policy
        self.i = 0

    def run(self, n: int) -> list[int]:
        out, s, ping, pong, policy = [], self.stream, self.ping, self.pong, self.policy
        for _ in range(n):
            self.i += 1
            i = self.i
            ping.wait(i, s)
            pong.signal(i, s)
            settle(self.settle_us)
            t0 = time.perf_counter_ns()
            ping.signal(i)
            pong.wait(i, timeout=10, policy=policy)
            out.append(time.perf_counter_ns() - t0)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--block", type=int, default=50, help="samples per method before switching")
    parser.add_argument("--settle-us", type=float, default=0.0,
                        help="busy-wait between enqueuing and the host's store (0: race the GPU's fetch)")
    parser.add_argument("--out")
    args = parser.parse_args()
    RawFloor.settle_us = Ours.settle_us = args.settle_us
    device = cudaevents.Device(0)
    methods = {"raw floor (memops, host spin)": RawFloor()}
    for backend in ("mem64", "mem32", "hostfn"):
        for policy in ("spin", "sleep"):
            methods[f"AtomicEvent {backend}, policy {policy}"] = Ours(backend, policy)
    samples: dict[str, list[int]] = {name: [] for name in methods}
    for m in methods.values():
        m.run(args.warmup)
    # interleave blocks of every method so that drifts of the machine hit all of them alike
    for _ in range(max(1, args.samples // args.block)):
        for name, m in methods.items():
            samples[name].extend(m.run(args.block))
    rows = {name: summarize(ns) for name, ns in samples.items()}
    floor = rows["raw floor (memops, host spin)"]["p50_us"]
    print(f"CPU->GPU->CPU round trip on {device.name}, {args.samples} samples, settle {args.settle_us:g} us")
    print(f"{'':<36}{'p50 us':>9}{'p90 us':>9}{'min us':>9}{'p50 / floor':>13}")
    for name, r in rows.items():
        print(f"{name:<36}{r['p50_us']:>9.2f}{r['p90_us']:>9.2f}{r['min_us']:>9.2f}{r['p50_us'] / floor:>13.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device.name, "samples": args.samples, "settle_us": args.settle_us, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
