#!/usr/bin/env python
"""What each part of pdasgd's engine adds to a plain pass, one part at a time: cnn1d (mnist1d's
model), batch 32, one torch thread, momentum 0.9, clip 1 (bench/cnn1d_engine.py). Arms,
interleaved over rounds (medians of microseconds per pass, and each arm minus plain):

- plain: forward, torch.autograd.grad, one block step (Hogwild!'s and sequential's pass);
- + no-op hooks: plain, with a hook that does nothing on each parameter (the C++ engine calling
  into Python once per layer);
- + layer-wise updates: plain, but the block step replaced by one LayerSGD.update per layer
  after the backward (the updates' own cost, clip included, without the hooks);
- + updates in hooks: plain, but each layer's LayerSGD.update made in its parameter's hook, as the
  engine makes it, without the engine's bookkeeping (the same updates, inside the backward);
- + reading forward: plain, the forward through the engine's reading replica (each layer's read
  version noted);
- engine, no clip: the real threads.Decoupled forward and backward (each layer updated from its
  hook, staleness and versions booked), --clip-grad-norm 0;
- engine: the same with the clip at 1 (pdasgd's default).

The plain arms run on their own copies of the model, so that the engine's parameter hooks do not
fire in them. Last, one layer's gradient norm (LayerSGD's, with the clip's float) is timed in a
loop outside any backward and in a loop inside one parameter hook: whether a torch op itself costs
more inside autograd's backward; and each layer's norm is timed once as the first op of its hook,
right after autograd's kernels, and once more straight after: what a cold start costs an op.
Runs of this script on our 2-core machine moved the plain pass by 20% between runs: compare the
differences within one run.

    python bench/engine_parts.py
"""
import copy
import statistics
import time

import torch

from asyncsgd.algorithms.pdasgd.views import ReadingReplica
from cnn1d_engine import LR, engine as make_engine, interleaved, loss_fn, make_opt, model, no_arguments, per_pass_us, x, y

no_arguments(__doc__, "engine_parts.py")


def plain_arm(layer_wise: bool = False, hooks: bool = False, updates_in_hooks: bool = False):
    """A plain pass on a copy of the model; its own optimizer."""
    own = copy.deepcopy(model)
    params = [p for p in own.parameters() if p.requires_grad]
    opt = make_opt(params)
    if hooks:
        for p in params:
            p.register_hook(lambda grad: None)
    if updates_in_hooks:
        def update_from_hook(i, grad):
            opt.update(i, grad, LR)
        for i, p in enumerate(params):
            p.register_hook(lambda grad, i=i: update_from_hook(i, grad))

    def run():
        grads = torch.autograd.grad(loss_fn(own(x), y), params)
        if updates_in_hooks:
            return
        if layer_wise:
            for i in reversed(range(len(grads))):  # the order a backward makes them in
                opt.update(i, grads[i], LR)
        else:
            opt.step(grads, LR)
    return run


engine = make_engine()
replica = engine.replica()
reading_model = copy.deepcopy(model)  # a reading replica over a copy: no engine hooks on its parameters
reading_params = [p for p in reading_model.parameters() if p.requires_grad]
reading = ReadingReplica(reading_model, reading_params, engine._read, False)
reading_opt = make_opt(reading_params)


def reading_forward():
    engine._tls.own = engine.own_versions()
    read = [0] * len(reading_params)
    reading_opt.step(torch.autograd.grad(loss_fn(reading(x, read), y), reading_params), LR)


def engine_pass(clip: float):
    def run():
        engine.opts[0].clip_grad_norm = clip
        engine.backward(engine.forward(replica, 0), 0)
    return run


arms = {"plain": plain_arm(), "+ no-op hooks": plain_arm(hooks=True), "+ layer-wise updates": plain_arm(layer_wise=True),
        "+ updates in hooks": plain_arm(updates_in_hooks=True),
        "+ reading forward": reading_forward, "engine, no clip": engine_pass(0.0), "engine": engine_pass(1.0)}
results = interleaved(arms, rounds=15, passes=300)
base = statistics.median(results["plain"])
for name, v in results.items():
    m = statistics.median(v)
    print(f"{name:22s} {m:6.0f} us per pass (min {min(v):.0f}, max {max(v):.0f})   {m - base:+5.0f} us   {m / base:.3f}x")
engine.close()


def norm_us() -> float:
    """Microseconds per gradient norm of a conv layer's weight gradient, as the clip computes it."""
    opt, grad = make_opt(params_for_norm), torch.randn(32, 32, 3)
    return per_pass_us(lambda: float(torch.linalg.vector_norm(grad, out=opt._norm_out[0])), 2000)


params_for_norm = [torch.nn.Parameter(torch.zeros(32, 32, 3))]
inside = []
probe = torch.nn.Parameter(torch.ones(4))
probe.register_hook(lambda grad: inside.append(norm_us()))
outside = []
for _ in range(5):
    outside.append(norm_us())
    torch.autograd.grad((probe * 2).sum(), [probe])
print(f"a layer's norm: {statistics.median(outside):.2f} us outside a backward, {statistics.median(inside):.2f} us "
      "in a loop inside a parameter hook")


def first_and_second() -> tuple[float, float, int]:
    """Microseconds per pass, summed over the layers, of a layer's norm made as the first op in its
    parameter's hook, and of the same norm made again straight after it (medians over passes); and
    how many layers."""
    own = copy.deepcopy(model)
    ps = [p for p in own.parameters() if p.requires_grad]
    out, first, second = torch.empty(()), [[] for _ in ps], [[] for _ in ps]

    def hook(i, grad):
        t0 = time.perf_counter_ns()
        float(torch.linalg.vector_norm(grad, out=out))
        t1 = time.perf_counter_ns()
        float(torch.linalg.vector_norm(grad, out=out))
        first[i].append(t1 - t0)
        second[i].append(time.perf_counter_ns() - t1)
    for i, p in enumerate(ps):
        p.register_hook(lambda grad, i=i: hook(i, grad))
    for _ in range(2000):
        torch.autograd.grad(loss_fn(own(x), y), ps)
    cold, warm = (sum(statistics.median(t[500:]) for t in times) / 1e3 for times in (first, second))
    return cold, warm, len(ps)


cold, warm, layers = first_and_second()
print(f"the {layers} layers' norms in their hooks, per pass: {cold:.1f} us as each hook's first op, "
      f"{warm:.1f} us made again straight after")
