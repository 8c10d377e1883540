"""The Simulation: what every simulated algorithm shares (docs/simulator.md).

Each algorithm's twin (algorithms/<name>/sim.py, run(sim)) plays the algorithm on a Simulation:
it schedules events on sim.loop and, at the simulated moment a worker reads parameters, computes
the REAL gradient of the REAL batch at exactly those parameters (so staleness, drops and
convergence are the algorithm's own); the simulated clock then decides when that gradient lands.
Real gradient computations = batches of the plan (--epochs x training set / --batch-size), as in
real runs.

Batch assignment, as the real schedules: sync takes the plan's fixed order (step s = batches
s*N .. s*N+N-1), hogwild / dasgd / lpap / pdasgd claim the next batch of the shared plan when a
worker (thread) becomes free, so fast workers process more batches.
"""

from __future__ import annotations

import torch

from ..optim import LayerSGD, decay_fraction, learning_rate


class Simulation:
    """What every algorithm shares: clock, compute/network models, plan, stats, snapshots."""

    def __init__(self, cfg, fm, state: torch.Tensor, workers: int, loop, compute, network, stats, total: int,
                 snapshot_every: int, average_replicas: bool, groups: int = 1, per_group: int | None = None):
        self.cfg, self.fm, self.state, self.workers = cfg, fm, state, workers
        self.groups, self.per_group = groups, workers if per_group is None else per_group
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

    def decay_fraction(self, samples: int | None = None) -> float:
        return decay_fraction(self.cfg, self.stats.global_samples if samples is None else samples, self.total)

    def optimizer(self, params: list[torch.Tensor], buffers: list[torch.Tensor] | None) -> LayerSGD:
        """optim.LayerSGD over views of the simulation's flat tensors (same maths as real runs)."""
        return LayerSGD(params, self.cfg.momentum, self.cfg.nesterov, self.cfg.weight_decay, buffers,
                        self.cfg.clip_grad_norm)

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
