"""sequential's spec: mini-batch SGD in one process, the reference every method is compared with."""

from __future__ import annotations

from ..base import Algorithm, later, one

SEQUENTIAL = Algorithm(
    "sequential", "mini-batch SGD in one process: the reference every method is compared with",
    worker=later(__package__ + ".worker"), sim=later(__package__ + ".sim"),
    shared_model=True, distributed=False, processes=one,
    sim_layout=lambda cfg: (1, 1, 1))
