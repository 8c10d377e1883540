"""The simulated twin of PD-ASGD on one shared model (worker.py)."""

from __future__ import annotations

from collections import deque

import numpy as np

from ...exchange.policy import StalenessPolicy
from .rules import auto_threads, concurrency, queue_size

def run(sim) -> None:
    """PD-ASGD on one shared model (worker.py's semantics): each of N workers has F forward and B
    backward threads (--forward-threads, --backward-threads; --fb-ratio auto: rules.auto_threads
    on the simulated forward and backward times), each thread a compute lane of its own.

    forward thread: claim a batch, run the REAL forward on the shared parameters as they are (the
      autograd graph is kept), after the simulated forward time put it on the worker's queue
      (--queue-size, default rules.queue_size; a full queue blocks the thread: idle time).
    backward thread: take the oldest pending forward, run the REAL backward through the kept graph
      on the parameters as they are NOW (weights may be newer than the forward's: misalignment,
      exactly as a real shared-memory backward), with the lr of that moment; the layer updates
      then land during the simulated backward time: --updates layer: tensor j lands when the
      backward has covered the tensors after it (time shares proportional to their sizes, last
      layer first); block: all at the end. Staleness of a layer update = updates of that tensor by
      others between the forward's read and this write (one histogram entry per layer update, as
      real runs); a pass is misaligned when any of its layer updates has staleness > 0.
    Momentum buffers: one set per backward thread (rules.MOMENTUM_PER, as real)."""
    cfg, loop, stats, fm = sim.cfg, sim.loop, sim.stats, sim.fm
    W = sim.state[0]
    layers = len(fm.params)
    F_, B_ = cfg.forward_threads, cfg.backward_threads
    if cfg.fb_ratio == "auto":
        F_, B_ = auto_threads(F_, sim.compute.forward_s, sim.compute.backward_s)
    mom = sim.momentum_rows(sim.workers * B_)  # one set per backward thread (rules.MOMENTUM_PER)
    opts = [sim.optimizer(fm.layer_views(W), None if mom is None else fm.layer_views(mom[t]))
            for t in range(sim.workers * B_)]
    qsize = queue_size(cfg, F_)
    layer_mode = cfg.updates == "layer"
    order = list(reversed(range(layers)))  # backward order: last tensor first
    frac, covered = [1.0] * layers, 0
    for j in order:
        covered += fm.sizes[j]
        if layer_mode:
            frac[j] = covered / fm.numel
    lv = np.zeros(layers, np.int64)  # updates applied to each tensor
    queues = [deque() for _ in range(sim.workers)]
    blocked = [deque() for _ in range(sim.workers)]  # forward threads waiting for queue space
    idle_b = [deque() for _ in range(sim.workers)]  # (backward thread, since): threads waiting for work

    def fstart(w: int) -> None:
        k = sim.claim()
        if k is None:
            sim.done_time(loop.now)
            return
        loss, n = fm.forward(k)
        loop.at(loop.now + sim.compute.forward(w), fend, w, (loss, n, lv.copy()))

    def fend(w: int, item) -> None:
        if len(queues[w]) >= qsize:
            blocked[w].append((item, loop.now))
            return
        enqueue(w, item)
        fstart(w)

    def enqueue(w: int, item) -> None:
        queues[w].append(item)
        if len(queues[w]) > stats.queue_peak[w]:
            stats.queue_peak[w] = len(queues[w])
        if idle_b[w]:
            b, since = idle_b[w].popleft()
            stats.idle_s[w] += loop.now - since
            bstart(w, b)

    def bstart(w: int, b: int) -> None:
        """Backward thread b (of all workers' threads: worker w's are w*B .. w*B+B-1) takes work."""
        if not queues[w]:
            idle_b[w].append((b, loop.now))
            return
        loss, n, read = queues[w].popleft()
        if blocked[w]:  # a blocked forward thread hands over its pass and goes on
            item, since = blocked[w].popleft()
            stats.idle_s[w] += loop.now - since
            queues[w].append(item)
            loop.at(loop.now, fstart, w)
        g = fm.backward(loss)
        stats.grad_norm(g)
        views = fm.layer_views(g)
        t0, dur = loop.now, sim.compute.backward(w)
        ps = {"misaligned": False, "left": layers, "loss": float(loss.detach()), "n": n, "lr": sim.lr()}
        for j in order:
            loop.at(t0 + dur * frac[j], land, w, b, j, views[j], read, ps)

    # as the real pdasgd: --staleness on layer updates, with the rules' concurrency
    policy = StalenessPolicy(cfg.parsed.staleness, concurrency(F_, B_, sim.workers))

    def land(w: int, b: int, j: int, grad, read, ps) -> None:
        s = int(lv[j] - read[j])
        stats.layer_stale_sum[j] += s
        stats.layer_stale_count[j] += 1
        if s > stats.layer_stale_max[j]:
            stats.layer_stale_max[j] = s
        stats.staleness(w, s)
        ps["misaligned"] |= s > 0
        factor = policy.factor(s)
        if factor is None:
            stats.dropped[w] += 1
        else:
            opts[b].update(j, grad, ps["lr"] * factor)
            lv[j] += 1
        ps["left"] -= 1
        if ps["left"] == 0:
            stats.backward_passes += 1
            stats.misaligned += ps["misaligned"]
            stats.step(w, ps["n"], ps["loss"])
            sim.maybe_snapshot()
            sim.done_time(loop.now)
            bstart(w, b)

    for w in range(sim.workers):
        for _ in range(F_):
            loop.at(0.0, fstart, w)
        for t in range(B_):
            loop.at(0.0, bstart, w, w * B_ + t)
    loop.run(sim.on_event)
    c = stats.layer_stale_count
    passes = stats.backward_passes
    sim.extra.update({
        "staleness_by_layer": [{"layer": fm.names[j], "mean": round(float(stats.layer_stale_sum[j]) / int(c[j]), 4) if c[j] else 0.0,
                                "max": int(stats.layer_stale_max[j]), "count": int(c[j])} for j in range(layers)],
        "backward_passes": passes, "misaligned_fraction": round(stats.misaligned / passes, 4) if passes else 0.0,
        "forward_threads": F_, "backward_threads": B_, "fb_ratio": cfg.fb_ratio, "queue_size": qsize,
        "queue_peak": int(stats.queue_peak.max()), "updates_mode": cfg.updates,
    })
    sim.sim_extra["compute_lanes"] = sim.workers * (F_ + B_)


