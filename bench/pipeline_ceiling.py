#!/usr/bin/env python
"""How fast pdasgd's one-process 1F:1B could be on this CPU: passes per second of cnn1d (mnist1d's
model), batch 32, one torch thread per Python thread, interleaved over rounds (medians):

- serial: one thread, forward + torch.autograd.grad + LayerSGD.step (sequential's loop);
- pipeline: a forward thread and a backward thread, one computed forward waiting at most (a
  queue slot taken before the forward, as threads.Decoupled does), the step after the backward;
- pipeline + hooks: the same, each layer updated from a parameter hook as its gradient appears
  (pdasgd's delivery), momentum 0.9 and clip 1 (its defaults), no bookkeeping;
- engine: the real threads.Decoupled with 1 forward and 1 backward thread (versions, staleness,
  the stop flags, the queue peak), the same optimizer.

pipeline + hooks over engine is what the engine's own Python costs once two threads contend for
the interpreter lock (docs/pdasgd.md, "Where the threads' time goes").

    python bench/pipeline_ceiling.py                    # every arm
    python bench/pipeline_ceiling.py "engine 1F:1B"     # one arm (e.g. under py-spy)
"""
import functools
import itertools
import queue
import statistics
import sys
import threading
import time
from types import SimpleNamespace

import torch

from asyncsgd.algorithms.pdasgd.threads import Decoupled
from asyncsgd.board import Board
from asyncsgd.optim import LayerSGD
from asyncsgd.tasks import get_task

PASSES = 1000
torch.set_num_threads(1)
torch.manual_seed(0)
model = get_task("mnist1d").model_fn()
params = [p for p in model.parameters() if p.requires_grad]
x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
loss_fn = torch.nn.functional.cross_entropy
make_opt = lambda ps: LayerSGD(ps, momentum=0.9, clip_grad_norm=1.0)
LR = 1e-4


def serial(n):
    opt = make_opt(params)
    for _ in range(n):
        opt.step(torch.autograd.grad(loss_fn(model(x), y), params), LR)


def pipeline(n, hooks=False):
    opt, q, slot = make_opt(params), queue.Queue(1), threading.Semaphore(1)
    handles = [p.register_hook(functools.partial(lambda i, g: opt.update(i, g, LR), i))
               for i, p in enumerate(params)] if hooks else []

    def forwards():
        for _ in range(n):
            slot.acquire()
            q.put(loss_fn(model(x), y))

    def backwards():
        for _ in range(n):
            loss = q.get()
            slot.release()
            grads = torch.autograd.grad(loss, params)
            if not hooks:
                opt.step(grads, LR)

    threads = [threading.Thread(target=forwards), threading.Thread(target=backwards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for h in handles:
        h.remove()


def engine(n):
    count, lock = itertools.count(), threading.Lock()

    def take():
        with lock:
            k = next(count)
        return k if k < n else None

    ctx = SimpleNamespace(board=Board(1, 1, 1, 1, 1, layers=len(params)), rank=0, spec=SimpleNamespace(model=model),
                          device=torch.device("cpu"), optimizer=make_opt, fetch=lambda k: (x, y), loss=loss_fn,
                          lr=lambda: LR, decay_fraction=lambda: 1.0, batch_source=lambda: take,
                          record_staleness=lambda values: None, record=lambda *a, **k: None)
    Decoupled(ctx, 1, 1, 1, "layer").run()


def passes_per_s(fn) -> float:
    t = time.perf_counter()
    fn(PASSES)
    return PASSES / (time.perf_counter() - t)


arms = {"serial": serial, "pipeline": pipeline, "pipeline + hooks": functools.partial(pipeline, hooks=True),
        "engine 1F:1B": engine}
if sys.argv[1:]:
    arms = {name: arms[name] for name in sys.argv[1:]}
serial(100)  # warm-up: oneDNN's kernels, the allocator
results = {name: [] for name in arms}
for _ in range(5):
    for name, fn in arms.items():
        results[name].append(passes_per_s(fn))
base = statistics.median(results["serial"]) if "serial" in results else None
for name, v in results.items():
    m = statistics.median(v)
    ratio = f"  {m / base:.2f}x serial" if base else ""
    print(f"{name:18s} {m:6.0f} passes/s (min {min(v):.0f}, max {max(v):.0f}){ratio}")
