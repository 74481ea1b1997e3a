"""WORLD ranks (torch.multiprocessing spawn) over BACKEND, each timing regions of
``torch.cuda._sleep`` kernels, rank SLOW's three times longer: with gloo (the default) every
rank on GPU 0, with nccl rank r on GPU r (NCCL's NVLink multicast off). The ranks take turns
(a barrier before each turn), so on a shared GPU their kernels never overlap and each region
times its own kernel. A RankReporter reports every 4 steps; at the end rank 0 gathers
everything with samples, and every rank times a gather of 1,000 region names. Rank 0 prints
one JSON line.

    python tests/scripts/ranks/timed_ranks.py WORLD SLOW [gloo|nccl]

Run by tests/test_gpu_ranks.py (gloo) and tests/test_gpu_multi.py (nccl)."""

import json
import os
import pickle
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cudaevents as ce
from cudaevents._profiler import ranks

STEPS = 12


def run(rank, world, slow, port, backend):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0")
    device = rank if backend == "nccl" else 0
    torch.cuda.set_device(device)
    if backend == "nccl":
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", device))
    else:
        dist.init_process_group(backend, rank=rank, world_size=world)
    stream = torch.cuda.current_stream()
    cycles = 2_000_000 * (3 if rank == slow else 1)
    torch.cuda._sleep(1000)  # the kernel is loaded before anything is timed
    torch.cuda.synchronize()
    timer = ce.Timer()
    reporter = ce.RankReporter(timer, every=4, print_report=False)
    periodic = []
    for _ in range(STEPS):
        for turn in range(world):
            dist.barrier()
            if turn == rank:
                with timer.region("step", stream):
                    torch.cuda._sleep(cycles)
                with timer.region(f"only on rank {rank}", stream):
                    torch.cuda._sleep(1000)
                torch.cuda.synchronize()
        report = reporter.step()
        if report is not None:
            periodic.append(report.stragglers())
    final = ce.gather_results(timer, samples=True)
    many = ce.Results(ce.Sample(f"model.layers.{i}.mlp", device, 1, 0.0, 1.0 + rank) for i in range(1000))
    dist.barrier()
    t0 = time.perf_counter()
    ce.gather_results(many)
    gather_s = time.perf_counter() - t0
    timings = [None] * world if rank == 0 else None
    dist.gather_object((gather_s, len(pickle.dumps(ranks.rank_payload(many, rank)))), timings, dst=0)
    if rank == 0:
        trace = final.to_chrome_trace()
        print(json.dumps({
            "stragglers": final.stragglers(),
            "periodic": periodic,
            "regions": [r["name"] for r in final.regions()],
            "trace_pids": sorted({e["pid"] for e in trace["traceEvents"]}),
            "clock_error_us": [p["clock_error_us"] for p in final.payloads],
            "gather_1000_names": timings,
            "table": final.table(),
            "devices": sorted({smp[1] for p in final.payloads for smp in p["samples"]}),
        }), flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    world, slow = int(sys.argv[1]), int(sys.argv[2])
    backend = sys.argv[3] if len(sys.argv) > 3 else "gloo"
    mp.spawn(run, args=(world, slow, free_port(), backend), nprocs=world, join=True)
