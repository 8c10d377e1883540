#!/usr/bin/env python
"""What pdasgd's machinery costs per pass, without threads: cnn1d (mnist1d's model), batch 32, one
torch thread, momentum 0.9 and clip 1 (pdasgd's default). Two arms, interleaved over rounds
(medians of microseconds per pass):

- plain: forward, torch.autograd.grad over the parameters, LayerSGD.step (Hogwild!'s and
  sequential's step);
- engine: the real threads.Decoupled forward (its per-thread module tree noting each layer's read)
  and backward (each layer updated from its parameter hook as its gradient appears, staleness and
  versions booked), one after the other on this thread.

The difference is what decoupling costs before any thread runs: the rest of a real run's gap to
sequential is the threads' hand-over and the interpreter lock (docs/pdasgd.md, "Where the
threads' time goes").

    python bench/pass_cost.py
"""
import statistics

import torch

from cnn1d_engine import LR, engine as make_engine, interleaved, loss_fn, make_opt, model, no_arguments, params, x, y

no_arguments(__doc__, "pass_cost.py")
engine = make_engine()
replica = engine.replica()
plain_opt = make_opt(params)


def plain():
    plain_opt.step(torch.autograd.grad(loss_fn(model(x), y), params), LR)


def engine_pass():
    engine.backward(engine.forward(replica, 0), 0)


results = interleaved({"plain": plain, "engine": engine_pass}, rounds=15, passes=300)
for name, v in results.items():
    print(f"{name}: {statistics.median(v):.0f} us per pass (min {min(v):.0f}, max {max(v):.0f})")
print(f"engine / plain: {statistics.median(results['engine']) / statistics.median(results['plain']):.3f}")
engine.close()
