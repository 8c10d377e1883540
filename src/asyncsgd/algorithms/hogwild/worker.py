"""Hogwild! (Niu et al. 2011): N processes update one shared-memory model without locks.

Each process claims the next batch of the shared plan, reads the parameters as they are,
computes a gradient and writes its update straight into shared memory while the others do
the same. Staleness of an update = updates the other processes applied between this
process's read (forward) and its write. The version is the sum of the per-worker update
counters on the board (each worker writes only its own slot, so counting needs no lock).
--staleness (default cap, see spec.py; none gives the paper's plain updates) scales or drops an
update by its staleness with the same exchange.policy rules as dasgd and pdasgd.
"""

from __future__ import annotations

import torch

from ...exchange.policy import StalenessPolicy


def run(ctx) -> None:
    model = ctx.spec.model  # shared memory: every process sees every update
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = ctx.optimizer(params)  # momentum buffers are per process (as in pytorch/examples)
    updates, dropped, rank = ctx.board.updates, ctx.board.dropped, ctx.rank
    policy = StalenessPolicy(ctx.cfg.parsed.staleness, ctx.world_size)
    ctx.start()
    for k in ctx.batches():
        x, y = ctx.fetch(k)
        version_read = int(updates.sum())
        loss = ctx.loss(model(x), y)
        grads = torch.autograd.grad(loss, params)
        staleness = int(updates.sum()) - version_read
        factor = policy.factor(staleness, ctx.decay_fraction())
        if factor is None:  # not applied: counted in dropped_updates, and the version does not move
            dropped[rank] += 1
        else:
            opt.step(grads, ctx.lr() * factor)
        ctx.record(len(y), loss, staleness=staleness, model=model, optimizer=opt, batch=k,
                   updates=int(factor is not None))
    ctx.finish(model)
