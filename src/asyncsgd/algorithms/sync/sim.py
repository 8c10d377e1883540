"""The simulated twin of synchronous data parallelism (worker.py)."""

from __future__ import annotations

import math

import numpy as np

from .rules import lr_factor


def run(sim) -> None:
    """Synchronous data parallelism. Step s: N workers compute batches s*N..s*N+N-1 in parallel, the
    step ends when the slowest has finished plus one all-reduce of P+2 floats; every replica then
    applies the same batch-size-weighted mean gradient, so one model stands for all replicas. The
    N gradients are computed as ONE gradient of the concatenated batch (the same number by
    linearity: the mean loss over N*B samples), which keeps host time low at 1,024 workers.
    --lr-scaling linear (default) multiplies the lr by N, as the real sync does."""
    W = sim.state[0]
    mom = sim.momentum_rows(1)
    opt = sim.optimizer([W], None if mom is None else [mom[0]])
    n, nb, stats, loop = sim.workers, sim.plan.num_batches, sim.stats, sim.loop
    packet = (sim.numel + 2) * 4
    lr_scale = lr_factor(sim.cfg, n)  # as worker.py
    t = 0.0
    for step in range(math.ceil(nb / n)):
        ks = list(range(step * n, min((step + 1) * n, nb)))
        g, loss, _ = sim.fm.gradient(ks)
        stats.grad_norm(g)
        times = [sim.compute.step(w) for w in range(len(ks))] + [0.0] * (n - len(ks))
        slowest = max(times)
        comm = sim.net.allreduce(n, packet)
        stats.idle_s += slowest - np.asarray(times)
        t += slowest + comm
        loop.now = t
        opt.step([g], lr_scale * sim.lr(sim.plan.samples_before(step * n)))
        stats.bytes_sent += int(packet * 2 * (n - 1) / n)
        stats.messages_sent += 2 * (n - 1)
        stats.staleness(0, 0)  # one update of the model per step, never stale (counted once, as updates)
        for w, k in enumerate(ks):
            stats.step(w, sim.batch_samples(k), loss, updates=int(w == 0))
        sim.maybe_snapshot()
        sim.on_event()
    sim.done_time(t)


