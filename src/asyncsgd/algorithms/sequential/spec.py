"""sequential's spec: mini-batch SGD in one process, the reference every method is compared with."""

from __future__ import annotations

from ..base import Algorithm, one
from . import sim, worker

SEQUENTIAL = Algorithm(
    "sequential", "mini-batch SGD in one process: the reference every method is compared with",
    worker=worker.run, sim=sim.run, shared_model=True, distributed=False, processes=one,
    sim_layout=lambda cfg: (1, 1, 1))
