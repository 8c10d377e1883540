#!/usr/bin/env python
"""What --clip-grad-norm costs per update on the CPU: optim.LayerSGD on cnn1d's 8 parameter
tensors (mnist1d's model), one torch thread, gradients small enough that the clip never acts (the
common case). Prints microseconds per layer update (pdasgd's path) and per block step (Hogwild!,
lpap, dasgd), without and with the clip, interleaved over rounds (medians).

    python bench/clip_cost.py
"""
import statistics
import time

import torch

from asyncsgd.optim import LayerSGD
from asyncsgd.tasks import get_task
from cnn1d_engine import no_arguments

no_arguments(__doc__, "clip_cost.py")

torch.set_num_threads(1)
params = [p for p in get_task("mnist1d").model_fn().parameters()]
grads = [torch.randn_like(p) * 1e-3 for p in params]


def per_call_us(clip: float, block: bool, calls: int = 2000) -> float:
    opt = LayerSGD(params, momentum=0.9, clip_grad_norm=clip)
    t = time.perf_counter()
    for _ in range(calls):
        if block:
            opt.step(grads, 0.0)
        else:
            for i, g in enumerate(grads):
                opt.update(i, g, 0.0)
    return (time.perf_counter() - t) / calls / (1 if block else len(params)) * 1e6


results = {(block, clip): [] for block in (False, True) for clip in (0.0, 1.0)}
for _ in range(5):
    for key in results:
        results[key].append(per_call_us(key[1], key[0]))
for (block, clip), v in results.items():
    print(f"{'block step' if block else 'layer update'}, clip {clip:g}: {statistics.median(v):.1f} us")
