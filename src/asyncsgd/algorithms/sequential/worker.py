"""Sequential mini-batch SGD: forward, backward, update, repeat. The reference."""

from __future__ import annotations

import torch


def run(ctx) -> None:
    model = ctx.spec.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = ctx.optimizer(params)
    ctx.start()
    for k in ctx.batches():
        x, y = ctx.fetch(k)
        loss = ctx.loss(model(x), y)
        grads = torch.autograd.grad(loss, params)
        opt.step(grads, ctx.lr(ctx.plan.samples_before(k)))
        ctx.record(len(y), loss, staleness=0, model=model, optimizer=opt, next_batch=k + 1, batch=k)
    ctx.finish(model)
