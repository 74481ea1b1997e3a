"""A script for ``torchrun ... -m cudaevents profile``: each rank runs a small torch model on
GPU 0 in its own process group (gloo), rank 1 with four times the batch; the script destroys
its group at the end, so the profiler makes its own for the gather. Run by
tests/test_gpu_ranks.py."""

import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.cuda.set_device(0)
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
x = torch.randn(2048 * (4 if rank == 1 else 1), 1024, device="cuda")
with torch.no_grad():
    for _ in range(20):
        model(x)
torch.cuda.synchronize()
dist.barrier()
dist.destroy_process_group()
print(f"rank {rank} of {os.environ['WORLD_SIZE']} done", flush=True)
