"""The simulated twin of Hogwild! (worker.py): the same claims, the same per-worker momentum."""

from __future__ import annotations

from ...exchange.policy import StalenessPolicy


def run(sim) -> None:
    """N workers, one shared model. A worker reads the model when its step starts (the gradient is
    computed there, at those parameters) and writes its update when its simulated step ends.
    Staleness = updates the others wrote in between; momentum buffers are per worker."""
    W = sim.state[0]
    mom = sim.momentum_rows(sim.workers)
    opts = [sim.optimizer([W], None if mom is None else [mom[w]]) for w in range(sim.workers)]
    policy = StalenessPolicy(sim.cfg.parsed.staleness, sim.workers)
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
        s = version[0] - read
        stats.staleness(w, s)
        factor = policy.factor(s, sim.decay_fraction())
        if factor is None:  # as worker.py: dropped, and the version does not move
            stats.dropped[w] += 1
        else:
            opts[w].step([g], sim.lr() * factor)
            version[0] += 1
        stats.step(w, n, loss, updates=int(factor is not None))
        sim.maybe_snapshot()
        start(w)

    for w in range(sim.workers):
        loop.at(0.0, start, w)
    loop.run(sim.on_event)


