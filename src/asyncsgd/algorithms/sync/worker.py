"""Synchronous data parallelism: every step, N processes all-reduce their gradients.

DDP semantics without DDP's bucketing: each rank computes the gradient of its batch, the
batch-size-weighted gradients are summed with one all_reduce, and every replica applies the
same averaged update, so replicas stay bit-identical. Step s uses batches s*N .. s*N+N-1 of the
shared plan, which makes sync(N workers, batch B) the same computation as sequential(batch N*B).
Delays (--delay) are paid before each collective, on the critical path, as on a real cluster;
a straggler slows every step for everyone.
The effective batch is N*B, so by default the learning rate is scaled to N*lr (the linear
scaling rule of Goyal et al. 2017, with its warm-up of N / 4 epochs: rules.py): the tuned synchronous baseline
users would run. --lr-scaling none keeps lr (then sync(N, B) equals sequential(N*B) at lr).
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from ...delays import pay
from .rules import lr_factor


def run(ctx) -> None:
    model = ctx.replica()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = ctx.optimizer(params)
    n, rank = ctx.world_size, ctx.rank
    numel = sum(p.numel() for p in params)
    packet = torch.zeros(numel + 2, device=ctx.device)  # [sum of n_i * g_i, sum of n_i, sum of n_i * loss_i]
    lr_scale = lr_factor(ctx.cfg, n)
    first_step = ctx.spec.start_batch // n
    num_steps = math.ceil(ctx.plan.num_batches / n)
    ctx.start()
    for step in range(first_step, num_steps):
        if ctx.board.stop[0]:
            break
        k = step * n + rank
        packet.zero_()
        if k < ctx.plan.num_batches:
            x, y = ctx.fetch(k)
            loss = ctx.loss(model(x), y)
            grads = torch.autograd.grad(loss, params)
            torch.cat([g.reshape(-1) for g in grads], out=packet[:numel]).mul_(len(y))
            packet[numel], packet[numel + 1] = len(y), loss.detach() * len(y)
        ctx.compute_done()
        waited = time.perf_counter()
        pay(ctx.delay, packet.numel() * 4, ctx.rng)
        dist.all_reduce(packet)  # every rank waits here for the slowest one and the network
        ctx.board.idle_s[rank] += time.perf_counter() - waited
        ctx.count_message(bytes_=int(packet.numel() * 4 * 2 * (n - 1) / n), messages=2 * (n - 1))
        total = packet[numel]
        mean_grad = packet[:numel] / total
        grads, i = [], 0
        for p in params:
            grads.append(mean_grad[i:i + p.numel()].view_as(p))
            i += p.numel()
        opt.step(grads, lr_scale * ctx.lr(ctx.plan.samples_before(step * n)))
        local = len(y) if k < ctx.plan.num_batches else 0
        ctx.record(local, packet[numel + 1] / total, staleness=0 if rank == 0 else None, model=model, optimizer=opt, updates=int(rank == 0),
                   next_batch=(step + 1) * n)
    ctx.finish(model)
