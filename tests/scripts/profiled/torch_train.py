"""A script to profile (``cudaevents profile``): four steps of training a small network on the
GPU, each in a "step" region of ``cudaevents.profile_timer()``. Run by
tests/test_gpu_torch_layers.py."""

import torch
from torch import nn

import cudaevents


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))

model = Net().cuda()
loss_fn = nn.CrossEntropyLoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(256, 64, device="cuda")
y = torch.randint(0, 10, (256,), device="cuda")
timer = cudaevents.profile_timer()
for step in range(4):
    with timer.region("step", torch.cuda.current_stream()):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
print("final loss", float(loss))
