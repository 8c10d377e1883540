"""The simulated twin of PD-ASGD on one shared model (worker.py)."""

from __future__ import annotations

from collections import deque

import numpy as np

from ...exchange.policy import StalenessPolicy
from .rules import auto_threads, concurrency, damped_staleness, slot_back_at_end, slot_count


class PassQueue:
    """The bounded queue of computed forwards between each simulated worker's forward and backward
    lanes, as the real engine's (threads.Decoupled: queue.Queue(queue_size) and its slots); one
    implementation for pdasgd's twin and layup's. As in the real engine a forward lane takes one of
    the worker's rules.slot_count(qsize) slots BEFORE it claims and computes a batch, and a backward
    lane gives it back when it takes the pass (with --queue-size 0 when it has finished it: the
    twin calls finished(w); rules.slot_back_at_end): at most qsize (1) forwards are computed or
    waiting at once. fstart(w)
    starts a forward lane of worker w on its next batch (after start() gave it a slot; a twin's
    fstart that finds no batch left calls release(w)), bstart(w, b) backward lane b on its next
    pass (both the twin's own)."""

    def __init__(self, sim, qsize: int, fstart, bstart, when_idle=lambda w: None):
        self.sim, self.fstart, self.bstart, self.when_idle = sim, fstart, bstart, when_idle
        self.queues = [deque() for _ in range(sim.workers)]
        self.slots = [slot_count(qsize)] * sim.workers  # free slots per worker
        self.back_at_end = slot_back_at_end(qsize)
        self.blocked = [deque() for _ in range(sim.workers)]  # since: forward lanes waiting for a slot
        self.idle = [deque() for _ in range(sim.workers)]  # (backward lane, since): lanes waiting for work

    def start(self, w: int) -> None:
        """A forward lane of worker w goes on to its next pass: with a slot, or it waits for one."""
        if self.slots[w] > 0:
            self.slots[w] -= 1
            self.fstart(w)
        else:
            self.blocked[w].append(self.sim.loop.now)

    def release(self, w: int) -> None:
        """A slot comes back (a backward took a pass, or a lane found no batch): a waiting lane takes it."""
        self.slots[w] += 1
        if self.blocked[w]:
            self.sim.stats.idle_s[w] += self.sim.loop.now - self.blocked[w].popleft()
            self.sim.loop.at(self.sim.loop.now, self.start, w)

    def forward_done(self, w: int, item) -> None:
        """A forward lane of worker w computed item (it holds a slot, so there is room): queue it and go on."""
        q, stats = self.queues[w], self.sim.stats
        q.append(item)
        if len(q) > stats.queue_peak[w]:
            stats.queue_peak[w] = len(q)
        if self.idle[w]:
            b, since = self.idle[w].popleft()
            stats.idle_s[w] += self.sim.loop.now - since
            self.bstart(w, b)
        self.start(w)

    def take(self, w: int, b: int):
        """Backward lane b of worker w takes the oldest pass (its slot comes back), or waits (None)."""
        loop = self.sim.loop
        if not self.queues[w]:
            self.idle[w].append((b, loop.now))
            self.when_idle(w)
            return None
        item = self.queues[w].popleft()
        if not self.back_at_end:
            self.release(w)
        return item

    def finished(self, w: int) -> None:
        """A backward lane of worker w finished its pass: with --queue-size 0 its slot comes back now."""
        if self.back_at_end:
            self.release(w)


def run(sim) -> None:
    """PD-ASGD on one shared model (worker.py's semantics): each of N workers has F forward and B
    backward threads (--forward-threads, --backward-threads; --fb-ratio auto: rules.auto_threads
    on the simulated forward and backward times), each thread a compute lane of its own.

    forward thread: claim a batch, run the REAL forward on the shared parameters as they are (the
      autograd graph is kept), after the simulated forward time put it on the worker's queue
      (--queue-size, default rules.queue_default: the slots; a lane without a slot waits: idle time).
    backward thread: take the oldest pending forward, run the REAL backward through the kept graph
      on the parameters as they are NOW (weights may be newer than the forward's: misalignment,
      exactly as a real shared-memory backward), with the lr of that moment; the layer updates
      then land during the simulated backward time: --updates layer: tensor j lands when the
      backward has covered the tensors after it (time shares proportional to their sizes, last
      layer first); block: all at the end. Staleness of a layer update = updates of that tensor by
      others between the forward's read and this write (one histogram entry per layer update, as
      real runs); a pass is misaligned when any of its layer updates has staleness > 0;
      --staleness acts on the updates by the same worker's threads only (rules.damped_staleness).
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
    qsize = cfg.queue_size
    layer_mode = cfg.updates == "layer"
    order = list(reversed(range(layers)))  # backward order: last tensor first
    frac, covered = [1.0] * layers, 0
    for j in order:
        covered += fm.sizes[j]
        if layer_mode:
            frac[j] = covered / fm.numel
    lv = np.zeros(layers, np.int64)  # updates applied to each tensor
    lv_own = np.zeros((sim.workers, layers), np.int64)  # the same, by each worker's threads
    own_sum = np.zeros(layers, np.float64)  # per-layer sums of the staleness the policy acted on

    def fstart(w: int) -> None:
        k = sim.claim()
        if k is None:
            sim.done_time(loop.now)
            passes.release(w)
            return
        loss, n = fm.forward(k)
        loop.at(loop.now + sim.compute.forward(w), passes.forward_done, w, (loss, n, (lv.copy(), lv_own[w].copy())))

    def bstart(w: int, b: int) -> None:
        """Backward thread b (of all workers' threads: worker w's are w*B .. w*B+B-1) takes work."""
        item = passes.take(w, b)
        if item is None:
            return
        loss, n, read = item
        g = fm.backward(loss)
        stats.grad_norm(g)
        views = fm.layer_views(g)
        t0, dur = loop.now, sim.compute.backward(w)
        ps = {"misaligned": False, "left": layers, "loss": float(loss.detach()), "n": n, "lr": sim.lr(), "decayed": sim.decay_fraction()}
        for j in order:
            loop.at(t0 + dur * frac[j], land, w, b, j, views[j], read, ps)

    # as the real pdasgd: --staleness on layer updates, with the rules' concurrency
    policy = StalenessPolicy(cfg.parsed.staleness, concurrency(qsize, B_, sim.workers))

    def land(w: int, b: int, j: int, grad, read, ps) -> None:
        s, own = int(lv[j] - read[0][j]), int(lv_own[w, j] - read[1][j])
        s_policy = damped_staleness(s, own)
        own_sum[j] += s_policy
        stats.layer_stale_sum[j] += s
        stats.layer_stale_count[j] += 1
        if s > stats.layer_stale_max[j]:
            stats.layer_stale_max[j] = s
        stats.staleness(w, s)
        ps["misaligned"] |= s > 0
        factor = policy.factor(s_policy, ps["decayed"])
        if factor is None:
            stats.dropped[w] += 1
        else:
            opts[b].update(j, grad, ps["lr"] * factor)
            lv[j] += 1
            lv_own[w, j] += 1
        ps["left"] -= 1
        if ps["left"] == 0:
            stats.backward_passes += 1
            stats.misaligned += ps["misaligned"]
            stats.step(w, ps["n"], ps["loss"])
            sim.maybe_snapshot()
            sim.done_time(loop.now)
            passes.finished(w)
            bstart(w, b)

    passes = PassQueue(sim, qsize, fstart, bstart)
    for w in range(sim.workers):
        for _ in range(F_):
            loop.at(0.0, passes.start, w)
        for t in range(B_):
            loop.at(0.0, bstart, w, w * B_ + t)
    loop.run(sim.on_event)
    c = stats.layer_stale_count
    done = stats.backward_passes
    sim.extra.update({
        "staleness_by_layer": [{"layer": fm.names[j], "mean": round(float(stats.layer_stale_sum[j]) / int(c[j]), 4) if c[j] else 0.0,
                                "own_mean": round(float(own_sum[j]) / int(c[j]), 4) if c[j] else 0.0,
                                "max": int(stats.layer_stale_max[j]), "count": int(c[j])} for j in range(layers)],
        "backward_passes": done, "misaligned_fraction": round(stats.misaligned / done, 4) if done else 0.0,
        "forward_threads": F_, "backward_threads": B_, "fb_ratio": cfg.fb_ratio, "queue_size": qsize,
        "queue_peak": int(stats.queue_peak.max()), "updates_mode": cfg.updates,
    })
    sim.sim_extra["compute_lanes"] = sim.workers * (F_ + B_)


