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

import torch

from cnn1d_engine import LR, engine as make_engine, loss_fn, make_opt, model, params, x, y

PASSES = 1000


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

    make_engine(1, 1, take).run()


def passes_per_s(fn) -> float:
    t = time.perf_counter()
    fn(PASSES)
    return PASSES / (time.perf_counter() - t)


arms = {"serial": serial, "pipeline": pipeline, "pipeline + hooks": functools.partial(pipeline, hooks=True),
        "engine 1F:1B": engine}
if {"-h", "--help"} & set(sys.argv[1:]):
    print(__doc__)
    sys.exit(0)
unknown = [name for name in sys.argv[1:] if name not in arms]
if unknown:
    print(f"pipeline_ceiling.py: unknown arm {unknown[0]!r}; the arms are {', '.join(map(repr, arms))}", file=sys.stderr)
    sys.exit(2)
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
