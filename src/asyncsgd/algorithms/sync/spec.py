"""sync's spec: synchronous data parallelism, gradients all-reduced every step."""

from __future__ import annotations

from ...config import SHARED_DEFAULTS
from ..base import Algorithm
from . import sim, worker


def warmup_default(cfg) -> float:
    """N / 4 with the linear lr scaling (lr x N), kept within 0.5 .. a quarter of the run"""
    # Goyal et al. (2017) pair the linear scaling rule with a gradual warm-up. With lr x 4 (0.2,
    # momentum 0.9) a 0.5-epoch warm-up collapsed one mnist1d run in six (seed 2, 20 epochs: chance
    # accuracy, in the cluster suite too); 1 epoch trained all six and reached 0.90 no later
    # (docs/benchmarks.md, "sync's warm-up"). With lr x 2 it stays 0.5, as measured before.
    n = (cfg.sim_workers or cfg.workers) if cfg.runtime == "sim" else cfg.workers
    n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else SHARED_DEFAULTS["workers"]
    factor = n if cfg.lr_scaling == "linear" else 1
    shortest = SHARED_DEFAULTS["warmup_epochs"]
    epochs = cfg.epochs if isinstance(cfg.epochs, (int, float)) and not isinstance(cfg.epochs, bool) else 0
    return max(shortest, min(0.25 * factor, epochs / 4))


SYNC = Algorithm(
    "sync", "synchronous data parallelism: N processes, gradients all-reduced every step (DDP semantics)",
    worker=worker.run, sim=sim.run, shared_model=False, distributed=True, options=("lr_scaling",),
    defaults={"warmup_epochs": warmup_default})
