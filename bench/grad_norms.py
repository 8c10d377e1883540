#!/usr/bin/env python
"""Per-tensor gradient norms over a sequential run: how often would --clip-grad-norm C clip?

A plain torch loop with sequential's defaults (SGD lr 0.05, momentum 0.9, batch 32, a 0.5-epoch
linear warm-up then cosine, 10 epochs) on one task; every step records each parameter tensor's
gradient norm. Prints, per tensor and over all of them, the median, the 99th percentile, the
largest norm, and the fraction of updates above C (docs/pdasgd.md, "Clipping instead of damping").

    python bench/grad_norms.py --task mnist1d --seeds 0 1 2
    python bench/make_npz.py /tmp/my_data.npz && python bench/grad_norms.py --task npz:/tmp/my_data.npz
"""
import argparse
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from asyncsgd.tasks import get_task


def run(task_name: str, seed: int, epochs: float, clip: float) -> None:
    torch.manual_seed(seed)
    task = get_task(task_name, seed=seed)
    model = task.model_fn()
    loader = DataLoader(task.train_set, batch_size=32, shuffle=True)
    steps, warmup = int(epochs * len(loader)), int(0.5 * len(loader))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    shape = lambda t: (t + 1) / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    names = [n for n, _ in model.named_parameters()]
    norms = {n: [] for n in names}
    step = 0
    while step < steps:
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for n, p in model.named_parameters():
                norms[n].append(float(p.grad.norm()))
            opt.step(); sched.step(); step += 1
            if step == steps:
                break
    print(f"{task_name} seed {seed}: {steps} steps")
    every = torch.tensor([v for n in names for v in norms[n]])
    for n, v in [*((n, torch.tensor(norms[n])) for n in names), ("all tensors", every)]:
        q = torch.quantile(v, torch.tensor([0.5, 0.99]))
        print(f"  {n:24s} median {q[0]:.4f}  p99 {q[1]:.3f}  max {v.max():.3f}  above {clip:g}: {float((v > clip).float().mean()):.2%}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.error = lambda message: p.exit(2, f"grad_norms.py: {message}; accepted: see --help\n")  # one line, not argparse's usage block
    p.add_argument("--task", default="mnist1d")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--clip", type=float, default=1.0)
    a = p.parse_args()
    for s in a.seeds:
        run(a.task, s, a.epochs, a.clip)
