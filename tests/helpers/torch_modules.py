"""Small torch modules whose backward says where autograd runs it, for LayerTimer's backward
tests (test_torch_layers_cpu.py, test_torch_layers_compiled.py). Imports torch: only for tests
that skip without it."""

from __future__ import annotations

import torch

nn = torch.nn


class Tag(torch.autograd.Function):
    """An identity whose backward writes its name to a log: where autograd runs it."""

    @staticmethod
    def forward(ctx, x, name, log):
        ctx.name, ctx.log = name, log
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.log.append(("ran", ctx.name))
        return grad, None, None


class Leaf(nn.Module):
    """A module whose forward is a :class:`Tag`."""

    def __init__(self, tag, log):
        super().__init__()
        self.tag, self.log = tag, log

    def forward(self, x):
        return Tag.apply(x, self.tag, self.log)


class Attention(nn.Module):
    """Three children reading one input (as q, k and v projections do), with work of its own
    before, between and after them."""

    def __init__(self, log):
        super().__init__()
        self.log = log
        self.q, self.k, self.v = Leaf("q", log), Leaf("k", log), Leaf("v", log)

    def forward(self, x):
        h = Tag.apply(x, "pre", self.log)
        return Tag.apply(self.q(h) * self.k(h) + self.v(h), "post", self.log)
