"""Tensor helpers every layer shares, in a leaf module (it imports only torch):
- StateFlattener: a model's float state (parameters and float buffers) to and from one flat
  vector; snapshots, checkpoints and averaging use it.
- flatten_params: the parameters become views of one contiguous vector (an update is one add).
- loss_fn: the task's loss by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class StateFlattener:
    """Copies a model's float state (parameters and float buffers, e.g. BatchNorm statistics)
    to and from one flat vector: snapshots, checkpoints and averaging all use it."""

    def __init__(self, model: torch.nn.Module):
        self.keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        self.numel = sum(model.state_dict()[k].numel() for k in self.keys)

    def tensors(self, model):
        sd = model.state_dict(keep_vars=False)
        return [sd[k] for k in self.keys]

    @torch.no_grad()
    def to_flat(self, model, out: torch.Tensor) -> torch.Tensor:
        i = 0
        for t in self.tensors(model):
            out[i:i + t.numel()].copy_(t.detach().reshape(-1), non_blocking=False)
            i += t.numel()
        return out

    @torch.no_grad()
    def load_flat(self, model, flat: torch.Tensor) -> None:
        i = 0
        for t in self.tensors(model):
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()


def loss_fn(kind: str):
    if kind == "mse":
        return F.mse_loss
    return F.cross_entropy


@torch.no_grad()
def flatten_params(params) -> torch.Tensor:
    """Move the parameters into one contiguous vector and make each a view of it."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    i = 0
    for p in params:
        p.data = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return flat
