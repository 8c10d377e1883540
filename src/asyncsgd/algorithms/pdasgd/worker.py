"""PD-ASGD (arXiv 2410.05985): decoupled forward and backward threads with layer-wise updates.

Inside one worker process, F forward threads and B backward threads share one model:
- A forward thread takes a queue slot, claims the next batch of the shared plan, runs the
  forward pass on the parameters as they are at that moment and puts the pending backward
  (the loss with its graph, plus each layer's version when the forward read it) on a bounded
  queue.Queue(queue_size): at most queue_size computed forwards wait, which bounds the memory
  held in activations and how far forwards run ahead of the updates.
- A backward thread takes a pending backward and runs it. With --updates layer (default) each
  parameter tensor ("layer") is updated the moment its gradient exists, before the rest of the
  backward pass finishes, lock-free; with --updates block the gradients are collected and
  applied together when the pass ends. One implementation, one switch.

How a layer's gradient reaches its update while the backward pass is still running: each
shared parameter carries one tensor hook, registered once (threads.Decoupled._leaf_grad).
Autograd runs a leaf's hook the moment that parameter's whole gradient for the pass exists
(its node has the highest priority of all), and the hook hands it to the pass's on_grad, found
by the autograd graph task it runs in. The update goes through .data (LayerSGD), so autograd's
version checks never fire, and the pass runs as torch.autograd.grad over the parameters, so
nothing is accumulated in a .grad that threads would share. Every forward thread runs its own
module tree on the shared tensors (views.ReadingReplica), whose wrapped module forwards note when
each layer is read.

Versions and staleness: board.layer_version[w, t, l] counts the updates backward thread t of
worker w applied to layer l (one writer per row, so no lock); a layer's version is the sum
over all rows, across processes. The staleness of one layer update = the layer's version when
it is applied - its version when the forward read that layer. A backward pass is misaligned
when any of its layers was updated by someone else between its forward and its update (the
backward then ran on weights newer than its forward's). docs/pdasgd.md says this for users.

Sharing between worker processes (--sharing, resolved by spec.resolve_sharing):
- memory: the --workers processes all run their threads on ONE model in shared memory (or on
  the one GPU that holds it: _align_device), Hogwild! style; versions count every worker's updates.
- average: each process keeps its own replica, on its own device (worker_main: cuda:{rank % GPUs},
  or the CPU), runs its forward and backward threads with layer-wise updates on it exactly as
  above, and a background averaging thread (exchange/averaging.py, the one lpap uses) averages
  the replicas' parameters every --average-every local backward passes, keeping the local
  progress made meanwhile; a final average at the end makes every replica equal. Versions and
  staleness are per replica (this worker's rows only); BatchNorm statistics stay per replica.
"""

from __future__ import annotations

import copy
import sys
import time

import torch

from ...exchange.averaging import BackgroundAverager
from ...tensors import flatten_params
from .rules import auto_threads, one_thread
from .threads import Decoupled, ThreadFailed


def measure(ctx, model, steps: int = 5) -> tuple[float, float]:
    """Median seconds of one forward and one backward pass on batch 0 (a private copy of the
    model, so nothing shared changes: not the weights, not BatchNorm statistics)."""
    m = copy.deepcopy(model)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    x, y = ctx.fetch(0)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    fwd, bwd = [], []
    for step in range(steps + 2):  # two warm-up steps
        sync()
        t0 = time.perf_counter()
        loss = ctx.loss(m(x), y)
        sync()
        t1 = time.perf_counter()
        torch.autograd.grad(loss, params, allow_unused=True)
        sync()
        t2 = time.perf_counter()
        if step >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    med = lambda v: sorted(v)[len(v) // 2]
    return med(fwd), med(bwd)


def _align_device(ctx, model) -> None:
    """--sharing memory: the shared model lives on one GPU; every worker of this run computes
    there (with --sharing average each worker keeps a replica on its own GPU instead)."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cuda" or ctx.device == p.device:
        return
    ctx.place_on(p.device)
    torch.cuda.set_device(p.device)


def run(ctx) -> None:
    cfg, board, rank = ctx.cfg, ctx.board, ctx.rank
    replicas = cfg.sharing == "average"
    if replicas:  # this process's own replica on its own device (cuda:{rank % GPUs} or the CPU)
        model = ctx.replica()
    else:
        model = ctx.spec.model  # shared memory (or the one GPU): every thread and process updates it
        _align_device(ctx, model)
    model.train()
    F, B = cfg.forward_threads, cfg.backward_threads
    if cfg.fb_ratio == "auto":
        tf, tb = measure(ctx, model)
        F, B = auto_threads(F, tf, tb)
        if rank == 0:
            print(f"pdasgd: --fb-ratio auto: forward {tf * 1e3:.2f} ms, backward {tb * 1e3:.2f} ms per batch "
                  f"-> {F} forward thread(s), {B} backward thread(s) per worker", file=sys.stderr, flush=True)
    depth = cfg.queue_size  # resolved once (rules.queue_default, or given)
    single = one_thread(F, B, depth)
    if rank == 0 and cfg.workers_from:  # the machine chose the process count: say what it chose
        threads = "1 forward + 1 backward, on one thread" if single else f"{F} forward + {B} backward threads"
        print(f"pdasgd: {cfg.workers} process(es) x ({threads}), {cfg.workers_from}; "
              "--workers N to choose", file=sys.stderr, flush=True)
    board.fb_threads[rank, 0], board.fb_threads[rank, 1] = F, B
    # set_threads gave this process its share of the cores; its computing threads split it.
    torch.set_num_threads(max(1, torch.get_num_threads() // (1 if single else F + B)))
    if not replicas:
        worker = Decoupled(ctx, F, B, depth, cfg.updates, cfg.parsed.staleness, cfg.workers,
                           backward_weights=cfg.backward_weights)
        ctx.start()
        worker.run()
        ctx.finish(model)
        return
    # After --fb-ratio auto's private copy: the parameters become views of one vector, the averaged one
    flat = flatten_params([p for p in model.parameters() if p.requires_grad])
    # The staleness policy's concurrency counts this replica's threads only
    worker = Decoupled(ctx, F, B, depth, cfg.updates, cfg.parsed.staleness, 1, model=model, replica=True,
                       backward_weights=cfg.backward_weights)
    run_replica(ctx, worker, flat)


def run_replica(ctx, worker: Decoupled, flat: torch.Tensor) -> None:
    """--sharing average: the worker's threads train its replica while a BackgroundAverager averages
    the replicas every --average-every local backward passes; the final average ends the run."""
    cfg, rank = ctx.cfg, ctx.rank
    failures: list[BaseException] = []

    def on_error(e: BaseException) -> None:  # the averaging thread failed: stop this worker's threads
        failures.append(e)
        worker._fail("averaging thread", e, None)

    averager = BackgroundAverager(ctx, flat, cfg.average_every, name="pdasgd", stopping=worker._stopping,
                                  on_error=on_error)
    worker.on_pass = averager.step
    averager.open()  # collective: every worker makes the exchange's gloo group
    try:
        ctx.start()
        averager.start()
        worker.run()  # raises ThreadFailed if a thread (or the averaging thread) failed
        averager.finish()  # the final average: every replica ends equal; its wait is idle time
        if failures:  # failed during the final average
            e = failures[0]
            raise ThreadFailed(f"pdasgd averaging thread of worker {rank} failed: {type(e).__name__}: {e}") from e
    finally:
        averager.close(timeout=30)  # joins the averaging thread and the exchange's threads
    ctx.finish(worker.model)
