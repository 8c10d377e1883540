"""The simulated twin of LPAP-SGD (worker.py): groups of Hogwild! workers, averaged in the background."""

from __future__ import annotations

import torch

from ...exchange.policy import StalenessPolicy
from ...exchange.wire import header_bytes
from .worker import partition

def run(sim) -> None:
    """LPAP-SGD (worker.py's semantics): `groups` devices, each running Hogwild! with
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
    groups, per_group = sim.groups, sim.per_group
    state = sim.state  # [groups, P]
    mom = sim.momentum_rows(sim.workers)
    opts = [sim.optimizer(fm.layer_views(state[w // per_group]), None if mom is None else fm.layer_views(mom[w]))
            for w in range(sim.workers)]
    parts = partition(fm.sizes, per_group) if cfg.partitioned else [None] * per_group
    policy = StalenessPolicy(cfg.parsed.staleness, per_group)  # as worker.py: the group's threads
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
    header = header_bytes(G)  # the real exchange's header (with a clock of G entries)
    msg_bytes = header + sim.nbytes  # + float32 parameters
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
        s = version[g_id] - read
        stats.staleness(w, s)
        factor = policy.factor(s, sim.decay_fraction())
        if factor is None:  # as worker.py: dropped, and the version does not move
            stats.dropped[w] += 1
        else:
            lr = sim.lr() * factor
            views = sim.fm.layer_views(grad)
            for j in (range(*part) if part else range(len(views))):
                opts[w].update(j, views[j], lr)
            version[g_id] += 1
            steps_since[g_id] += 1
        wsteps[w] += 1
        stats.step(w, n, loss, updates=int(factor is not None))
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
                             "coalesced": 0, "header_bytes": header, "payload_bytes": sim.nbytes}
    sim.extra["lpap"] = {"groups": G, "workers_per_group": per_group, "average_every": cfg.average_every,
                         "partitioned": cfg.partitioned, "averaging_rounds_per_group": rounds_done}


