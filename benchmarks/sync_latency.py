"""CPU -> GPU -> CPU round trip of AtomicEvent against the raw memory-operation floor.

Each sample: a GPU stream already waits (cuStreamWaitValue64) for the host's "ping" value
and will then write a "pong" value; the clock runs from the host's ping store until the host
sees the pong. The floor does exactly that with cuda.bindings and ctypes; ours does it with
``ping.signal(i)`` and ``pong.wait(i)`` on two AtomicEvents (enqueued the same way before
the clock starts). Run on a GPU machine:

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


def raw_floor(samples: int, warmup: int) -> list[int]:
    stream = GpuStream(0)
    host, dev = _cuda.mem_host_alloc_mapped(16)
    ping = ctypes.c_uint64.from_address(host)
    pong = ctypes.c_uint64.from_address(host + 8)
    ping.value = pong.value = 0
    out = []
    h = stream._handle
    for i in range(1, samples + warmup + 1):
        check(d.cuStreamWaitValue64(h, dev, i, 0))
        check(d.cuStreamWriteValue64(h, dev + 8, i, 0))
        t0 = time.perf_counter_ns()
        ping.value = i
        while pong.value < i:
            pass
        t1 = time.perf_counter_ns()
        if i > warmup:
            out.append(t1 - t0)
    stream.synchronize(timeout=10)
    stream.close()
    return out


def ours(samples: int, warmup: int, policy: str) -> list[int]:
    stream = GpuStream(0)
    ping, pong = AtomicEvent(0), AtomicEvent(0)
    out = []
    for i in range(1, samples + warmup + 1):
        ping.wait(i, stream)
        pong.signal(i, stream)
        t0 = time.perf_counter_ns()
        ping.signal(i)
        pong.wait(i, timeout=10, policy=policy)
        t1 = time.perf_counter_ns()
        if i > warmup:
            out.append(t1 - t0)
    stream.synchronize(timeout=10)
    stream.close()
    ping.close()
    pong.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = cudaevents.Device(0)
    rows = {"raw floor (memops, host spin)": summarize(raw_floor(args.samples, args.warmup))}
    for backend in ("mem64", "mem32", "hostfn"):
        os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = backend
        for policy in ("spin", "sleep"):
            rows[f"AtomicEvent {backend}, policy {policy}"] = summarize(ours(args.samples, args.warmup, policy))
    os.environ.pop("CUDAEVENTS_ATOMIC_BACKEND")
    rows["raw floor again"] = summarize(raw_floor(args.samples, args.warmup))
    floor = rows["raw floor (memops, host spin)"]["p50_us"]
    print(f"CPU->GPU->CPU round trip on {device.name}, {args.samples} samples")
    print(f"{'':<36}{'p50 us':>9}{'p90 us':>9}{'min us':>9}{'p50 / floor':>13}")
    for name, r in rows.items():
        print(f"{name:<36}{r['p50_us']:>9.2f}{r['p90_us']:>9.2f}{r['min_us']:>9.2f}{r['p50_us'] / floor:>13.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device.name, "samples": args.samples, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
