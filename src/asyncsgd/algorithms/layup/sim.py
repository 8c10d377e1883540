"""The simulated twin of LayUp (worker.py)."""

from __future__ import annotations


import numpy as np

from ...exchange.policy import StalenessPolicy, Topology, gossip_staleness
from ...exchange.wire import header_bytes
from ..dasgd.sim import shutdown
from ..pdasgd.rules import concurrency
from ..pdasgd.sim import PassQueue
from .rules import average_into, own_update_staleness


def run(sim) -> None:
    """LayUp (worker.py's semantics): N replicas, each a worker with F forward and B backward
    threads (compute lanes) as pdasgd's twin; every layer update is sent to peers as it lands.

    forward lane: claim the next batch of the plan, compute the REAL loss and gradient of that
      batch on the worker's replica as it is now, note the replica's per-layer clocks (what the
      forward read), and after the simulated forward time queue the pass (--queue-size, layup's
      default 0: the slots of pdasgd's PassQueue; a lane without a slot waits: idle time).
    backward lane: take the oldest pass; its layer updates land during the simulated backward time,
      last layer first, each after the backward has covered the layers after it (time shares by
      size, as pdasgd's twin). A landing applies the layer's update with the lane's own optimizer
      (rules.MOMENTUM_PER) x the real StalenessPolicy's factor of rules.own_update_staleness (none:
      the full step; its staleness, the layer's version now minus at the read, own and peers'
      updates since, is recorded), adds it to the layer's group, and a
      group of --send-every updates goes to the peers the real exchange.policy.Topology picks for
      that layer's round, as one message each (the real header, exchange/wire.header_bytes, + the
      layer's payload; delays from --delay, core.Network FIFO per pair).
    arrival: the peer's layer update is applied at once x the policy's factor of its vector-clock
      staleness (per layer: sum_o max(0, V_i[l][o] - R[o])), and enters V_i[l][sender] (dropped or
      not, as real). --gossip average: the group carries the layer's parameters as they are when it
      leaves, with their clock, and the receiver moves its layer halfway to them
      (rules.average_into, never damped); the updates enter V_i[l][sender] the same way.
    End: a worker whose lanes are done sends its unfinished groups, then DONE to every peer and
    waits for theirs (dasgd's shutdown, its idle time).

    One difference from the real engine, stated: the gradient is computed when the forward runs,
    on the weights it read (the real backward runs on the live weights, which peers and the other
    backward threads may have changed since: misalignment). The simulator keeps one autograd
    model for all replicas, so it cannot keep a pending graph per replica."""
    cfg, loop, stats, fm = sim.cfg, sim.loop, sim.stats, sim.fm
    N, state = sim.workers, sim.state  # [N, P]
    L = len(fm.params)
    averaging = cfg.gossip == "average"
    F_, B_ = cfg.forward_threads, cfg.backward_threads
    mom = sim.momentum_rows(N * B_)  # one set per backward lane (rules.MOMENTUM_PER)
    opts = [sim.optimizer(fm.layer_views(state[t // B_]), None if mom is None else fm.layer_views(mom[t]))
            for t in range(N * B_)]
    qsize = cfg.queue_size
    policy = StalenessPolicy(cfg.parsed.staleness, concurrency(qsize, B_, N))  # as worker.Gossiping
    topologies = [Topology(cfg.parsed.topology, N, w, cfg.seed) for w in range(N)]
    V = np.zeros((N, L, N), np.int64)  # V[i][l][o]: updates of origin o applied to layer l of replica i
    order = list(reversed(range(L)))  # backward order: last tensor first
    frac, covered = [1.0] * L, 0
    for j in order:
        covered += fm.sizes[j]
        frac[j] = covered / fm.numel
    header = header_bytes(N)
    layer_bytes = [header + s * 4 for s in fm.sizes]
    forwards_left, busy = [F_] * N, [0] * N
    ended = [False] * N
    last_step = [0.0] * N
    groups = [[None] * L for _ in range(N)]  # per worker and layer: [update sum, clock at first, updates]
    rounds = np.zeros((N, L), np.int64)
    sent = np.zeros((N, L), np.int64)  # messages
    sent_to = np.zeros((N, L, N), np.int64)  # sent_to[w][l][p]: updates of layer l worker w sent to p
    recv = {"sum": 0, "n": 0}

    def fstart(w: int) -> None:
        k = sim.claim()
        if k is None:
            forwards_left[w] -= 1
            passes.release(w)
            maybe_end(w)
            return
        fm.load(state[w])
        g, loss, n = fm.gradient(k)
        stats.grad_norm(g)
        loop.at(loop.now + sim.compute.forward(w), passes.forward_done, w, (fm.layer_views(g), loss, n, V[w].copy()))

    def bstart(w: int, b: int) -> None:
        item = passes.take(w, b)
        if item is None:
            return
        views, loss, n, seen = item
        busy[w] += 1
        t0, dur = loop.now, sim.compute.backward(w)
        ps = {"misaligned": False, "left": L, "loss": loss, "n": n, "lr": sim.lr(), "decayed": sim.decay_fraction()}
        for j in order:
            loop.at(t0 + dur * frac[j], land, w, b, j, views[j], seen, ps)

    def record(i: int, j: int, s: int) -> None:
        stats.layer_stale_sum[j] += s
        stats.layer_stale_count[j] += 1
        if s > stats.layer_stale_max[j]:
            stats.layer_stale_max[j] = s
        stats.staleness(i, s)

    def land(w: int, b: int, j: int, grad, seen, ps) -> None:
        s = int(V[w, j].sum() - seen[j].sum())
        record(w, j, s)
        ps["misaligned"] |= s > 0
        factor = policy.factor(own_update_staleness(s, s), ps["decayed"])
        if factor is None:
            stats.dropped[w] += 1
        else:
            a, z = fm.offsets[j], fm.offsets[j + 1]
            before = None if averaging else state[w, a:z].clone()
            opts[b].update(j, grad, ps["lr"] * factor)
            # exactly the update this landing made: what the peers add (average: the parameters leave, send())
            delta = None if averaging else state[w, a:z] - before
            V[w, j, w] += 1
            group = groups[w][j]
            if group is None:
                group = groups[w][j] = [delta, seen[j], 0, ps["decayed"]]
            elif delta is not None:
                group[0].add_(delta)
            group[2] += 1
            if group[2] >= cfg.send_every:
                send(w, j)
        ps["left"] -= 1
        if ps["left"] == 0:
            busy[w] -= 1
            stats.backward_passes += 1
            stats.misaligned += ps["misaligned"]
            stats.step(w, ps["n"], ps["loss"])
            sim.maybe_snapshot()
            sim.done_time(loop.now)
            passes.finished(w)
            bstart(w, b)

    def send(w: int, j: int) -> None:
        delta, clock, steps, decayed = groups[w][j]
        groups[w][j] = None
        if averaging:  # the layer's parameters as they are now, and their clock (worker._take_group)
            delta, clock = state[w, fm.offsets[j]:fm.offsets[j + 1]].clone(), V[w, j].copy()
        targets = topologies[w].targets(int(rounds[w, j]), lambda p: True)
        rounds[w, j] += 1
        sent_to[w, j, targets] += steps
        for i in targets:
            loop.at(sim.net.send(loop.now, w, i, layer_bytes[j]), arrive, i, w, j, delta, clock, steps, decayed)
        sent[w, j] += len(targets)
        stats.bytes_sent[w] += layer_bytes[j] * len(targets)
        stats.messages_sent[w] += len(targets)

    def arrive(i: int, sender: int, j: int, delta, clock, steps: int, decayed: float) -> None:
        s = gossip_staleness(V[i, j], clock, i, sent_to[i, j, sender])
        record(i, j, s)
        recv["sum"] += s
        recv["n"] += 1
        factor = 1.0 if averaging else policy.factor(s, decayed)  # the lr it was made at (decay_ppm)
        layer = state[i, fm.offsets[j]:fm.offsets[j + 1]]
        if factor is None:
            stats.dropped[i] += 1
        else:
            if averaging:
                average_into(layer, delta)
            else:
                layer.add_(delta, alpha=factor)
            stats.updates[i] += 1
            stats.total_updates += 1
        V[i, j, sender] += steps

    def maybe_end(w: int) -> None:
        """Lanes done (no forward left, nothing queued, no backward running): send the unfinished groups."""
        if ended[w] or forwards_left[w] or passes.queues[w] or passes.blocked[w] or busy[w]:
            return
        ended[w] = True
        for j in range(L):
            if groups[w][j] is not None:
                send(w, j)
        last_step[w] = loop.now
        sim.done_time(loop.now)

    passes = PassQueue(sim, qsize, fstart, bstart, when_idle=maybe_end)
    for w in range(N):
        for _ in range(F_):
            loop.at(0.0, passes.start, w)
        for t in range(B_):
            loop.at(0.0, bstart, w, w * B_ + t)
    loop.run(sim.on_event)  # every arrival is an event: all applied by now
    for w in range(N):  # lanes still waiting for work at the end
        while passes.idle[w]:
            stats.idle_s[w] += last_step[w] - passes.idle[w].popleft()[1]
    shutdown(sim, last_step, header)
    done = stats.backward_passes
    c = stats.layer_stale_count
    sim.extra.update({
        "staleness_by_layer": [{"layer": fm.names[j], "mean": round(float(stats.layer_stale_sum[j]) / int(c[j]), 4)
                                if c[j] else 0.0, "max": int(stats.layer_stale_max[j]), "count": int(c[j])}
                               for j in range(L)],
        "backward_passes": done, "misaligned_fraction": round(stats.misaligned / done, 4) if done else 0.0,
        "forward_threads": F_, "backward_threads": B_, "queue_size": qsize, "queue_peak": int(stats.queue_peak.max()),
        "received_staleness_mean": round(recv["sum"] / max(1, recv["n"]), 4),
    })
    sim.extra["exchange"] = {
        "transport": "simulated point-to-point (core.Network), header + one layer's payload",
        "rounds": int(rounds.sum()), "data_messages": int(sent.sum()), "control_messages": N * (N - 1),
        "coalesced": 0, "header_bytes": header,
        "by_layer": [{"layer": fm.names[j], "payload_bytes": fm.sizes[j] * 4, "rounds": int(rounds[:, j].sum()),
                      "data_messages": int(sent[:, j].sum()), "coalesced": 0} for j in range(L)],
    }
    sim.sim_extra["compute_lanes"] = N * (F_ + B_)
