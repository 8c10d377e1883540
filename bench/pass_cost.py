#!/usr/bin/env python
"""What pdasgd's machinery costs per pass, without threads: cnn1d (mnist1d's model), batch 32, one
torch thread, momentum 0.9 and clip 1 (pdasgd's default). Three arms, interleaved over rounds
(medians of microseconds per pass):

- plain: forward, torch.autograd.grad over the parameters, LayerSGD.step (Hogwild!'s and
  sequential's step);
- engine: the real threads.Decoupled forward (its per-thread module tree noting each layer's read)
  and backward (each layer updated from its parameter hook as its gradient appears, staleness and
  versions booked), one after the other on this thread;
- engine, pre-hooks: the same, with the reads noted by forward pre-hooks on the modules (the
  reading replica's form before 2026-12-06, late) instead of its wrapped module forwards.

The difference is what decoupling costs before any thread runs: the rest of a real run's gap to
sequential is the threads' hand-over and the interpreter lock (docs/pdasgd.md, "Where the
threads' time goes").

    python bench/pass_cost.py
"""
import functools
import statistics

import torch

from asyncsgd.algorithms.pdasgd.views import ReadingReplica
from cnn1d_engine import LR, engine as make_engine, interleaved, loss_fn, make_opt, model, no_arguments, params, x, y

no_arguments(__doc__, "pass_cost.py")


class PreHookReplica(ReadingReplica):
    """The reading replica with its reads noted by module forward pre-hooks (its former form)."""

    def __init__(self, *args):
        super().__init__(*args)
        for mod in {mod for mod, _, _ in self.slots}:
            mine = [(n, i) for m, n, i in self.slots if m is mod]
            del mod.forward  # the wrapper: the class's forward again
            mod.register_forward_pre_hook(functools.partial(self._enter, mine))


engine = make_engine()
replica = engine.replica()
pre_hook_replica = PreHookReplica(engine.model, engine.params, engine._read, False)
plain_opt = make_opt(params)


def plain():
    plain_opt.step(torch.autograd.grad(loss_fn(model(x), y), params), LR)


def engine_pass():
    engine.backward(engine.forward(replica, 0), 0)


def engine_pre_hooks():
    engine.backward(engine.forward(pre_hook_replica, 0), 0)


results = interleaved({"plain": plain, "engine": engine_pass, "engine, pre-hooks": engine_pre_hooks},
                      rounds=15, passes=300)
for name, v in results.items():
    print(f"{name}: {statistics.median(v):.0f} us per pass (min {min(v):.0f}, max {max(v):.0f})")
median = {name: statistics.median(v) for name, v in results.items()}
print(f"engine / plain: {median['engine'] / median['plain']:.3f}; "
      f"engine / engine with pre-hooks: {median['engine'] / median['engine, pre-hooks']:.3f}")
engine.close()
