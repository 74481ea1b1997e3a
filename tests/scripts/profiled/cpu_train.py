"""A script to profile (``cudaevents profile``): three iterations of training a small network
on the CPU, each iteration's "batch" region on a CpuStream of ``cudaevents.profile_timer()``,
the optimizer's step last. Run by tests/test_torch_layers_cpu.py."""

import time

import torch
from torch import nn

import cudaevents

model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
timer = cudaevents.profile_timer()
host = cudaevents.CpuStream("host")
for _ in range(3):
    with timer.region("batch", host):
        host.enqueue(time.sleep, 0.001)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
host.synchronize(timeout=30)
host.close(timeout=30)
