"""The six algorithms as discrete-event programs over virtual workers (docs/simulator.md).

Each function below plays one algorithm on a Simulation: it schedules events on sim.loop and, at
the simulated moment a worker reads parameters, computes the REAL gradient of the REAL batch at
exactly those parameters (so staleness, drops and convergence are the algorithm's own); the
simulated clock then decides when that gradient lands. Real gradient computations = batches of
the plan (--epochs x training set / --batch-size), as in real runs.

Batch assignment, as the real schedules: sync takes the plan's fixed order (step s = batches
s*N .. s*N+N-1), hogwild / dasgd / lpap / pdasgd claim the next batch of the shared plan when a
worker (thread) becomes free, so fast workers process more batches.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque

import numpy as np
import torch

from ..config import parse_staleness, parse_topology
from ..optim import LayerSGD, learning_rate
from ..schedules.lpap import partition  # the LPP slices of the real runtime


class Simulation:
    """What every algorithm shares: clock, compute/network models, plan, stats, snapshots."""

    def __init__(self, cfg, fm, state: torch.Tensor, workers: int, loop, compute, network, stats, total: int,
                 snapshot_every: int, average_replicas: bool):
        self.cfg, self.fm, self.state, self.workers = cfg, fm, state, workers
        self.loop, self.compute, self.net, self.stats = loop, compute, network, stats
        self.total, self.plan = total, fm.plan
        self.next_batch = 0
        self.snapshot_every = snapshot_every
        self._next_snapshot = snapshot_every
        self.average_replicas = average_replicas
        self.snapshots: list[dict] = []
        self.end_time = 0.0
        self.extra: dict = {}  # algorithm fields for the summary's top level (as the real summary_extra hooks)
        self.sim_extra: dict = {}  # algorithm fields for the summary's "sim" block
        self.numel = fm.numel
        self.nbytes = fm.numel * 4  # float32 gradients / parameters on the wire
        self.on_event = lambda: None  # progress callback (host side only; never steers the simulation)

    # -- shared helpers ---------------------------------------------------------------------
    def claim(self) -> int | None:
        k = self.next_batch
        if k >= self.plan.num_batches:
            return None
        self.next_batch = k + 1
        return k

    def lr(self, samples: int | None = None) -> float:
        return learning_rate(self.cfg, self.stats.global_samples if samples is None else samples, self.total)

    def optimizer(self, params: list[torch.Tensor], buffers: list[torch.Tensor] | None) -> LayerSGD:
        """optim.LayerSGD over views of the simulation's flat tensors (same maths as real runs)."""
        return LayerSGD(params, self.cfg.momentum, self.cfg.nesterov, self.cfg.weight_decay, buffers)

    def momentum_rows(self, rows: int) -> torch.Tensor | None:
        return torch.zeros(rows, self.numel) if self.cfg.momentum > 0 else None

    def batch_samples(self, k: int) -> int:
        return self.plan.samples_before(k + 1) - self.plan.samples_before(k)

    def done_time(self, t: float) -> None:
        if t > self.end_time:
            self.end_time = t

    # -- snapshots --------------------------------------------------------------------------
    def maybe_snapshot(self) -> None:
        done = self.stats.global_samples
        if done >= self._next_snapshot:
            self.snapshot(self.loop.now, done)
            while self._next_snapshot <= done:
                self._next_snapshot += self.snapshot_every

    def snapshot(self, t: float, done: int) -> None:
        """Parameters at simulated time t (replica 0 or the shared model; plus the replicas' average)."""
        row = {"time": t, "samples": done, "params": self.state[0].clone()}
        if self.average_replicas and self.state.shape[0] > 1:
            avg = self.state.mean(0)
            row["avg"] = avg
            row["consensus_distance"] = float((self.state - avg).norm(dim=1).mean())
        self.snapshots.append(row)


# ---------------------------------------------------------------------------------------------
def sequential(sim: Simulation) -> None:
    """One worker: forward, backward, update, repeat (hogwild with one worker: staleness 0)."""
    hogwild(sim)


def hogwild(sim: Simulation) -> None:
    """N workers, one shared model. A worker reads the model when its step starts (the gradient is
    computed there, at those parameters) and writes its update when its simulated step ends.
    Staleness = updates the others wrote in between; momentum buffers are per worker."""
    W = sim.state[0]
    mom = sim.momentum_rows(sim.workers)
    opts = [sim.optimizer([W], None if mom is None else [mom[w]]) for w in range(sim.workers)]
    version = [0]
    loop, stats = sim.loop, sim.stats

    def start(w: int) -> None:
        k = sim.claim()
        if k is None:
            sim.done_time(loop.now)
            return
        g, loss, n = sim.fm.gradient(k)
        stats.grad_norm(g)
        loop.at(loop.now + sim.compute.step(w), finish, w, g, loss, n, version[0])

    def finish(w: int, g, loss: float, n: int, read: int) -> None:
        stats.staleness(w, version[0] - read)
        opts[w].step([g], sim.lr())
        version[0] += 1
        stats.step(w, n, loss)
        sim.maybe_snapshot()
        start(w)

    for w in range(sim.workers):
        loop.at(0.0, start, w)
    loop.run(sim.on_event)


# ---------------------------------------------------------------------------------------------
def sync(sim: Simulation) -> None:
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
    lr_factor = n if getattr(sim.cfg, "lr_scaling", "none") == "linear" else 1  # as schedules/sync.py
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
        opt.step([g], lr_factor * sim.lr(sim.plan.samples_before(step * n)))
        stats.bytes_sent += int(packet * 2 * (n - 1) / n)
        stats.messages_sent += 2 * (n - 1)
        for w, k in enumerate(ks):
            stats.staleness(w, 0)
            stats.step(w, sim.batch_samples(k), loss, updates=int(w == 0))
        for w in range(len(ks), n):
            stats.staleness(w, 0)
        sim.maybe_snapshot()
        sim.on_event()
    sim.done_time(t)


# ---------------------------------------------------------------------------------------------
def lpap(sim: Simulation, groups: int, per_group: int) -> None:
    """LPAP-SGD (schedules/lpap.py's semantics): `groups` devices, each running Hogwild! with
    `per_group` workers (threads) on its own model, claiming batches of the shared plan; momentum
    per worker; staleness = updates of the group between a worker's read and its write.

    Averaging (LAP), in the background, rounds in order per group: a group starts round r when it
    has made --average-every updates since its last round started, or when a peer's round-r
    parameters reach it. Starting = snapshot its parameters and send them to every peer (point to
    point, core.Network); the round completes when every peer's round-r parameters (or its FINAL)
    have arrived, and then W_g += mean - snapshot (local progress made meanwhile is kept). When a
    group's workers have finished, it starts no new round, finishes the one in progress, sends
    FINAL (its parameters) to every peer, and when all FINALs are in takes their average: every
    group ends with the same model; that last wait is its idle time.
    --partitioned (LPP): after a warm-up (max(1 epoch, --warmup-epochs), at most half the run)
    worker t of a group updates only its contiguous slice of the parameter tensors on even steps
    (their backward time scaled by the share of parameters from the slice's first tensor to the
    end: backprop stops there), everything on odd steps.
    --straggler worker=W slows group W (all its workers), as the real runtime slows process W."""
    cfg, loop, stats, fm = sim.cfg, sim.loop, sim.stats, sim.fm
    state = sim.state  # [groups, P]
    mom = sim.momentum_rows(sim.workers)
    opts = [sim.optimizer(fm.layer_views(state[w // per_group]), None if mom is None else fm.layer_views(mom[w]))
            for w in range(sim.workers)]
    parts = partition(fm.sizes, per_group) if cfg.partitioned else [None] * per_group
    warm = min(sim.total / 2, sim.plan.n * max(1.0, cfg.warmup_epochs))
    tail = [sum(fm.sizes[i:]) / fm.numel for i in range(len(fm.sizes))]  # backward share from tensor i on
    G = groups
    version, steps_since, wsteps = [0] * G, [0] * G, [0] * sim.workers
    rnd, rounds_done, active = [0] * G, [0] * G, [False] * G
    training = [per_group] * G  # workers of each group still training
    posted: dict[tuple[int, int], torch.Tensor] = {}
    got: list[dict] = [{} for _ in range(G)]  # group -> {(peer, round): parameters}
    finals: list[dict] = [{} for _ in range(G)]  # group -> {peer: final parameters}
    final_sent = [None] * G  # own final parameters once sent
    done_at = [0.0] * G
    msg_bytes = (5 + G) * 8 + sim.nbytes  # the exchange's header (vector of G) + float32 parameters
    counts = {"data": 0}

    def lead(g_id: int) -> int:
        return g_id * per_group

    def start(w: int) -> None:
        k = sim.claim()
        g_id = w // per_group
        if k is None:
            training[g_id] -= 1
            if training[g_id] == 0:
                done_at[g_id] = loop.now
                if not active[g_id]:
                    send_final(g_id)
            return
        part = parts[w % per_group]
        partial = part is not None and wsteps[w] % 2 == 0 and stats.global_samples >= warm
        sim.fm.load(state[g_id])
        grad, loss, n = sim.fm.gradient(k)
        stats.grad_norm(grad)
        if partial:
            seconds = (sim.compute.forward_s + sim.compute.backward_s * tail[part[0]]) * sim.compute.factor(w)
        else:
            seconds = sim.compute.step(w)
        loop.at(loop.now + seconds, finish, w, grad, loss, n, version[g_id], part if partial else None)

    def finish(w: int, grad, loss: float, n: int, read: int, part) -> None:
        g_id = w // per_group
        stats.staleness(w, version[g_id] - read)
        lr = sim.lr()
        views = sim.fm.layer_views(grad)
        for j in (range(*part) if part else range(len(views))):
            opts[w].update(j, views[j], lr)
        version[g_id] += 1
        steps_since[g_id] += 1
        wsteps[w] += 1
        stats.step(w, n, loss)
        maybe_round(g_id)
        sim.maybe_snapshot()
        start(w)

    def maybe_round(g_id: int) -> None:
        if G == 1 or active[g_id] or training[g_id] == 0:
            return
        r = rnd[g_id]
        if steps_since[g_id] >= cfg.average_every or any((p, r) in got[g_id] for p in range(G)):
            begin(g_id)

    def begin(g_id: int) -> None:
        r = rnd[g_id]
        active[g_id] = True
        steps_since[g_id] = 0
        snap = state[g_id].clone()
        posted[(g_id, r)] = snap
        post(g_id, lambda p: loop.at(sim.net.send(loop.now, lead(g_id), lead(p), msg_bytes), arrive, p, g_id, r, snap))
        complete(g_id)

    def post(g_id: int, send_to) -> None:
        for p in range(G):
            if p != g_id:
                send_to(p)
        stats.bytes_sent[lead(g_id)] += msg_bytes * (G - 1)
        stats.messages_sent[lead(g_id)] += G - 1
        counts["data"] += G - 1

    def arrive(g_id: int, src: int, r: int, params) -> None:
        got[g_id][(src, r)] = params
        if active[g_id]:
            complete(g_id)
        else:
            maybe_round(g_id)

    def complete(g_id: int) -> None:
        r = rnd[g_id]
        peers = [p for p in range(G) if p != g_id]
        if not all((p, r) in got[g_id] or p in finals[g_id] for p in peers):
            return
        snap = posted.pop((g_id, r))
        members = [snap] + [got[g_id].pop((p, r)) if (p, r) in got[g_id] else finals[g_id][p] for p in peers]
        state[g_id].add_(torch.stack(members).mean(0).sub_(snap))
        active[g_id] = False
        rnd[g_id] += 1
        rounds_done[g_id] += 1
        sim.done_time(loop.now)
        if training[g_id] == 0:
            send_final(g_id)
        else:
            maybe_round(g_id)

    def send_final(g_id: int) -> None:
        if G == 1:
            return
        final = final_sent[g_id] = state[g_id].clone()
        post(g_id, lambda p: loop.at(sim.net.send(loop.now, lead(g_id), lead(p), msg_bytes), final_arrive, p, g_id, final))
        final_average(g_id)

    def final_arrive(g_id: int, src: int, params) -> None:
        finals[g_id][src] = params
        if active[g_id]:
            complete(g_id)
        final_average(g_id)

    def final_average(g_id: int) -> None:
        if final_sent[g_id] is None or len(finals[g_id]) < G - 1:
            return
        members = [final_sent[g_id] if p == g_id else finals[g_id][p] for p in range(G)]  # one order for all
        state[g_id].copy_(torch.stack(members).mean(0))
        for w in range(lead(g_id), lead(g_id) + per_group):
            stats.idle_s[w] += loop.now - done_at[g_id]
        sim.done_time(loop.now)

    for w in range(sim.workers):
        loop.at(0.0, start, w)
    loop.run(sim.on_event)
    sim.extra["exchange"] = {"transport": "simulated point-to-point (core.Network), header + payload",
                             "rounds": int(sum(rounds_done)), "data_messages": counts["data"], "control_messages": 0,
                             "coalesced": 0, "header_bytes": (5 + G) * 8, "payload_bytes": sim.nbytes}
    sim.extra["lpap"] = {"groups": G, "workers_per_group": per_group, "average_every": cfg.average_every,
                         "partitioned": cfg.partitioned, "averaging_rounds_per_group": rounds_done}


# ---------------------------------------------------------------------------------------------
def pdasgd(sim: Simulation) -> None:
    """PD-ASGD on one shared model (schedules/decoupled.py's semantics): each of N workers has F
    forward and B backward threads (--forward-threads, --backward-threads; --fb-ratio auto: B =
    round(F * backward_s / forward_s), at most 8), each thread a compute lane of its own.

    forward thread: claim a batch, run the REAL forward on the shared parameters as they are (the
      autograd graph is kept), after the simulated forward time put it on the worker's queue
      (--queue-size, default 2*B; a full queue blocks the thread: idle time).
    backward thread: take the oldest pending forward, run the REAL backward through the kept graph
      on the parameters as they are NOW (weights may be newer than the forward's: misalignment,
      exactly as a real shared-memory backward), with the lr of that moment; the layer updates
      then land during the simulated backward time: --updates layer: tensor j lands when the
      backward has covered the tensors after it (time shares proportional to their sizes, last
      layer first); block: all at the end. Staleness of a layer update = updates of that tensor by
      others between the forward's read and this write (one histogram entry per layer update, as
      real runs); a pass is misaligned when any of its layer updates has staleness > 0.
    Momentum buffers: one set per worker, shared by its backward threads (lock-free, as real)."""
    cfg, loop, stats, fm = sim.cfg, sim.loop, sim.stats, sim.fm
    W = sim.state[0]
    layers = len(fm.params)
    mom = sim.momentum_rows(sim.workers)
    opts = [sim.optimizer(fm.layer_views(W), None if mom is None else fm.layer_views(mom[w])) for w in range(sim.workers)]
    F_, B_ = cfg.forward_threads, cfg.backward_threads
    if cfg.fb_ratio == "auto":
        B_ = max(1, min(8, round(F_ * sim.compute.backward_s / max(sim.compute.forward_s, 1e-9))))
    qsize = cfg.queue_size or 2 * B_
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
    idle_b = [deque() for _ in range(sim.workers)]  # backward threads waiting for work

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
            stats.idle_s[w] += loop.now - idle_b[w].popleft()
            bstart(w)

    def bstart(w: int) -> None:
        if not queues[w]:
            idle_b[w].append(loop.now)
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
            loop.at(t0 + dur * frac[j], land, w, j, views[j], read, ps)

    from ..exchange.policy import StalenessPolicy  # as the real pdasgd: --staleness on layer updates
    policy = StalenessPolicy(cfg.staleness, B_ * sim.workers + F_ + 1)

    def land(w: int, j: int, grad, read, ps) -> None:
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
            opts[w].update(j, grad, ps["lr"] * factor)
            lv[j] += 1
        ps["left"] -= 1
        if ps["left"] == 0:
            stats.backward_passes += 1
            stats.misaligned += ps["misaligned"]
            stats.step(w, ps["n"], ps["loss"])
            sim.maybe_snapshot()
            sim.done_time(loop.now)
            bstart(w)

    for w in range(sim.workers):
        for _ in range(F_):
            loop.at(0.0, fstart, w)
        for _ in range(B_):
            loop.at(0.0, bstart, w)
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


FLUSH_CHUNK = 256  # messages applied per vectorised block (bounds the [chunk, N] clock temporaries)


def _chunk_staleness(clock: np.ndarray, sender_clocks: np.ndarray, senders: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Staleness of k messages applied in order to a replica whose clock is `clock` (updated in place):
    s_l = sum_o max(0, C_l[o] - R_l[o]), C_l = clock + the steps of messages 0..l-1 of this chunk.
    Computed as sum_o max(0, clock[o] - R_l[o]) over all N origins (one [k, N] pass) plus a
    correction on the chunk's own senders' columns only (a [k, senders] cumulative sum)."""
    k = len(senders)
    d = clock[None, :] - sender_clocks  # [k, N]
    cols, inv = np.unique(senders, return_inverse=True)
    dc = np.take(d, cols, axis=1).T.astype(np.int64)  # [senders, k]
    np.maximum(d, 0, out=d)
    base = d.sum(1)
    inc = np.zeros((len(cols), k), np.int64)  # laid out so the cumulative sum runs along rows (fast)
    inc[inv, np.arange(k)] = steps
    earlier = np.cumsum(inc, 1) - inc
    corr = (np.maximum(dc + earlier, 0) - np.maximum(dc, 0)).sum(0)
    clock[cols] += inc.sum(1).astype(clock.dtype)
    return base + corr


# ---------------------------------------------------------------------------------------------
def dasgd(sim: Simulation) -> None:
    """DASGD (schedules/dasgd.py's semantics): N replicas, no server, no averaging, no barrier.

    A free worker claims the next batch of the plan (as real local runs). Each step it first
    applies the peers' updates that have ARRIVED by then (in arrival order), computes the REAL
    gradient of its batch on its replica, and when the simulated step ends applies it at once
    with its own optimizer (lr of the batch's place in the plan, its own momentum) and sends the
    update that step made (summed over --send-every steps) to its peers (--topology all: every
    other worker; ring: one peer, rotating rank+1+(r mod N-1); random:M: M peers drawn per round).
    Peers' updates are added x the --staleness factor (none 1; scale 1/(1+s); drop:MAX skip when
    s > MAX, counted in dropped_updates; adaptive min(1, (N-1)/s)). Messages: header (6+N int64,
    the vector clock) + payload, delays from --delay (core.Network: FIFO per pair). At the end every worker sends DONE
    to every peer and applies what still arrives until all DONEs are in (its idle time).

    Staleness (vector clocks, exchange/policy.py's definition): V_i[o] = gradients of origin o that
    replica i applied; a message carries the sender's clock R when it computed its (first)
    gradient; at replica i it has staleness sum_o max(0, V_i[o] - R[o]). Own updates: 0 (nothing
    touches a replica during its own step). Histogram: one entry per own step (0) and per applied
    or dropped peer gradient; `updates` counts own steps plus applied peer gradients, as real.
    Arrivals are applied lazily (when the replica starts a step, and at the end), which is when
    the real training thread drains its inbox: the same order, the same result."""
    cfg, loop, stats, fm = sim.cfg, sim.loop, sim.stats, sim.fm
    N = sim.workers
    state = sim.state  # [N, P]
    mom = sim.momentum_rows(N)
    opts = [sim.optimizer([state[w]], None if mom is None else [mom[w]]) for w in range(N)]
    policy, max_stale = parse_staleness(cfg.staleness)
    topo, fanout = parse_topology(cfg.topology)
    adaptive_c = max(1, N - 1)
    V = np.zeros((N, N), np.int32)  # vector clocks
    pending: list[list] = [[] for _ in range(N)]  # per replica: heap of (arrival, seq, message id)
    messages: dict[int, list] = {}  # id -> [sender, update sum, sender clock, steps, recipients left]
    acc: list = [None] * N  # per worker: [update sum, clock at its first gradient, steps]
    rounds = [0] * N
    seq = [0]
    header = (6 + N) * 8
    msg_bytes = header + sim.nbytes
    topo_rngs = [None] * N
    bins = stats.hist.shape[1]
    last_step = [0.0] * N
    recv = {"sum": 0, "n": 0}

    def peers(w: int) -> list[int]:
        if N == 1:
            return []
        if topo == "all":
            return [i for i in range(N) if i != w]
        if topo == "ring":
            return [(w + 1 + rounds[w] % (N - 1)) % N]
        if topo_rngs[w] is None:
            topo_rngs[w] = random.Random(cfg.seed * 104_729 + w)
        chosen = topo_rngs[w].sample(range(N - 1), min(fanout, N - 1))
        return sorted(i if i < w else i + 1 for i in chosen)

    def flush(i: int, t: float) -> None:
        """Apply, in arrival order, the messages that reached replica i by time t."""
        q = pending[i]
        ids = []
        while q and q[0][0] <= t:
            ids.append(heapq.heappop(q)[2])
        for c in range(0, len(ids), FLUSH_CHUNK):
            apply(i, ids[c:c + FLUSH_CHUNK])

    def apply(i: int, ids: list[int]) -> None:
        ms = [messages[mid] for mid in ids]
        k = len(ms)
        s = np.empty(k, np.int64)
        if policy == "drop":  # one message at a time; a dropped gradient enters the clock too, as real
            keep = []
            for j, msg in enumerate(ms):
                s[j] = np.maximum(V[i] - msg[2], 0).sum()
                if s[j] <= max_stale:
                    keep.append(j)
                V[i, msg[0]] += msg[3]
            keep = np.asarray(keep, np.int64)
        else:
            senders = np.fromiter((m_[0] for m_ in ms), np.int64, k)
            steps = np.fromiter((m_[3] for m_ in ms), np.int64, k)
            s[:] = _chunk_staleness(V[i], np.stack([m_[2] for m_ in ms]), senders, steps)
            keep = np.arange(k)
        np.add.at(stats.hist[i], np.minimum(s, bins - 1), 1)
        stats.stale_max[i] = max(int(stats.stale_max[i]), int(s.max()))
        recv["sum"] += int(s.sum())
        recv["n"] += k
        stats.dropped[i] += k - len(keep)
        stats.updates[i] += len(keep)
        stats.total_updates += len(keep)
        if len(keep):
            f = np.ones(len(keep))
            if policy == "scale":
                f = 1.0 / (1.0 + s[keep])
            elif policy == "adaptive":
                f = np.minimum(1.0, adaptive_c / np.maximum(s[keep], 1))
            deltas = torch.stack([ms[j][1] for j in keep])
            state[i].add_(torch.from_numpy(f).to(deltas.dtype) @ deltas)  # the senders' updates, as real
        for mid, msg in zip(ids, ms):
            msg[4] -= 1
            if msg[4] == 0:
                del messages[mid]

    def start(w: int) -> None:
        k = sim.claim()
        if k is None:
            end(w)
            return
        flush(w, loop.now)
        fm.load(state[w])
        g, loss, n = fm.gradient(k)
        stats.grad_norm(g)
        loop.at(loop.now + sim.compute.step(w), finish, w, k, g, loss, n)

    def finish(w: int, k: int, g, loss: float, n: int) -> None:
        before = state[w].clone()
        opts[w].step([g], sim.lr(sim.plan.samples_before(k)))
        delta = state[w] - before  # exactly the update this step made: what the peers add
        if acc[w] is None:
            acc[w] = [delta, V[w].copy(), 1]
        else:
            acc[w][0].add_(delta)
            acc[w][2] += 1
        V[w, w] += 1
        stats.staleness(w, 0)
        stats.step(w, n, loss)
        if acc[w][2] >= cfg.send_every:
            send(w)
        sim.maybe_snapshot()
        start(w)

    def send(w: int) -> None:
        grad, clock, steps = acc[w]
        acc[w] = None
        targets = peers(w)
        rounds[w] += 1
        if not targets:
            return
        mid = seq[0]
        messages[mid] = [w, grad, clock, steps, len(targets)]
        for i in targets:
            arrival = sim.net.send(loop.now, w, i, msg_bytes)
            heapq.heappush(pending[i], (arrival, seq[0], mid))
            seq[0] += 1
        stats.bytes_sent[w] += msg_bytes * len(targets)
        stats.messages_sent[w] += len(targets)

    def end(w: int) -> None:
        if acc[w] is not None:
            send(w)
        last_step[w] = loop.now
        sim.done_time(loop.now)

    for w in range(N):
        loop.at(0.0, start, w)
    loop.run(sim.on_event)
    # Shutdown: DONE (header only) from every worker to every peer, FIFO behind its gradients;
    # a worker finishes when the last DONE reaches it, applying the gradients still arriving.
    finish_at = list(last_step)
    if sim.net.delay:
        for p in range(N):
            for i in range(N):
                if i != p:
                    t = sim.net.send(last_step[p], p, i, header)
                    if t > finish_at[i]:
                        finish_at[i] = t
    elif N > 1:  # no delay: a DONE lands when it is sent
        top = sorted(last_step)[-2:]
        finish_at = [max(t, top[-1] if t < top[-1] else top[0]) for t in last_step]
    stats.bytes_sent += header * (N - 1)
    stats.messages_sent += N - 1
    for i in range(N):
        flush(i, math.inf)
        stats.idle_s[i] += finish_at[i] - last_step[i]
    sim.done_time(max(finish_at))
    sim.extra["exchange"] = {
        "transport": "simulated point-to-point (core.Network), header + payload",
        "rounds": int(sum(rounds)), "data_messages": int(seq[0]), "control_messages": N * (N - 1),
        "coalesced": 0, "header_bytes": header, "payload_bytes": sim.nbytes,
    }
    sim.extra["received_staleness_mean"] = round(recv["sum"] / max(1, recv["n"]), 4)
