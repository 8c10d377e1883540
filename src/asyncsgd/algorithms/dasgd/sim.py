"""The simulated twin of DASGD (worker.py)."""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from ...exchange.policy import StalenessPolicy, Topology
from ...exchange.wire import header_bytes

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


def shutdown(sim, last_step: list, header: int) -> None:
    """The end of a run of the exchange's protocol (dasgd, layup): DONE (header only) from every
    worker to every peer, FIFO behind its updates; a worker finishes when the last DONE reaches
    it (the wait is its idle time)."""
    N, stats = sim.workers, sim.stats
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
        stats.idle_s[i] += finish_at[i] - last_step[i]
    sim.done_time(max(finish_at))


# ---------------------------------------------------------------------------------------------
def run(sim) -> None:
    """DASGD (worker.py's semantics): N replicas, no server, no averaging, no barrier.

    A free worker claims the next batch of the plan (as real local runs). Each step it first
    applies the peers' updates that have ARRIVED by then (in arrival order), computes the REAL
    gradient of its batch on its replica, and when the simulated step ends applies it at once
    with its own optimizer (lr of the batch's place in the plan, its own momentum) and sends the
    update that step made (summed over --send-every steps) to its peers (--topology all: every
    other worker; ring: one peer, rotating rank+1+(r mod N-1); random:M: M peers drawn per round:
    the real exchange.policy.Topology). Peers' updates are added x the real StalenessPolicy's
    factor (none 1; scale 1/(1+s); drop:MAX skip when s > MAX, counted in dropped_updates;
    adaptive min(1, (N-1)/s)). Messages: the real header (exchange/wire.header_bytes: fixed fields + the N-entry vector
    clock) + payload, delays from --delay (core.Network: FIFO per pair). At the end every worker sends DONE
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
    policy = StalenessPolicy(cfg.parsed.staleness, N)
    topologies = [Topology(cfg.parsed.topology, N, w, cfg.seed) for w in range(N)]
    V = np.zeros((N, N), np.int32)  # vector clocks
    pending: list[list] = [[] for _ in range(N)]  # per replica: heap of (arrival, seq, message id)
    messages: dict[int, list] = {}  # id -> [sender, update sum, sender clock, steps, recipients left, decayed]
    acc: list = [None] * N  # per worker: [update sum, clock at its first gradient, steps, decayed then]
    rounds = [0] * N
    seq = [0]
    header = header_bytes(N)
    msg_bytes = header + sim.nbytes
    bins = stats.hist.shape[1]
    last_step = [0.0] * N
    recv = {"sum": 0, "n": 0}

    def peers(w: int) -> list[int]:
        return topologies[w].targets(rounds[w], lambda p: True)

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
        if policy.kind == "drop":  # one message at a time; a dropped gradient enters the clock too, as real
            keep = []
            for j, msg in enumerate(ms):
                s[j] = np.maximum(V[i] - msg[2], 0).sum()
                if policy.factor(int(s[j])) is not None:
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
            # damped by the lr each was made at (the real header's decay_ppm), not the lr now
            f = policy.factors(s[keep], np.array([ms[j][5] for j in keep]))
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
        progress = sim.plan.samples_before(k)
        opts[w].step([g], sim.lr(progress))
        delta = state[w] - before  # exactly the update this step made: what the peers add
        if acc[w] is None:
            acc[w] = [delta, V[w].copy(), 1, sim.decay_fraction(progress)]
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
        grad, clock, steps, decayed = acc[w]
        acc[w] = None
        targets = peers(w)
        rounds[w] += 1
        if not targets:
            return
        mid = seq[0]
        messages[mid] = [w, grad, clock, steps, len(targets), decayed]
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
    for i in range(N):  # the gradients still arriving while it waits for the DONEs
        flush(i, math.inf)
    shutdown(sim, last_step, header)
    sim.extra["exchange"] = {
        "transport": "simulated point-to-point (core.Network), header + payload",
        "rounds": int(sum(rounds)), "data_messages": int(seq[0]), "control_messages": N * (N - 1),
        "coalesced": 0, "header_bytes": header, "payload_bytes": sim.nbytes,
    }
    sim.extra["received_staleness_mean"] = round(recv["sum"] / max(1, recv["n"]), 4)
