"""hogwild's spec: N processes update one shared-memory model without locks."""

from __future__ import annotations

from ..base import Algorithm
from . import sim, worker

HOGWILD = Algorithm(
    "hogwild", "Hogwild!: N processes update one shared-memory model without locks",
    worker=worker.run, sim=sim.run, shared_model=True, distributed=False)
